"""Update rules (pure builders) and learned optimizers (init / opt_fn pairs)."""

from learned_dco.optimizers.dco import DCOG, DCOGD, DCOM, DCOMState, DCOState, dcog, dcogd, dcom
from learned_dco.optimizers.l2o import L2OState, LSTMOptimizer, lstm_optimizer
from learned_dco.optimizers.mirror import MetaMD, MirrorState, metamd
from learned_dco.optimizers.stepsize import LearnedStepSize, step_size_gd

# Name -> learned-optimizer class; configs and the CLI look optimizers up here, and the
# contract test (tests/test_contract.py) runs every entry.
LEARNED_OPTIMIZERS = {
    "dcog": DCOG,
    "dcogd": DCOGD,
    "dcom": DCOM,
    "step_size": LearnedStepSize,
    "metamd": MetaMD,
    "l2o": LSTMOptimizer,
}

__all__ = ["DCOG", "DCOGD", "DCOM", "DCOMState", "DCOState", "L2OState", "LEARNED_OPTIMIZERS", "LSTMOptimizer", "LearnedStepSize", "MetaMD", "MirrorState", "dcog", "dcogd", "dcom", "lstm_optimizer", "metamd", "step_size_gd"]
