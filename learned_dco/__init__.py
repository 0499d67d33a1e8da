"""learned_dco: learned optimizers in JAX.

Update rules are pure builders returning ``optax.GradientTransformation`` s
(:func:`dcog_transform`, :func:`dcogd_transform`, :func:`dcom_transform`,
:func:`metamd_transform`, :func:`step_size_gd`, :func:`lstm_optimizer`); a builder's name says
it returns a transform, apart from the learned class of the same letters (``dcog_transform``
vs :class:`DCOG`). Learned optimizers pair a meta-parameter ``init(key, params)``
with an ``opt_fn(meta)`` builder (:class:`DCOG`, :class:`DCOGD`, :class:`DCOM`; the
small-MLP :class:`Blackbox`, :class:`Hyperparam` and :class:`STAR` of Harrison et al.
2022; :class:`MetaMD`, :class:`LearnedStepSize` and the LSTM :class:`LSTMOptimizer`).
Each DCO step is a convex QP solved by :func:`solve_qp` (module :mod:`learned_dco.qp`).

Subpackages: :mod:`~learned_dco.tasks` (task families), :mod:`~learned_dco.meta`
(meta-training and evaluation), :mod:`~learned_dco.pretrained` (shipped learned
optimizers), :mod:`~learned_dco.analysis`. They load on first access
(``ldco.meta``), so ``import learned_dco`` stays light and no import cycle can form.

``__all__`` below is the one public API list; everything else (optimizer states, STAR's
network pieces, validation helpers) lives in its submodule.
"""

from __future__ import annotations

import importlib
from typing import Any

from learned_dco import deprecation as _deprecation
from learned_dco import qp
from learned_dco.learned import LearnedOptimizer
from learned_dco.optimizers import (
    DCOG,
    DCOGD,
    DCOM,
    LEARNED_OPTIMIZERS,
    STAR,
    Blackbox,
    Hyperparam,
    LearnedProdigy,
    LearnedStepSize,
    LSTMOptimizer,
    MetaMD,
    ScheduledAdam,
    dcog_transform,
    dcogd_transform,
    dcom_transform,
    lstm_optimizer,
    metamd_transform,
    star_meta_optimizer,
    step_size_gd,
)
from learned_dco.qp import solve_qp
from learned_dco.types import QPOperator
from learned_dco.validation import ValidationError

__version__ = "0.1.0"

_SUBPACKAGES = ("analysis", "meta", "pretrained", "tasks")

_RENAMED = {old: (f"learned_dco.{old}_transform", lambda old=old: globals()[f"{old}_transform"])
            for old in ("dcog", "dcogd", "dcom", "metamd")}
"""The builders' names of the previous release (deprecated; removed in the next)."""

__all__ = [
    # pure builders -> optax.GradientTransformation
    "dcog_transform",
    "dcogd_transform",
    "dcom_transform",
    "lstm_optimizer",
    "metamd_transform",
    "step_size_gd",
    # learned optimizers (init / opt_fn) and their registry
    "DCOG",
    "DCOGD",
    "DCOM",
    "STAR",
    "ScheduledAdam",
    "LearnedProdigy",
    "Blackbox",
    "Hyperparam",
    "LSTMOptimizer",
    "LearnedStepSize",
    "MetaMD",
    "LEARNED_OPTIMIZERS",
    "star_meta_optimizer",
    # the QP layer
    "qp",
    "solve_qp",
    # protocols and errors
    "LearnedOptimizer",
    "QPOperator",
    "ValidationError",
    # subpackages (loaded on first access)
    "analysis",
    "meta",
    "pretrained",
    "tasks",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"learned_dco.{name}")
        globals()[name] = module
        return module
    return _deprecation.resolve("learned_dco", name, _RENAMED)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
