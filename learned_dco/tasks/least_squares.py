"""Linear least-squares families from the DCO paper (Gautam, Pfrommer, Sojoudi).

Two families:

* ``LeastSquares`` (Sec. VI-B, eq. (22)): a fresh random problem per task,
  ``min_theta ||X theta - y||_2^2`` with ``X in R^{n x p}``, ``y in R^n`` and i.i.d.
  ``N(0, 1)`` entries (paper: ``n = p = 100``). Training and validation losses coincide.
* ``ShiftedLeastSquares`` (Sec. V, eq. (17), Theorem 1): one fixed design ``(X, y)``
  shared by all tasks; task ``i`` shifts the targets inside the range of ``X``,
  ``min_theta ||X theta - (y + X Delta_i)||_2^2`` with ``Delta_i ~ N(0, s^2 I)``, so every
  task is a translate of the same landscape. With ``theta' = (X^T X)^{-1} X^T y`` the
  minimiser is ``theta_i* = theta' + Delta_i``, the Hessian is ``2 X^T X`` for every task,
  and the one-step-optimal DCOGD matrix is ``B* = 1/2 (X^T X)^{-1}``: from any start,
  ``theta - B* grad l_i(theta) = theta_i*``.

Both losses are the paper's plain sum of squares (not a mean).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.tasks.base import TaskFamilyBase
from learned_dco.validation import check_choice, check_fields, ValidationError
from learned_dco.types import Array, Batch, Params, PRNGKey


class LeastSquaresTask(NamedTuple):
    """One least-squares problem ``||X theta - y||^2``."""

    X: Array  # (num_samples, dim) design matrix, N(0, 1) entries
    y: Array  # (num_samples,) targets, N(0, 1) entries


@dataclasses.dataclass(frozen=True)
class LeastSquares(TaskFamilyBase):
    """Random linear least squares, DCO Sec. VI-B.

    Math:
      ``l(theta) = ||X theta - y||_2^2`` (``reduction="sum"``, the paper's eq. (22)) or
      ``||X theta - y||_2^2 / n`` (``reduction="mean"``), with ``X_ij, y_i ~ N(0, 1)``.
      Training loss = validation loss (the paper uses one objective for both). The
      minimiser is ``jnp.linalg.lstsq(X, y)``.

    Attributes:
      num_samples: rows ``n`` of ``X`` (paper: 100).
      dim: parameter dimension ``p`` (paper: 100).
      reduction: ``"sum"`` (paper) or ``"mean"`` over the ``n`` residuals.
      init_scale: standard deviation of the initial ``theta ~ N(0, init_scale^2 I)``;
        the default 0 starts every task at ``theta = 0`` (the paper does not say; zeros
        make the initial loss ``||y||^2`` and keep the start out of the task randomness).

    Params: a ``(dim,)`` array.
    """

    num_samples: int = 100
    dim: int = 100
    reduction: str = "sum"
    init_scale: float = 0.0

    source = "DCO (Gautam, Pfrommer, Sojoudi) Sec. VI-B, eq. (22)"
    has_optimum = True

    def __post_init__(self):
        check_fields(
            self,
            integer=("num_samples", "dim"),
            positive=("num_samples", "dim"),
            nonnegative=("init_scale",),
        )
        check_choice(self, "reduction", ("sum", "mean"))

    def sample(self, key: PRNGKey) -> LeastSquaresTask:
        kx, ky = jax.random.split(key)
        X = jax.random.normal(kx, (self.num_samples, self.dim))
        y = jax.random.normal(ky, (self.num_samples,))
        return LeastSquaresTask(X, y)

    def init_params(self, key: PRNGKey, task: LeastSquaresTask) -> Array:
        return self.init_scale * jax.random.normal(key, (self.dim,), task.X.dtype)

    def loss(self, params: Params, task: LeastSquaresTask, batch: Batch | None = None) -> Array:
        del batch  # deterministic
        residual = task.X @ params - task.y
        total = jnp.sum(jnp.square(residual))
        return total / self.num_samples if self.reduction == "mean" else total

    def optimum(self, task: LeastSquaresTask) -> Array:
        """Minimum-norm least-squares solution (``jnp.linalg.lstsq``)."""
        return jnp.linalg.lstsq(task.X, task.y)[0]


class ShiftedLeastSquaresTask(NamedTuple):
    """One shifted problem of DCO eq. (17); ``X`` and ``y`` live on the family."""

    delta: Array  # (dim,) target shift Delta_i ~ N(0, shift_scale^2 I)
    theta0: Array  # (dim,) the task's initial parameters theta_i^(1) ~ N(0, init_scale^2 I)


@dataclasses.dataclass(frozen=True)
class ShiftedLeastSquares(TaskFamilyBase):
    """Shifted least squares with a shared design, DCO Sec. V (eq. (17), Theorem 1).

    Math:
      ``l_i(theta) = ||X theta - (y + X Delta_i)||_2^2`` with a fixed ``X in R^{n x p}``
      and ``y in R^n`` (``N(0, 1)`` entries drawn once from ``data_seed``),
      ``Delta_i ~ N(0, shift_scale^2 I_p)``. Then

      * ``grad l_i(theta) = 2 X^T X (theta - Delta_i) - 2 X^T y``,
      * ``theta_i* = theta' + Delta_i`` with ``theta' = (X^T X)^{-1} X^T y``,
      * ``l_i(theta_i*) = ||X theta' - y||^2 = l*`` for every task,
      * ``B* = 1/2 (X^T X)^{-1}`` maps any ``theta`` to ``theta_i*`` in one step
        ``theta - B* grad l_i(theta)``.

      Theorem 1 fixes an initial point ``theta_i^(1)`` per task; here it is part of the
      task (``task.theta0``, ``N(0, init_scale^2 I)``) and ``init_params`` returns it
      (its key is ignored), so the ``Z_i = theta_i^(1) - Delta_i - theta'`` of the theorem
      span ``R^p`` almost surely once there are ``p`` tasks.

    Attributes:
      num_samples: rows ``n`` of ``X``; must be ``>= dim`` so that ``X^T X`` is invertible.
        Default 40 (twice ``dim``): a square Gaussian ``X`` is invertible but often badly
        conditioned; ``n = 2p`` gives ``cond(X^T X)`` around 30.
      dim: parameter dimension ``p`` (default 20).
      data_seed: NumPy seed of the shared ``(X, y)``.
      shift_scale: standard deviation of the shift ``Delta_i``.
      init_scale: standard deviation of the initial point ``theta_i^(1)``.

    Params: a ``(dim,)`` array.
    """

    num_samples: int = 40
    dim: int = 20
    data_seed: int = 0
    shift_scale: float = 1.0
    init_scale: float = 1.0

    source = "DCO (Gautam, Pfrommer, Sojoudi) Sec. V, eq. (17) and Theorem 1"
    has_optimum = True

    def __post_init__(self):
        check_fields(
            self,
            integer=("num_samples", "dim", "data_seed"),
            positive=("num_samples", "dim"),
            nonnegative=("data_seed", "shift_scale", "init_scale"),
        )
        if self.num_samples < self.dim:
            raise ValidationError(
                f"ShiftedLeastSquares.num_samples must be >= dim (= {self.dim}) so that X^T X "
                f"is invertible, got {self.num_samples}",
                field="num_samples",
            )
        X, _ = self._design
        if np.linalg.cond(X) > 1e6:  # practically never for Gaussian X with n >= p
            raise ValidationError(
                f"ShiftedLeastSquares.data_seed={self.data_seed} gives an ill-conditioned X; "
                "pick another seed",
                field="data_seed",
            )

    # --- the shared design (NumPy float64, computed once per family) ------------------
    @functools.cached_property
    def _design(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.data_seed)
        X = rng.standard_normal((self.num_samples, self.dim))
        y = rng.standard_normal(self.num_samples)
        return X, y

    def design(self) -> tuple[Array, Array]:
        """The shared ``(X, y)`` (float32 unless x64 is enabled)."""
        X, y = self._design
        return jnp.asarray(X), jnp.asarray(y)

    def base_solution(self) -> Array:
        """``theta' = (X^T X)^{-1} X^T y``, the minimiser when ``Delta = 0``."""
        X, y = self._design
        return jnp.asarray(np.linalg.solve(X.T @ X, X.T @ y))

    def hessian(self) -> Array:
        """``2 X^T X``, the (task-independent) Hessian of every ``l_i``."""
        X, _ = self._design
        return jnp.asarray(2.0 * X.T @ X)

    def one_step_optimal_B(self) -> Array:
        """``B* = 1/2 (X^T X)^{-1}`` (the inverse Hessian): one DCOGD step solves any task."""
        X, _ = self._design
        return jnp.asarray(0.5 * np.linalg.inv(X.T @ X))

    def optimal_loss(self) -> Array:
        """``l* = ||X theta' - y||^2``, the minimum value shared by all tasks."""
        X, y = self._design
        theta = np.linalg.solve(X.T @ X, X.T @ y)
        return jnp.asarray(np.sum(np.square(X @ theta - y)))

    def targets(self, task: ShiftedLeastSquaresTask) -> Array:
        """The task's regression targets ``y + X Delta_i``."""
        X, y = self.design()
        return y + X @ task.delta

    # --- protocol ------------------------------------------------------------------------
    def sample(self, key: PRNGKey) -> ShiftedLeastSquaresTask:
        kd, kt = jax.random.split(key)
        delta = self.shift_scale * jax.random.normal(kd, (self.dim,))
        theta0 = self.init_scale * jax.random.normal(kt, (self.dim,))
        return ShiftedLeastSquaresTask(delta, theta0)

    def init_params(self, key: PRNGKey, task: ShiftedLeastSquaresTask) -> Array:
        """The task's fixed initial point ``theta_i^(1)`` (``key`` is unused)."""
        del key
        return task.theta0

    def loss(self, params: Params, task: ShiftedLeastSquaresTask, batch: Batch | None = None) -> Array:
        del batch  # deterministic
        X, _ = self.design()
        residual = X @ params - self.targets(task)
        return jnp.sum(jnp.square(residual))

    def optimum(self, task: ShiftedLeastSquaresTask) -> Array:
        """``theta_i* = theta' + Delta_i``."""
        return self.base_solution() + task.delta
