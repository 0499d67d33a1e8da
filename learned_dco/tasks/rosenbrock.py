"""Rosenbrock task family of M-L2O (Yang et al., ICLR 2023).

``shift`` (default 0 = the training distribution) offsets the mean of the initial-point
distribution, ``x_0 ~ N(shift * 1, init_std^2 I)``; the objective, hence its minimiser at
``1``, does not move.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from learned_dco.tasks.base import TaskFamilyBase
from learned_dco.types import Array, Batch, Params, PRNGKey
from learned_dco.validation import ValidationError, check_fields


def rosenbrock(x: Array, curvature: float = 100.0) -> Array:
    """``sum_{i<d} (1 - x_i)^2 + curvature (x_{i+1} - x_i^2)^2``; minimum 0 at ``x = 1``."""
    return jnp.sum(jnp.square(1.0 - x[:-1]) + curvature * jnp.square(x[1:] - jnp.square(x[:-1])))


class RosenbrockTask(NamedTuple):
    """One Rosenbrock start; the objective itself is shared."""

    x0: Array  # (dim,) initial point


@dataclasses.dataclass(frozen=True)
class Rosenbrock(TaskFamilyBase):
    """The (chained) Rosenbrock function from random starts (M-L2O's Rosenbrock).

    Math:
      ``f(x) = sum_{i=1}^{d-1} (1 - x_i)^2 + curvature (x_{i+1} - x_i^2)^2``, global minimum
      ``f(1) = 0``. A task is a starting point ``x_0 ~ N(shift * 1, init_std^2 I)``
      (the public M-L2O code uses ``d = 2`` and ``x_0 ~ N(0, I)``); ``init_params`` returns
      it (its key is unused).

    Attributes:
      dim: dimension ``d >= 2`` (default 2).
      curvature: weight of the valley term (default 100).
      init_std: standard deviation of the start (default 1).
      shift: mean of the start (see the module docstring).

    Params: a ``(dim,)`` array.
    """

    dim: int = 2
    curvature: float = 100.0
    init_std: float = 1.0
    shift: float = 0.0

    source = "M-L2O (Yang et al., ICLR 2023) Rosenbrock benchmark"
    has_optimum = True

    def __post_init__(self):
        check_fields(self, integer=("dim",), positive=("curvature",), nonnegative=("init_std",))
        if self.dim < 2:
            raise ValidationError(f"Rosenbrock.dim must be >= 2, got {self.dim}", field="dim")
        if not math.isfinite(self.shift):
            raise ValidationError(f"Rosenbrock.shift must be finite, got {self.shift!r}", field="shift")

    def sample(self, key: PRNGKey) -> RosenbrockTask:
        return RosenbrockTask(self.shift + self.init_std * jax.random.normal(key, (self.dim,)))

    def init_params(self, key: PRNGKey, task: RosenbrockTask) -> Array:
        """The task's start ``x_0`` (``key`` is unused)."""
        del key
        return task.x0

    def loss(self, params: Params, task: RosenbrockTask, batch: Batch | None = None) -> Array:
        del task, batch  # the objective does not depend on the task
        return rosenbrock(params, self.curvature)

    def optimum(self, task: RosenbrockTask) -> Array:
        """``x = 1``."""
        return jnp.ones_like(task.x0)


__all__ = ["Rosenbrock", "RosenbrockTask", "rosenbrock"]
