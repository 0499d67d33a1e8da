r"""Meta-losses as values: what an episode of inner optimisation is scored by.

The meta-loss of an episode of horizon :math:`T` is a sum of per-step terms
:math:`\sum_{t<T} m_t` so that truncated estimators can split it. Each meta-loss is a small
frozen dataclass, validated when it is built; every ``meta_loss=`` argument accepts one of
these values or its name (:func:`as_meta_loss`):

* :class:`FinalVal` (``"final_val"``): :math:`m_{T-1} = \ell^{val}(\theta_T)`, zero before
  (DCO eq. 9);
* :class:`FinalTrain` (``"final_train"``): the full training loss :math:`\ell(\theta_T)`;
* :class:`LogFinalTrain` (``"log_final_train"``): :math:`\tfrac1T \log \ell(\theta_T)`
  (step-size L2L's :math:`\tfrac1t \log f(w_t)`);
* :class:`MeanTrain` (``"mean_train"``): the mean training loss over the unroll (STAR).
  ``fresh_batch=True`` (the default) scores the *updated* parameters on a fresh minibatch,
  :math:`m_t = \ell(\theta_{t+1}; b'_t)/T`: one more loss evaluation per step, but every
  step's own update is credited inside the truncation that makes it.
  ``fresh_batch=False`` reuses the loss computed with the gradient,
  :math:`m_t = \ell(\theta_t; b_t)/T` (learned_optimization's convention): free, and still
  unbiased for :math:`\ell(\theta_t)` since :math:`\theta_t` does not depend on
  :math:`b_t`, but the objective is shifted by one step (it scores
  :math:`\theta_0..\theta_{T-1}`, not :math:`\theta_1..\theta_T`), so the last update of an
  episode is never scored and a truncation's first term carries no meta-gradient.
* :class:`MeanLogTrain` (``"mean_log_train"``): the mean *log* training loss over the
  unroll, :math:`m_t = \log \mathrm{clip}(\ell_t, \ell_{min}, \ell_{max})/T`, with a
  non-finite loss scored as :math:`\log \ell_{max}`. Scale-free (a task whose losses are
  100x larger does not weigh 100x more), so it is the meta-loss for task *mixtures*;
  the clip makes a diverging episode a finite, large penalty instead of a
  non-finite estimate that the trainer would drop (dropping would reward instability).
  Reuses the loss computed with the gradient unless ``fresh_batch=True``.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import jax.numpy as jnp

from learned_dco.types import Array, Params, Task
from learned_dco.validation import ValidationError


@dataclasses.dataclass(frozen=True)
class FinalVal:
    """Validation loss of the last iterate (DCO eq. 9)."""

    name = "final_val"
    terminal = True

    def terminal_term(self, family, params: Params, task: Task, horizon: int) -> Array:
        return family.val_loss(params, task)


@dataclasses.dataclass(frozen=True)
class FinalTrain:
    """Full training loss of the last iterate."""

    name = "final_train"
    terminal = True

    def terminal_term(self, family, params: Params, task: Task, horizon: int) -> Array:
        return family.loss(params, task, None)


@dataclasses.dataclass(frozen=True)
class LogFinalTrain:
    r""":math:`\tfrac1T\log\ell(\theta_T)` (step-size L2L)."""

    name = "log_final_train"
    terminal = True

    def terminal_term(self, family, params: Params, task: Task, horizon: int) -> Array:
        return jnp.log(family.loss(params, task, None)) / horizon


@dataclasses.dataclass(frozen=True)
class MeanTrain:
    """Mean training loss over the unroll (module docstring for ``fresh_batch``)."""

    fresh_batch: bool = True
    name = "mean_train"
    terminal = False

    def __post_init__(self):
        if not isinstance(self.fresh_batch, bool):
            raise ValidationError(f"MeanTrain.fresh_batch must be a bool, got {self.fresh_batch!r}", field="fresh_batch")

    def step_term(self, family, step, horizon: int) -> Array:
        """This step's term from an :class:`learned_dco.meta.inner.Step`."""
        if self.fresh_batch:
            task = step.state.task
            return family.loss(step.params, task, family.sample_batch(step.key, task)) / horizon
        return step.loss / horizon


@dataclasses.dataclass(frozen=True)
class MeanLogTrain:
    """Mean clipped log training loss over the unroll (module docstring)."""

    fresh_batch: bool = False
    floor: float = 1e-8
    ceiling: float = 1e4
    name = "mean_log_train"
    terminal = False

    def __post_init__(self):
        if not isinstance(self.fresh_batch, bool):
            raise ValidationError(f"MeanLogTrain.fresh_batch must be a bool, got {self.fresh_batch!r}", field="fresh_batch")
        if not (0 < self.floor < self.ceiling < float("inf")):
            raise ValueError(f"MeanLogTrain needs 0 < floor < ceiling < inf, got {self.floor!r}, {self.ceiling!r}")

    def step_term(self, family, step, horizon: int) -> Array:
        """This step's term from an :class:`learned_dco.meta.inner.Step`."""
        if self.fresh_batch:
            task = step.state.task
            loss = family.loss(step.params, task, family.sample_batch(step.key, task))
        else:
            loss = step.loss
        loss = jnp.where(jnp.isfinite(loss), jnp.clip(loss, self.floor, self.ceiling), self.ceiling)
        return jnp.log(loss) / horizon


MetaLoss = Union[FinalVal, FinalTrain, LogFinalTrain, MeanTrain, MeanLogTrain]
META_LOSSES: dict[str, type] = {c.name: c for c in (FinalVal, FinalTrain, MeanTrain, LogFinalTrain, MeanLogTrain)}


def as_meta_loss(value) -> MetaLoss:
    """A meta-loss value from itself or its name (``"final_val"``, ``"mean_train"``, ...)."""
    if isinstance(value, tuple(META_LOSSES.values())):
        return value
    if isinstance(value, str) and value in META_LOSSES:
        return META_LOSSES[value]()
    raise ValueError(
        f"unknown meta_loss {value!r}; expected one of {tuple(META_LOSSES)} or a value "
        f"(meta.FinalVal(), meta.FinalTrain(), meta.MeanTrain(fresh_batch=...), meta.LogFinalTrain(), meta.MeanLogTrain())"
    )
