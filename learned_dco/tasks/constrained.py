r"""Constrained inner problems (DCO paper eq. 5): families with a feasible set.

Three families, each a convex quadratic :math:`l(\theta)` over a polyhedral feasible set
:math:`\mathcal{C}` that is the same for every task of the family (so a learned optimizer can
close over it; ``meta.rollout`` passes no task to the optimizer):

* :class:`NonnegLeastSquares`: :math:`\min_{\theta \ge 0} \tfrac1n\|X\theta - y\|^2`
  (nonnegative regression); ``y = X w + noise`` with a sparse nonnegative ``w``, so part of
  the constraints are active at the optimum.
* :class:`SimplexLeastSquares`: :math:`\min_{\theta \in \Delta_p} \tfrac1n\|X\theta - y\|^2`,
  :math:`\Delta_p = \{\theta \ge 0, \mathbf 1^\top\theta = 1\}` (mixture / portfolio
  weights); ``y = X w + noise`` with a sparse ``w`` on the simplex.
* :class:`BoxLQR`: finite-horizon linear-quadratic control with input limits. States
  follow a random stable system :math:`x_{t+1} = A x_t + B u_t` (spectral radius
  ``rho``) from a random :math:`x_0`; the decision variable is the input sequence
  :math:`u \in \mathbb{R}^{T \times m}`, :math:`|u_{t,j}| \le u_{\max}`, and the cost is
  :math:`\tfrac1T \sum_{t=1}^{T} \|x_t\|^2 + r \|u_{t-1}\|^2` (an MPC-style problem).

Every family has

* ``constraints(task) -> qp.Constraints`` — the feasible set in the form a step's QP
  needs (``lo``/``hi`` boxes, equality rows ``A theta = b``), in parameter space;
* ``project(params, task)`` — the Euclidean projection onto the set (clipping, or the
  sort-based simplex projection of Held, Wolfe & Crowder 1974 / Duchi et al. 2008), for the
  projected baselines;
* ``violation(params, task)`` — :math:`\max(\max_i(lo_i - \theta_i)_+, |A\theta - b|_\infty)`;
* ``optimum(task)`` — computed by accelerated projected gradient (FISTA, Beck & Teboulle
  2009) with step :math:`1/L`, :math:`L = \lambda_{\max}(\nabla^2 l)` from the (constant)
  Hessian; ``optimum_iters`` iterations (the tests check it against ``scipy.optimize.nnls``
  and the KKT conditions).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from learned_dco import qp
from learned_dco.tasks.base import TaskFamilyBase
from learned_dco.types import Array, Batch, Params, PRNGKey
from learned_dco.validation import check_fields
from learned_dco.validation import ValidationError


# ------------------------------------------------------------------------------------------
# Projections and the reference solver
# ------------------------------------------------------------------------------------------


def project_simplex(v: Array) -> Array:
    r"""Euclidean projection onto :math:`\{x \ge 0, \sum x = 1\}` (sort-based, O(p log p)):
    :math:`x = (v - \tau)_+` with :math:`\tau = (\sum_{i \le k} u_i - 1)/k`, ``u`` sorted
    descending and ``k`` the largest index with :math:`u_k > (\sum_{i\le k} u_i - 1)/k`."""
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    k = jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    cond = u - css / k > 0
    rho = jnp.max(jnp.where(cond, jnp.arange(v.shape[-1]), 0))
    tau = css[rho] / (rho + 1).astype(v.dtype)
    return jnp.maximum(v - tau, 0.0)


def fista(loss, project, x0: Array, num_iters: int) -> Array:
    r"""Accelerated projected gradient (FISTA) for a convex quadratic ``loss`` with step
    :math:`1/L`, :math:`L = \lambda_{\max}(\nabla^2 l)` (the Hessian is constant, taken at
    ``x0``); the suboptimality after ``k`` steps is :math:`O(L\|x_0 - x^*\|^2/k^2)` and
    linear for a strongly convex ``loss``. Works on a flat ``x0``."""
    H = jax.hessian(loss)(x0)
    H = H.reshape(x0.size, x0.size)
    L = jnp.linalg.eigvalsh(0.5 * (H + H.T))[-1]
    grad = jax.grad(loss)

    def body(carry, _):
        x, z, t = carry
        x_new = project(z - grad(z) / L)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        z_new = x_new + ((t - 1.0) / t_new) * (x_new - x)
        return (x_new, z_new, t_new), None

    x0 = project(x0)
    (x, _, _), _ = jax.lax.scan(body, (x0, x0, jnp.ones((), x0.dtype)), None, length=num_iters)
    return x


def _violation(params: Array, cons: qp.Constraints) -> Array:
    out = jnp.zeros((), params.dtype)
    if cons.lo is not None:
        out = jnp.maximum(out, jnp.max(cons.lo - params))
    if cons.hi is not None:
        out = jnp.maximum(out, jnp.max(params - cons.hi))
    if cons.A is not None:
        out = jnp.maximum(out, jnp.max(jnp.abs(cons.A @ params.reshape(-1) - cons.b)))
    if cons.G is not None:
        out = jnp.maximum(out, jnp.max(cons.G @ params.reshape(-1) - cons.h))
    return out


class ConstrainedBase(TaskFamilyBase):
    """Shared members of the constrained families: ``violation`` and ``optimum`` (FISTA)."""

    has_optimum = True
    optimum_iters: int = 3000

    def constraints(self, task=None) -> qp.Constraints:
        raise NotImplementedError

    def project(self, params: Params, task=None) -> Params:
        raise NotImplementedError

    def violation(self, params: Params, task=None) -> Array:
        """Largest constraint violation of ``params`` (0 when feasible)."""
        return _violation(params, self.constraints(task))

    def optimum(self, task) -> Params:
        x0 = self.init_params(jax.random.PRNGKey(0), task)
        return fista(lambda p: self.loss(p, task), lambda p: self.project(p, task), x0, self.optimum_iters)


# ------------------------------------------------------------------------------------------
# Regression on a cone / simplex
# ------------------------------------------------------------------------------------------


class RegressionTask(NamedTuple):
    """One regression problem ``||X theta - y||^2 / n``."""

    X: Array  # (num_samples, dim), N(0, 1) entries
    y: Array  # (num_samples,) = X w + noise


def _sparse_weights(key, dim, active, simplex):
    k1, k2 = jax.random.split(key)
    mask = jnp.zeros(dim).at[jax.random.permutation(k1, dim)[:active]].set(1.0)
    w = mask * jax.random.uniform(k2, (dim,), minval=0.2, maxval=1.0)
    return w / jnp.sum(w) if simplex else w


@dataclasses.dataclass(frozen=True)
class _Regression(ConstrainedBase):
    num_samples: int = 30
    dim: int = 10
    active: int = 5  # nonzeros of the planted weights
    noise: float = 0.5
    signal: float = 1.0  # scale of the planted weights (nonnegative case)

    def __post_init__(self):
        check_fields(self, integer=("num_samples", "dim", "active"), positive=("num_samples", "dim", "active"),
                     nonnegative=("noise", "signal"))
        if self.active > self.dim:
            raise ValidationError(f"{type(self).__name__}.active must be <= dim (= {self.dim}), got {self.active}", field="active")

    _simplex = False

    def sample(self, key: PRNGKey) -> RegressionTask:
        kx, kw, kn = jax.random.split(key, 3)
        X = jax.random.normal(kx, (self.num_samples, self.dim))
        w = _sparse_weights(kw, self.dim, self.active, self._simplex)
        w = w if self._simplex else self.signal * w
        y = X @ w + self.noise * jax.random.normal(kn, (self.num_samples,))
        return RegressionTask(X, y)

    def loss(self, params: Params, task: RegressionTask, batch: Batch | None = None) -> Array:
        del batch
        return jnp.mean(jnp.square(task.X @ params - task.y))


@dataclasses.dataclass(frozen=True)
class NonnegLeastSquares(_Regression):
    r"""Nonnegative least squares :math:`\min_{\theta\ge0}\tfrac1n\|X\theta - y\|^2`,
    ``X ~ N(0,1)``, ``y = X w + noise * N(0,1)``, ``w >= 0`` with ``active`` nonzeros.
    Starts at ``theta = 0`` (feasible). Feasible set: ``lo = 0`` (box)."""

    source = "DCO (Gautam, Pfrommer, Sojoudi) eq. (5), constrained steps: nonnegative regression"

    def init_params(self, key: PRNGKey, task: RegressionTask) -> Array:
        del key
        return jnp.zeros((self.dim,), task.X.dtype)

    def constraints(self, task=None) -> qp.Constraints:
        return qp.Constraints(lo=jnp.zeros((self.dim,)))

    def project(self, params, task=None):
        return jnp.maximum(params, 0.0)


@dataclasses.dataclass(frozen=True)
class SimplexLeastSquares(_Regression):
    r"""Least squares on the probability simplex
    :math:`\min_{\theta\ge0,\,\mathbf1^\top\theta=1}\tfrac1n\|X\theta-y\|^2` (mixture
    weights), ``y = X w + noise``, ``w`` on the simplex with ``active`` nonzeros. Starts at
    the barycentre ``1/p``. Feasible set: ``lo = 0`` and one equality row."""

    source = "DCO (Gautam, Pfrommer, Sojoudi) eq. (5), constrained steps: mixture weights on the simplex"
    _simplex = True

    def init_params(self, key: PRNGKey, task: RegressionTask) -> Array:
        del key
        return jnp.full((self.dim,), 1.0 / self.dim, task.X.dtype)

    def constraints(self, task=None) -> qp.Constraints:
        return qp.Constraints(A=jnp.ones((1, self.dim)), b=jnp.ones((1,)), lo=jnp.zeros((self.dim,)))

    def project(self, params, task=None):
        return project_simplex(params)


# ------------------------------------------------------------------------------------------
# Input-constrained linear-quadratic control
# ------------------------------------------------------------------------------------------


class LQRTask(NamedTuple):
    """One control problem ``x_{t+1} = A x_t + B u_t`` from ``x0``."""

    A: Array  # (state_dim, state_dim), spectral radius = rho
    B: Array  # (state_dim, input_dim)
    x0: Array  # (state_dim,)


@dataclasses.dataclass(frozen=True)
class BoxLQR(ConstrainedBase):
    r"""Finite-horizon LQR with input limits; decision variable ``u`` of shape
    ``(horizon, input_dim)``.

    Math: :math:`x_{t+1} = A x_t + B u_t`, :math:`l(u) = \tfrac1T\sum_{t=0}^{T-1}
    \|x_{t+1}\|^2 + r\|u_t\|^2`, :math:`-u_{\max} \le u \le u_{\max}`. ``A`` is a random
    Gaussian matrix rescaled to spectral radius ``rho`` (stable for ``rho < 1``), ``B`` and
    ``x0`` Gaussian (``x0`` scaled by ``x0_scale`` so that the limits bind). Starts at
    ``u = 0``.
    """

    state_dim: int = 4
    input_dim: int = 2
    horizon: int = 10
    rho: float = 0.9
    u_max: float = 0.5
    r: float = 0.1
    x0_scale: float = 3.0

    source = "DCO (Gautam, Pfrommer, Sojoudi) eq. (5), constrained steps: box-constrained linear-quadratic control"

    def __post_init__(self):
        check_fields(self, integer=("state_dim", "input_dim", "horizon"),
                     positive=("state_dim", "input_dim", "horizon", "rho", "u_max", "r", "x0_scale"))

    def sample(self, key: PRNGKey) -> LQRTask:
        ka, kb, kx = jax.random.split(key, 3)
        A = jax.random.normal(ka, (self.state_dim, self.state_dim))
        A = A * (self.rho / jnp.max(jnp.abs(jnp.linalg.eigvals(A))).astype(A.dtype))
        B = jax.random.normal(kb, (self.state_dim, self.input_dim))
        x0 = self.x0_scale * jax.random.normal(kx, (self.state_dim,))
        return LQRTask(A, B, x0)

    def init_params(self, key: PRNGKey, task: LQRTask) -> Array:
        del key
        return jnp.zeros((self.horizon, self.input_dim), task.A.dtype)

    def states(self, params: Array, task: LQRTask) -> Array:
        """``x_1 ... x_T`` (shape ``(horizon, state_dim)``)."""
        def step(x, u):
            x = task.A @ x + task.B @ u
            return x, x

        return jax.lax.scan(step, task.x0.astype(params.dtype), params)[1]

    def loss(self, params: Params, task: LQRTask, batch: Batch | None = None) -> Array:
        del batch
        xs = self.states(params, task)
        return (jnp.sum(jnp.square(xs)) + self.r * jnp.sum(jnp.square(params))) / self.horizon

    def constraints(self, task=None) -> qp.Constraints:
        shape = (self.horizon, self.input_dim)
        return qp.Constraints(lo=jnp.full(shape, -self.u_max), hi=jnp.full(shape, self.u_max))

    def project(self, params, task=None):
        return jnp.clip(params, -self.u_max, self.u_max)

    def optimum(self, task) -> Params:
        u0 = self.init_params(jax.random.PRNGKey(0), task)
        flat = fista(lambda v: self.loss(v.reshape(u0.shape), task), lambda v: self.project(v, task),
                     u0.reshape(-1), self.optimum_iters)
        return flat.reshape(u0.shape)


CONSTRAINED_FAMILIES = {
    "nonneg_least_squares": NonnegLeastSquares,
    "simplex_least_squares": SimplexLeastSquares,
    "box_lqr": BoxLQR,
}
