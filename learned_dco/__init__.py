"""learned_dco: learned optimizers in JAX.

Update rules are pure builders returning ``optax.GradientTransformation`` s
(:func:`dcog`, :func:`dcogd`, :func:`dcom`, :func:`metamd`, :func:`step_size_gd`,
:func:`lstm_optimizer`); learned optimizers pair a meta-parameter ``init(key, params)``
with an ``opt_fn(meta)`` builder (:class:`DCOG`, :class:`DCOGD`, :class:`DCOM`; the
small-MLP :class:`Blackbox`, :class:`Hyperparam` and :class:`STAR` of Harrison et al.
2022; :class:`MetaMD`, :class:`LearnedStepSize` and the LSTM :class:`LSTMOptimizer`).
Each DCO step is a convex QP solved in :mod:`learned_dco.qp`.
"""

from learned_dco import qp
from learned_dco.learned import LearnedOptimizer
from learned_dco.optimizers import (
    DCOG,
    DCOGD,
    DCOM,
    LEARNED_OPTIMIZERS,
    STAR,
    AdafacState,
    Blackbox,
    DCOMState,
    DCOState,
    Hyperparam,
    L2OState,
    LearnedStepSize,
    LSTMOptimizer,
    MetaMD,
    MirrorState,
    adafac_mlp,
    blackbox_weight_mask,
    dcog,
    dcogd,
    dcom,
    lstm_optimizer,
    metamd,
    star_meta_optimizer,
    step_size_gd,
)

__version__ = "0.1.0"

__all__ = [
    "DCOG",
    "DCOGD",
    "DCOM",
    "STAR",
    "AdafacState",
    "Blackbox",
    "DCOMState",
    "DCOState",
    "Hyperparam",
    "L2OState",
    "LEARNED_OPTIMIZERS",
    "LSTMOptimizer",
    "LearnedOptimizer",
    "LearnedStepSize",
    "MetaMD",
    "MirrorState",
    "__version__",
    "adafac_mlp",
    "blackbox_weight_mask",
    "dcog",
    "dcogd",
    "dcom",
    "lstm_optimizer",
    "metamd",
    "qp",
    "star_meta_optimizer",
    "step_size_gd",
]
