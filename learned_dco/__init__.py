"""learned_dco: learned optimizers in JAX.

Update rules are pure builders returning ``optax.GradientTransformation`` s
(:func:`dcog`, :func:`dcogd`, :func:`dcom`); learned optimizers pair a meta-parameter
``init(key, params)`` with an ``opt_fn(meta)`` builder (:class:`DCOG`, :class:`DCOGD`,
:class:`DCOM`; the small-MLP :class:`Blackbox`, :class:`Hyperparam` and :class:`STAR`
of Harrison et al. 2022). Each DCO step is a convex QP solved in :mod:`learned_dco.qp`.
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
    Hyperparam,
    adafac_mlp,
    blackbox_weight_mask,
    star_meta_optimizer,
    LearnedStepSize,
    DCOMState,
    DCOState,
    dcog,
    dcogd,
    dcom,
    step_size_gd,
)

__version__ = "0.1.0"

__all__ = [
    "DCOG",
    "DCOGD",
    "DCOM",
    "DCOMState",
    "DCOState",
    "STAR",
    "AdafacState",
    "Blackbox",
    "Hyperparam",
    "LEARNED_OPTIMIZERS",
    "LearnedOptimizer",
    "LearnedStepSize",
    "__version__",
    "adafac_mlp",
    "blackbox_weight_mask",
    "dcog",
    "dcogd",
    "dcom",
    "qp",
    "star_meta_optimizer",
    "step_size_gd",
]
