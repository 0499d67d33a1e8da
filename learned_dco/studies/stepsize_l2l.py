r"""Step-size learning-to-learn on least squares: meta-objectives and their meta-gradients.

Wang, Sun, Ge et al., "Guarantees for Tuning the Step Size using a Learning-to-Learn
Approach" (ICML 2021). The learned optimizer is gradient descent with one step size
:math:`\eta = e^{\log\eta}` on a least-squares problem given as data,

.. math::
    f(w) = \frac{1}{2n}\|Xw - y\|^2 = \tfrac12 (w - \bar w)^\top H (w - \bar w) + f^\star,
    \qquad H = X^\top X / n,\quad X^\top (X\bar w - y) = 0,

run for :math:`t` steps from :math:`w_0`: :math:`w_{k+1} = w_k - \eta \nabla f(w_k)`. A
quadratic :math:`\tfrac12 (w-w^\star)^\top H (w-w^\star)` is the special case
:math:`X = \sqrt d\, H^{1/2}`, :math:`y = X w^\star` (:func:`quadratic`).

Meta-objectives (``val`` = held-out data; ``None`` means train-by-train, i.e. the
objective is evaluated on the training data GD runs on):

* :func:`last_iterate_loss` -- :math:`f_{val}(w_t)`. Its meta-gradient vanishes like
  :math:`t\rho^{2t}` when :math:`\eta < 2/L` and explodes like :math:`t\rho^{2t}` when
  :math:`\eta > 2/L` (:math:`\rho = \max_i |1-\eta\lambda_i|`, :math:`L = \lambda_{max}(H)`).
* :func:`log_loss_naive` -- :math:`\tfrac1t \log f_{val}(w_t)` by plain backpropagation
  through the GD iterates. Its meta-gradient is bounded, but the iterates themselves
  overflow (:math:`\|w_t\| \sim \rho^t`) once :math:`t \log\rho` exceeds the float range
  (about 88 in float32, 709 in float64), and converging errors underflow, so the naive
  value and gradient become ``inf``/``nan``.
* :func:`log_loss_stable` -- the same function computed without overflow. The error
  :math:`e_k = w_k - \bar w` evolves linearly, :math:`e_{k+1} = (I - \eta H) e_k`. We keep
  it as :math:`e_k = e^{\ell_k} u_k` with a unit vector :math:`u_k` and a log-scale
  :math:`\ell_k`:

  .. math::
      v = (I - \eta H) u_k, \qquad \ell_{k+1} = \ell_k + \log\|v\|, \qquad u_{k+1} = v/\|v\|,

  so every stored quantity is O(1). The objective then splits into a constant, a linear and
  a quadratic part in :math:`e^{\ell}`. With :math:`r = X_{val}\bar w - y_{val}` and
  :math:`p = X_{val} u_t`,
  :math:`f_{val}(w_t) = \|r + e^{\ell_t} p\|^2 / (2m)`, evaluated as

  .. math::
      \log f_{val}(w_t) = 2c + \log\|e^{-c} r + e^{\ell_t - c} p\|^2 - \log 2m,
      \qquad c = \max(\ell_t, 0).

  For train-by-train, :math:`X^\top r = 0` makes the cross term vanish exactly and
  :math:`\log f(w_t) = \mathrm{logaddexp}(\log f^\star,\; 2\ell_t + \log\tfrac{\|p\|^2}{2n})`.
  This is the same function of :math:`\eta` as the naive one (the tests check values and
  gradients against it, and against the spectral closed form), so ``jax.grad`` of it is the
  exact meta-gradient, just without overflow.
* :func:`log_loss_spectral` -- the train-by-train closed form in the eigenbasis of
  :math:`H`, :math:`\log f(w_t) = \mathrm{logsumexp}(\log f^\star,\;
  \log\tfrac{\lambda_i z_i^2}{2} + 2t\log|1-\eta\lambda_i|)` with :math:`z = Q^\top e_0`
  (an independent reference; costs an eigendecomposition).

**Derived bound (train-by-train).** Writing :math:`F = f^\star + \sum_i a_i x_i^{2t}` with
:math:`a_i = \lambda_i z_i^2/2`, :math:`x_i = |1-\eta\lambda_i|`,

.. math::
    \Big|\frac{\partial}{\partial \log\eta}\,\tfrac1t \log F\Big|
    = \Big|\sum_i \frac{a_i x_i^{2t}}{F}\cdot\frac{2\eta\lambda_i\,\mathrm{sign}(1-\eta\lambda_i)}{x_i}\Big|
    \le \max_{i:\,a_i > 0} \frac{2\eta\lambda_i}{|1-\eta\lambda_i|},

a convex combination with weights summing to at most one: the meta-gradient of the log
objective is bounded uniformly in :math:`t` (:func:`log_grad_bound`).

**Train-by-train vs train-by-validation** (paper section 4). On noisy linear regression
with few samples (:func:`sample_regression`: :math:`x \sim N(0, I_d)`,
:math:`w^\star \sim N(0, I_d/d)`, :math:`y = x^\top w^\star + \sigma\xi`; paper:
:math:`d = 1000`, :math:`n = 500` or :math:`250 + 250`, :math:`t = 40`, :math:`\sigma = 1`),
meta-training :math:`\eta` on the training loss picks a large :math:`\eta = \Theta(1)`
that fits the noise, while meta-training on a validation split picks
:math:`\eta = \Theta(1/t)` (early stopping). Held-out quality is the population loss
:math:`\mathbb E\,\tfrac12 (x^\top w - y)^2 = \tfrac12(\|w - w^\star\|^2 + \sigma^2)`
(:func:`population_loss`).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_dco.meta.inner import InnerState, inner_loop
from learned_dco.optimizers.stepsize import step_size_gd
from learned_dco.types import Array, PRNGKey

OBJECTIVES = ("last", "log_naive", "log_stable")


class LSProblem(NamedTuple):
    """Least-squares data :math:`f(w) = \\|Xw - y\\|^2/(2n)` with a fixed point of GD.

    A batch of problems has a leading axis on every field (``jax.vmap`` over it)."""

    X: Array  # (n, d)
    y: Array  # (n,)
    fixed_point: Array  # (d,) w_bar with X^T (X w_bar - y) = 0 (a minimiser)
    min_value: Array  # () f* = f(w_bar), the constant part of the train-by-train objective


def least_squares(X: Array, y: Array, fixed_point: Array | None = None) -> LSProblem:
    """Wrap ``(X, y)``; ``fixed_point`` defaults to the minimum-norm minimiser (lstsq), and
    ``min_value`` is computed from it."""
    X, y = jnp.asarray(X), jnp.asarray(y)
    if X.ndim != 2 or y.shape != X.shape[:1]:
        raise ValueError(f"least_squares: need X (n, d) and y (n,), got {X.shape} and {y.shape}")
    if fixed_point is None:
        fixed_point = jnp.linalg.lstsq(X, y)[0]
    fixed_point = jnp.asarray(fixed_point, X.dtype)
    if fixed_point.shape != X.shape[1:]:
        raise ValueError(f"least_squares: fixed_point must have shape {X.shape[1:]}, got {fixed_point.shape}")
    r = X @ fixed_point - y
    return LSProblem(X, y, fixed_point, 0.5 * jnp.sum(jnp.square(r)) / X.shape[0])


def quadratic(H: Array, w_star: Array) -> LSProblem:
    r""":math:`\tfrac12 (w - w^\star)^\top H (w - w^\star)` as least squares
    (:math:`X = \sqrt d\,H^{1/2}`, :math:`y = X w^\star`, fixed point :math:`w^\star`, so
    :math:`f^\star = 0` exactly, stored as ``min_value``, so rounding in ``X w^\star - y``
    cannot put a floor under the stable objective). ``H`` must be symmetric positive
    semi-definite."""
    H, w_star = jnp.asarray(H), jnp.asarray(w_star)
    d = w_star.shape[0]
    if H.shape != (d, d):
        raise ValueError(f"quadratic: H must be ({d}, {d}) for w_star of shape ({d},), got {H.shape}")
    evals, evecs = jnp.linalg.eigh(H)
    X = math.sqrt(d) * (evecs * jnp.sqrt(jnp.clip(evals, 0.0))) @ evecs.T
    return LSProblem(X, X @ w_star, w_star, jnp.zeros((), X.dtype))


def loss(w: Array, problem: LSProblem) -> Array:
    """:math:`\\|Xw - y\\|^2 / (2n)`."""
    r = problem.X @ w - problem.y
    return 0.5 * jnp.sum(jnp.square(r)) / problem.X.shape[0]


def smoothness(problem: LSProblem) -> Array:
    """:math:`L = \\lambda_{max}(X^\\top X / n)`: GD converges iff :math:`\\eta < 2/L`."""
    return jnp.square(jnp.linalg.norm(problem.X, 2)) / problem.X.shape[0]


def _check_horizon(t: int) -> None:
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"horizon t must be a positive integer, got {t!r}")


class _Problems:
    """Least-squares problems as a deterministic task family for the inner loop."""

    @staticmethod
    def sample_batch(key, problem):
        return None

    @staticmethod
    def loss(w, problem, batch=None):
        return loss(w, problem)


def gd(log_eta: Array, w0: Array, train: LSProblem, t: int) -> Array:
    """``t`` steps of GD with step ``exp(log_eta)`` on ``train`` (the library's
    :func:`~learned_dco.optimizers.step_size_gd` in :func:`learned_dco.meta.inner_loop`);
    returns :math:`w_t`."""
    _check_horizon(t)
    tx = step_size_gd(jnp.exp(log_eta))
    start = InnerState(w0, tx.init(w0), train, jnp.zeros((), jnp.int32), None)
    return inner_loop(tx, _Problems, start, t)[0].params


def last_iterate_loss(log_eta: Array, w0: Array, train: LSProblem, t: int, val: LSProblem | None = None) -> Array:
    """:math:`f_{val}(w_t)` (train-by-train when ``val`` is ``None``)."""
    return loss(gd(log_eta, w0, train, t), train if val is None else val)


def log_loss_naive(log_eta: Array, w0: Array, train: LSProblem, t: int, val: LSProblem | None = None) -> Array:
    """:math:`\\tfrac1t\\log f_{val}(w_t)` through the raw iterates (overflows; see module)."""
    return jnp.log(last_iterate_loss(log_eta, w0, train, t, val)) / t


def _safe_norm(v: Array) -> Array:
    sq = jnp.sum(jnp.square(v))
    ok = sq > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)


def _safe_log(x: Array) -> Array:
    """``log x`` with ``-inf`` at 0 and a zero (not NaN) gradient there."""
    ok = x > 0
    return jnp.where(ok, jnp.log(jnp.where(ok, x, 1.0)), -jnp.inf)


def error_log_scale(log_eta: Array, w0: Array, train: LSProblem, t: int) -> tuple[Array, Array]:
    r"""The GD error :math:`e_t = w_t - \bar w = e^{\ell_t} u_t` as ``(ell_t, u_t)``,
    ``||u_t|| = 1``, computed without ever forming :math:`e_t` (module docstring)."""
    _check_horizon(t)
    eta = jnp.exp(log_eta)
    X, n = train.X, train.X.shape[0]
    e0 = w0 - train.fixed_point
    norm0 = _safe_norm(e0)
    u0 = e0 / jnp.where(norm0 > 0, norm0, 1.0)

    def step(carry, _):
        ell, u = carry
        v = u - (eta / n) * (X.T @ (X @ u))
        nv = _safe_norm(v)
        return (ell + _safe_log(nv), v / jnp.where(nv > 0, nv, 1.0)), None

    return jax.lax.scan(step, (_safe_log(norm0), u0), length=t)[0]


def _logaddexp(a: Array, b: Array) -> Array:
    """``log(e^a + e^b)`` that tolerates ``a = -inf`` or ``b = -inf`` (finite gradients)."""
    m = jnp.maximum(a, b)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    return m_safe + jnp.log(jnp.exp(a - m_safe) + jnp.exp(b - m_safe))


def log_loss_stable(log_eta: Array, w0: Array, train: LSProblem, t: int, val: LSProblem | None = None) -> Array:
    """:math:`\\tfrac1t\\log f_{val}(w_t)`, overflow-free (module docstring); the same
    function as :func:`log_loss_naive`."""
    ell, u = error_log_scale(log_eta, w0, train, t)
    data = train if val is None else val
    m = data.X.shape[0]
    p = data.X @ u
    if val is None:  # X^T r = 0: constant f* + quadratic part, no cross term
        log_f = _logaddexp(_safe_log(2 * m * train.min_value), 2 * ell + _safe_log(jnp.sum(jnp.square(p))))
    else:
        r = data.X @ train.fixed_point - data.y
        c = jnp.maximum(ell, 0.0)
        log_f = 2 * c + _safe_log(jnp.sum(jnp.square(jnp.exp(-c) * r + jnp.exp(ell - c) * p)))
    return (log_f - math.log(2 * m)) / t


def log_loss_spectral(log_eta: Array, w0: Array, train: LSProblem, t: int) -> Array:
    """Train-by-train :math:`\\tfrac1t\\log f(w_t)` in closed form (eigenbasis of H)."""
    _check_horizon(t)
    X, n = train.X, train.X.shape[0]
    lam, Q = jnp.linalg.eigh(X.T @ X / n)
    lam = jnp.clip(lam, 0.0)
    z = Q.T @ (w0 - train.fixed_point)
    f_star = train.min_value
    eta = jnp.exp(log_eta)
    terms = _safe_log(0.5 * lam * z**2) + 2 * t * jnp.log(jnp.abs(1.0 - eta * lam))
    terms = jnp.where(0.5 * lam * z**2 > 0, terms, -jnp.inf)
    return jax.nn.logsumexp(jnp.append(terms, _safe_log(f_star))) / t


def log_grad_bound(log_eta: Array, w0: Array, train: LSProblem, rtol: float = 1e-10) -> Array:
    r""":math:`\max_{i: a_i > 0} 2\eta\lambda_i / |1 - \eta\lambda_i|`, a bound on
    :math:`|\partial_{\log\eta}\tfrac1t\log f(w_t)|` valid for every ``t`` (train-by-train).
    Modes with :math:`a_i = \lambda_i z_i^2/2` below ``rtol`` times the largest are ignored
    (they carry no weight up to rounding)."""
    X, n = train.X, train.X.shape[0]
    lam, Q = jnp.linalg.eigh(X.T @ X / n)
    a = 0.5 * jnp.clip(lam, 0.0) * (Q.T @ (w0 - train.fixed_point)) ** 2
    eta = jnp.exp(log_eta)
    ratio = 2 * eta * lam / jnp.abs(1.0 - eta * lam)
    return jnp.max(jnp.where(a > rtol * jnp.max(a), ratio, 0.0))


_OBJECTIVE_FNS: dict[str, Callable] = {
    "last": last_iterate_loss,
    "log_naive": log_loss_naive,
    "log_stable": log_loss_stable,
}


def objective_fn(name: str) -> Callable:
    """``"last"``, ``"log_naive"`` or ``"log_stable"`` -> its function."""
    if name not in _OBJECTIVE_FNS:
        raise ValueError(f"unknown step-size objective {name!r}; expected one of {OBJECTIVES}")
    return _OBJECTIVE_FNS[name]


# ------------------------------------------------------------------------------------------
# Noisy linear regression: train-by-train vs train-by-validation
# ------------------------------------------------------------------------------------------


class RegressionTasks(NamedTuple):
    """Noisy linear regression tasks (leading task axis on every field)."""

    X: Array  # (tasks, n, d), x ~ N(0, I_d)
    y: Array  # (tasks, n), y = x^T w_star + noise * xi
    w_star: Array  # (tasks, d) ~ N(0, I_d / d)
    noise: Array  # (tasks,) noise standard deviation sigma


def sample_regression(key: PRNGKey, num_tasks: int, dim: int, num_samples: int, noise: float = 1.0,
                      dtype=None) -> RegressionTasks:
    """``num_tasks`` tasks of the paper's noisy linear regression (module docstring)."""
    for name, v in (("num_tasks", num_tasks), ("dim", dim), ("num_samples", num_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"sample_regression: {name} must be a positive integer, got {v!r}")
    if not noise >= 0:
        raise ValueError(f"sample_regression: noise must be >= 0, got {noise!r}")
    dtype = dtype or jnp.result_type(float)
    kx, kw, kn = jax.random.split(key, 3)
    X = jax.random.normal(kx, (num_tasks, num_samples, dim), dtype)
    w_star = jax.random.normal(kw, (num_tasks, dim), dtype) / math.sqrt(dim)
    y = jnp.einsum("tnd,td->tn", X, w_star) + noise * jax.random.normal(kn, (num_tasks, num_samples), dtype)
    return RegressionTasks(X, y, w_star, jnp.full((num_tasks,), noise, dtype))


def split(tasks: RegressionTasks, num_train: int) -> tuple[LSProblem, LSProblem]:
    """First ``num_train`` samples for GD, the rest for validation (batched problems)."""
    n = tasks.X.shape[1]
    if not 0 < num_train < n:
        raise ValueError(f"split: num_train must lie in (0, {n}), got {num_train}")
    train = jax.vmap(least_squares)(tasks.X[:, :num_train], tasks.y[:, :num_train])
    val = jax.vmap(least_squares)(tasks.X[:, num_train:], tasks.y[:, num_train:])
    return train, val


def all_samples(tasks: RegressionTasks) -> LSProblem:
    """Every sample for GD (train-by-train)."""
    return jax.vmap(least_squares)(tasks.X, tasks.y)


def population_loss(w: Array, tasks_w_star: Array, noise: Array) -> Array:
    r""":math:`\mathbb E_{x,\xi}\tfrac12(x^\top w - y)^2 = \tfrac12(\|w - w^\star\|^2 + \sigma^2)`."""
    return 0.5 * (jnp.sum(jnp.square(w - tasks_w_star), axis=-1) + jnp.square(noise))


def meta_objective(log_eta: Array, train: LSProblem, t: int, val: LSProblem | None = None,
                   objective: str = "log_stable") -> Array:
    """Mean over a batch of problems (leading axis) of a step-size meta-objective, GD from
    :math:`w_0 = 0`."""
    fn = objective_fn(objective)
    w0 = jnp.zeros(train.X.shape[-1], train.X.dtype)
    if val is None:
        return jnp.mean(jax.vmap(lambda p: fn(log_eta, w0, p, t))(train))
    return jnp.mean(jax.vmap(lambda p, v: fn(log_eta, w0, p, t, v))(train, val))


class StepSizeFit(NamedTuple):
    log_eta: Array  # () the final meta-parameter
    trajectory: Array  # (steps,) log eta after every meta-step
    objective: Array  # (steps,) meta-objective before every meta-step


def meta_train(train: LSProblem, t: int, val: LSProblem | None = None, *, objective: str = "log_stable",
               log_eta0: float = math.log(0.01), steps: int = 300, learning_rate: float = 0.05,
               meta_optimizer: optax.GradientTransformation | None = None) -> StepSizeFit:
    """Meta-train :math:`\\log\\eta` by Adam (default) on :func:`meta_objective`, one
    jitted ``lax.scan``. Non-finite meta-gradients skip the update (counted nowhere: use
    the stable objective)."""
    objective_fn(objective)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"meta_train: steps must be a positive integer, got {steps!r}")
    opt = meta_optimizer if meta_optimizer is not None else optax.adam(learning_rate)
    value_and_grad = jax.value_and_grad(lambda le: meta_objective(le, train, t, val, objective))

    @jax.jit
    def run(log_eta):
        def body(carry, _):
            le, state = carry
            value, grad = value_and_grad(le)
            grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
            updates, state = opt.update(grad, state, le)
            le = le + updates
            return (le, state), (le, value)

        (le, _), (traj, values) = jax.lax.scan(body, (log_eta, opt.init(log_eta)), length=steps)
        return StepSizeFit(le, traj, values)

    return run(jnp.asarray(log_eta0, train.X.dtype))
