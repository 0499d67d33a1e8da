"""learned_dco: learned optimizers in JAX.

Update rules are pure builders returning ``optax.GradientTransformation`` s
(:func:`dcog`, :func:`dcogd`, :func:`dcom`); learned optimizers pair a meta-parameter
``init(key, params)`` with an ``opt_fn(meta)`` builder (:class:`DCOG`, :class:`DCOGD`,
:class:`DCOM`). Each DCO step is a convex QP solved in :mod:`learned_dco.qp`.
"""

from learned_dco import qp
from learned_dco.learned import LearnedOptimizer
from learned_dco.optimizers import (
    DCOG,
    DCOGD,
    DCOM,
    LEARNED_OPTIMIZERS,
    L2OState,
    LSTMOptimizer,
    LearnedStepSize,
    DCOMState,
    DCOState,
    MetaMD,
    MirrorState,
    dcog,
    dcogd,
    dcom,
    lstm_optimizer,
    metamd,
    step_size_gd,
)

__version__ = "0.1.0"

__all__ = [
    "DCOG",
    "DCOGD",
    "DCOM",
    "DCOMState",
    "DCOState",
    "L2OState",
    "LEARNED_OPTIMIZERS",
    "LSTMOptimizer",
    "LearnedOptimizer",
    "LearnedStepSize",
    "MetaMD",
    "MirrorState",
    "__version__",
    "dcog",
    "dcogd",
    "dcom",
    "lstm_optimizer",
    "metamd",
    "qp",
    "step_size_gd",
]
