"""LASSO task family of M-L2O (Yang et al., ICLR 2023) and a FISTA reference solver.

The M-L2O paper evaluates on LASSO (``lambda = 0.005``) with a training distribution and
shifted test distributions, but the text we have gives no sizes; the settings below are the
standard ones of the L2O literature, documented and exposed as fields. ``shift`` (default
0 = the training distribution) is the log of a scale factor on the design matrix,
``A -> exp(shift) A``; this changes the curvature (Lipschitz constant) by ``exp(2 shift)``,
which is what an optimizer meta-trained at one gradient scale is sensitive to. (The public
M-L2O code builds its shifted optimizees the same way, by changing the standard deviation
of the matrix entries, e.g. 1, 0.5, 0.1.)
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

def soft_threshold(z: Array, threshold: Array) -> Array:
    """``prox_{t ||.||_1}(z) = sign(z) max(|z| - t, 0)``."""
    return jnp.sign(z) * jnp.maximum(jnp.abs(z) - threshold, 0.0)


def l1_norm(x: Array) -> Array:
    """``||x||_1`` written as ``sum(x * sign(x))`` so that autodiff returns ``sign(x)``.

    ``jax.grad(jnp.abs)(0.0)`` is 1; here the derivative at 0 is 0, the minimum-norm
    element of the subdifferential ``[-1, 1]``, so a zero coordinate is not pushed off zero
    by the penalty alone. The value is the same.
    """
    return jnp.sum(x * jnp.sign(x))


def lasso_objective(x: Array, A: Array, b: Array, lam: float) -> Array:
    """``1/2 ||A x - b||_2^2 + lam ||x||_1``."""
    return 0.5 * jnp.sum(jnp.square(A @ x - b)) + lam * l1_norm(x)


def lasso_solve(A: Array, b: Array, lam: float, max_iters: int = 20_000, tol: float = 1e-12) -> Array:
    """Numerical LASSO minimiser by FISTA with adaptive (gradient) restart.

    Step ``1/L`` with ``L = ||A||_2^2``; restarts the momentum whenever
    ``(y_k - x_{k+1}) . (x_{k+1} - x_k) > 0`` (O'Donoghue & Candes, 2015), which restores
    linear convergence once the support is identified. Stops when
    ``max |x_{k+1} - x_k| <= tol * max(1, max |x_{k+1}|)`` or after ``max_iters``
    iterations. Pure and jit/vmap-compatible (a ``lax.while_loop``); run it under x64 for
    a tight solution.
    """
    step = 1.0 / jnp.square(jnp.linalg.norm(A, 2))
    x0 = jnp.zeros(A.shape[1], jnp.result_type(A, b))

    def cond(state):
        _, _, _, k, delta = state
        return (k < max_iters) & (delta > 0)

    def body(state):
        x, y, t, k, _ = state
        x_new = soft_threshold(y - step * (A.T @ (A @ y - b)), lam * step)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        restart = jnp.vdot(y - x_new, x_new - x) > 0
        y_new = jnp.where(restart, x_new, x_new + ((t - 1.0) / t_new) * (x_new - x))
        t_new = jnp.where(restart, 1.0, t_new)
        change = jnp.max(jnp.abs(x_new - x))
        scale = jnp.maximum(1.0, jnp.max(jnp.abs(x_new)))
        delta = jnp.where(change <= tol * scale, 0.0, change)
        return x_new, y_new, t_new, k + 1, delta

    one = jnp.ones((), x0.dtype)
    init = (x0, x0, one, jnp.zeros((), jnp.int32), one)
    return jax.lax.while_loop(cond, body, init)[0]


class LassoTask(NamedTuple):
    """One LASSO problem ``1/2 ||A x - b||^2 + lam ||x||_1``."""

    A: Array  # (num_samples, dim) measurement matrix
    b: Array  # (num_samples,) measurements A x_true + noise
    x_true: Array  # (dim,) the sparse ground truth that generated b


@dataclasses.dataclass(frozen=True)
class Lasso(TaskFamilyBase):
    """Sparse regression ``min_x 1/2 ||A x - b||_2^2 + lam ||x||_1`` (M-L2O's LASSO).

    Math:
      ``A_ij ~ N(0, exp(2 shift) / m)`` (columns of unit expected norm at ``shift = 0``,
      the compressed-sensing/LISTA convention), a sparse ground truth
      ``x_true_j = m_j z_j`` with ``m_j ~ Bernoulli(sparsity)``, ``z_j ~ N(0, 1)``, and
      ``b = A x_true + noise_std * eps``. ``lam = 0.005`` as in M-L2O. The loss is the full
      non-smooth objective; its autodiff gradient uses ``sign(x)`` for the l1 term (0 at
      ``x_i = 0``, see ``l1_norm``), a valid subgradient. There is
      no closed-form minimiser: ``optimum`` runs ``lasso_solve`` (FISTA with restart) for up
      to ``solver_iters`` iterations, so it is numerical (tight under x64).

    Attributes:
      num_samples: measurements ``m`` (default 20).
      dim: unknowns ``d`` (default 40; ``m < d``, the under-determined regime where the
        l1 term matters).
      lam: l1 weight (M-L2O: 0.005).
      sparsity: probability that a ground-truth coordinate is non-zero (default 0.1).
      noise_std: measurement noise (default 0.01).
      init_scale: ``x_0 ~ N(0, init_scale^2 I)`` (default 0.01, the L2O convention).
      shift: ``A -> exp(shift) A`` (see the module docstring).
      solver_iters: iteration cap of the numerical ``optimum``.

    Params: a ``(dim,)`` array.
    """

    num_samples: int = 20
    dim: int = 40
    lam: float = 0.005
    sparsity: float = 0.1
    noise_std: float = 0.01
    init_scale: float = 0.01
    shift: float = 0.0
    solver_iters: int = 20_000

    source = "M-L2O (Yang et al., ICLR 2023) LASSO benchmark; sizes follow the L2O literature"
    has_optimum = True

    def __post_init__(self):
        check_fields(
            self,
            integer=("num_samples", "dim", "solver_iters"),
            positive=("num_samples", "dim", "solver_iters"),
            nonnegative=("lam", "noise_std", "init_scale"),
        )
        if not 0.0 <= self.sparsity <= 1.0:
            raise ValidationError(f"Lasso.sparsity must lie in [0, 1], got {self.sparsity!r}", field="sparsity")
        if not math.isfinite(self.shift):
            raise ValidationError(f"Lasso.shift must be finite, got {self.shift!r}", field="shift")

    def sample(self, key: PRNGKey) -> LassoTask:
        ka, km, kz, kn = jax.random.split(key, 4)
        scale = math.exp(self.shift) / math.sqrt(self.num_samples)
        A = scale * jax.random.normal(ka, (self.num_samples, self.dim))
        support = jax.random.bernoulli(km, self.sparsity, (self.dim,))
        x_true = jnp.where(support, jax.random.normal(kz, (self.dim,)), 0.0)
        b = A @ x_true + self.noise_std * jax.random.normal(kn, (self.num_samples,))
        return LassoTask(A, b, x_true)

    def init_params(self, key: PRNGKey, task: LassoTask) -> Array:
        return self.init_scale * jax.random.normal(key, (self.dim,), task.A.dtype)

    def loss(self, params: Params, task: LassoTask, batch: Batch | None = None) -> Array:
        del batch  # deterministic
        return lasso_objective(params, task.A, task.b, self.lam)

    def smooth_loss(self, params: Params, task: LassoTask) -> Array:
        """The differentiable part ``1/2 ||A x - b||^2`` (for proximal methods)."""
        return 0.5 * jnp.sum(jnp.square(task.A @ params - task.b))

    def optimum(self, task: LassoTask) -> Array:
        """Numerical minimiser from ``lasso_solve`` (up to ``solver_iters`` FISTA steps)."""
        return lasso_solve(task.A, task.b, self.lam, self.solver_iters)


__all__ = ["Lasso", "LassoTask", "l1_norm", "lasso_objective", "lasso_solve", "soft_threshold"]
