"""Meta-training: the inner unroll, gradient estimators and the trainer."""

from learned_dco.meta.bound import RegretBound
from learned_dco.meta.checkpoint import load_meta, save_meta
from learned_dco.meta.evaluate import BASELINES, Curves, Tuned, evaluate, rollout, tune_learning_rate
from learned_dco.meta.estimators import ES, ESTIMATORS, PES, ESState, FullUnroll, TaskEstimate, TruncatedBPTT
from learned_dco.meta.ml2o import MetaAdaptation, adapt, adapted_loss, loss_curve, unroll_loss
from learned_dco.meta.trainer import MetaTrainer, Metrics, TrainState, rmsprop_pytorch
from learned_dco.meta.unroll import META_LOSSES, InnerState, fresh_state, inner_step, sample_task, unroll

__all__ = [
    "BASELINES",
    "Curves",
    "Tuned",
    "evaluate",
    "rollout",
    "tune_learning_rate",
    "ES",
    "ESTIMATORS",
    "META_LOSSES",
    "PES",
    "RegretBound",
    "ESState",
    "FullUnroll",
    "InnerState",
    "MetaAdaptation",
    "MetaTrainer",
    "Metrics",
    "TaskEstimate",
    "TrainState",
    "TruncatedBPTT",
    "adapt",
    "adapted_loss",
    "fresh_state",
    "inner_step",
    "load_meta",
    "loss_curve",
    "rmsprop_pytorch",
    "sample_task",
    "save_meta",
    "unroll",
    "unroll_loss",
]
