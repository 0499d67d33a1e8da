"""Deprecated location: the LSTM optimizer lives in ``learned_dco.optimizers.lstm``.

Re-exports it until the remaining callers (tests/test_l2o.py) import from ``lstm`` or from
the package level.
"""

from learned_dco.optimizers.lstm import PREPROCESS, L2OState, LSTMOptimizer, lstm_cell, lstm_optimizer, preprocess

__all__ = ["PREPROCESS", "L2OState", "LSTMOptimizer", "lstm_cell", "lstm_optimizer", "preprocess"]
