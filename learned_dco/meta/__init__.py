"""Meta-training: the inner loop, meta-losses, gradient estimators, the trainer and evaluation.

Layout: ``inner`` (THE inner loop, :func:`inner_loop`), ``starts`` (where tasks start),
``losses`` (meta-losses as values), ``unroll`` (truncations with episode resets),
``estimators`` (one class per estimator, over a :class:`Problem`; ``est.bind(lopt, family, pool)``), ``schedule`` (what each meta-step trains on: one problem, or a mixture's drawn member), ``bound`` (MetaMD's regret
bound), ``adaptation`` (M-L2O), ``trainer`` and ``evaluation``.
"""

from learned_dco.meta.adaptation import MetaAdaptation, adapt, adapted_loss, loss_curve, unroll_loss
from learned_dco.meta.bound import RegretBound
from learned_dco.meta.checkpoint import load_meta, save_meta
from learned_dco.meta.estimators import (
    ES,
    ESTIMATORS,
    PES,
    BoundEstimator,
    Episodic,
    ESState,
    Estimator,
    FullUnroll,
    Problem,
    TaskEstimate,
    TruncatedBPTT,
    make_estimator,
)
from learned_dco.meta.evaluation import BASELINES, DEFAULT_GRID, Curves, Tuned, evaluate, rollout, tune_learning_rate
from learned_dco.meta.inner import InnerState, Step, inner_loop, inner_step
from learned_dco.meta.losses import META_LOSSES, FinalTrain, FinalVal, LogFinalTrain, MeanLogTrain, MeanTrain, as_meta_loss
from learned_dco.meta.schedule import Schedule, Stage
from learned_dco.meta.starts import episode_starts, fresh_state, initial_states, sample_task
from learned_dco.meta.trainer import MetaTrainer, Metrics, TrainState, finite_average, rmsprop_pytorch
from learned_dco.meta.unroll import TruncationOutput, Unroll

__all__ = [
    "BASELINES",
    "DEFAULT_GRID",
    "BoundEstimator",
    "Curves",
    "ES",
    "ESState",
    "ESTIMATORS",
    "Episodic",
    "Estimator",
    "FinalTrain",
    "FinalVal",
    "FullUnroll",
    "InnerState",
    "LogFinalTrain",
    "META_LOSSES",
    "MeanLogTrain",
    "MeanTrain",
    "MetaAdaptation",
    "MetaTrainer",
    "Metrics",
    "PES",
    "Problem",
    "RegretBound",
    "Schedule",
    "Stage",
    "Step",
    "TaskEstimate",
    "TrainState",
    "TruncatedBPTT",
    "TruncationOutput",
    "Tuned",
    "Unroll",
    "adapt",
    "adapted_loss",
    "as_meta_loss",
    "episode_starts",
    "evaluate",
    "finite_average",
    "fresh_state",
    "initial_states",
    "inner_loop",
    "inner_step",
    "load_meta",
    "loss_curve",
    "make_estimator",
    "rmsprop_pytorch",
    "rollout",
    "sample_task",
    "save_meta",
    "tune_learning_rate",
    "unroll_loss",
]


def __getattr__(name: str):
    if name == "Bound":  # deprecated alias, kept for one release
        import warnings

        warnings.warn("learned_dco.meta.Bound is deprecated; use learned_dco.meta.BoundEstimator "
                      "(meta.RegretBound is MetaMD's regret bound)", DeprecationWarning, stacklevel=2)
        return BoundEstimator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
