r"""Stability of learned update rules on the noisy quadratic model (NQM).

Harrison, Metz & Sohl-Dickstein, "A Closer Look at Learned Optimization" (2022), Sec. 4
and App. A-B.1. On the NQM :math:`\ell_t(\phi) = \tfrac12 (\phi - \xi_t)^\top H (\phi -
\xi_t)`, :math:`\xi_t \sim \mathcal N(0, \Sigma_\xi)`, the update with a nominal step
:math:`\alpha` and a learned dense preconditioner :math:`P` (eq. 5 with :math:`g_t =
\alpha\nabla_t`),

.. math::
    \phi_{t+1} = \phi_t - (\alpha I + P)\nabla_t
             = \underbrace{(I - (\alpha I + P)H)}_{A}\phi_t + (\alpha I + P)H\,\xi_t \qquad (6)

is a linear system whose stability is :math:`\rho(A) = \max_i |\lambda_i(A)| \le 1`.

* **Theorem 1.** :math:`H \succ 0`, :math:`\alpha \ge 0`: :math:`\rho(A) \le 1` if
  :math:`-\alpha \le \lambda_{\min}(P)` (9) and :math:`\lambda_{\max}(P) \le
  2/\lambda_{\max}(H) - \alpha` (10).
* **Lemma 2.** With the Hessian preconditioner, :math:`\phi_{t+1} = \phi_t -
  H^{-1/2}(\alpha I + P)\nabla_t` (eq. 12), i.e. :math:`A = I - H^{-1/2}(\alpha I + P)H`,
  the upper bound becomes :math:`\lambda_{\max}(P) \le 2/\sqrt{\lambda_{\max}(H)} - \alpha`
  (13), with (9) unchanged.

**Caveat (found while testing).** The paper states both results for ":math:`P`
diagonalizable with real eigenvalues", but the proof's step (A.16),
:math:`\lambda_{\max}((\alpha I + P)H) \le \lambda_{\max}(\alpha I + P)\lambda_{\max}(H)`,
holds for *symmetric* positive semi-definite :math:`\alpha I + P`, not in general: e.g.
:math:`H = [[1, .5], [.5, 1]]`, :math:`\alpha = 0`, :math:`P = [[1, 10], [0, 1.01]]`
(diagonalizable, eigenvalues 1 and 1.01, inside both bounds) gives :math:`\rho(A) \approx
5.9`. :func:`theorem1_holds` / :func:`lemma2_holds` therefore report the bounds as stated,
and ``tests/test_analysis.py`` checks the guarantee for symmetric :math:`P` and keeps this
counter-example.

**Meta-gradient variance (Fig. 2a, App. B.1).** For the mean loss over the first :math:`T`
steps, :math:`L(P; T) = \frac1T \sum_{t=1}^T \ell_t(\phi_t)` (each :math:`\ell_t` with the
same draw :math:`\xi_t` that forms the gradient at step :math:`t`), the meta-parameter is
the dense :math:`P` of "the optimizer described in eq. 7" (the dynamics (6)); the
meta-gradient :math:`\nabla_P L` is random through :math:`\phi_0 \sim \mathcal N(0,
\sigma_0^2 I)` and the :math:`\xi_t`. Its variance matrix over ``N`` samples
:math:`\hat\Sigma = \frac1N \sum_i (\nabla_i - \bar\nabla)(\nabla_i - \bar\nabla)^\top`
(A.32) is summarised by its trace. :func:`meta_gradients` computes the per-sample
:math:`\nabla_P L` by forward-mode differentiation (``jax.jacfwd``: :math:`P` has only
:math:`d^2 = 4` entries) of one ``lax.scan`` that records the running mean loss, so a single
unroll of length :math:`\max T` yields the gradients for every horizon; it is vmapped over
seeds and :math:`\alpha`. :func:`expected_meta_loss` is the closed form of eq. (8) (with
the loss's factor 1/2, which eq. 8 drops) -- its gradient is the mean the samples must
match.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.types import Array, PRNGKey
from learned_dco.validation import ValidationError

DEFAULT_HORIZONS: tuple[int, ...] = (1, 10, 100, 1000)
PAPER_HORIZONS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 10, 25, 50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 800, 900, 1000,
)
"""The horizons of STAR App. B.1, eq. (A.31)."""


# --- dynamics and spectra -----------------------------------------------------------------


def _as_matrix(H) -> Array:
    H = jnp.asarray(H)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValidationError(f"H must be a square matrix, got shape {H.shape}")
    return H


def _preconditioner(P, d: int, dtype) -> Array:
    if P is None:
        return jnp.zeros((d, d), dtype)
    P = jnp.asarray(P, dtype)
    if P.shape != (d, d):
        raise ValidationError(f"P must have shape {(d, d)}, got {P.shape}")
    return P


def inverse_sqrt_psd(H) -> Array:
    r""":math:`H^{-1/2}` of a symmetric positive definite ``H`` (eigendecomposition)."""
    w, V = jnp.linalg.eigh(_as_matrix(H))
    return (V / jnp.sqrt(w)) @ V.T


def dynamics_matrix(H, alpha, P=None, *, hessian_preconditioned: bool = False) -> Array:
    r"""The NQM dynamics matrix :math:`A` of eq. (6), or of eq. (12) with
    ``hessian_preconditioned``:

    * :math:`A = I - (\alpha I + P) H`;
    * :math:`A = I - H^{-1/2} (\alpha I + P) H` (Lemma 2).

    ``P=None`` means :math:`P = 0`. Traceable (jit/vmap/grad) in ``alpha`` and ``P``.
    """
    H = _as_matrix(H)
    d = H.shape[0]
    dtype = jnp.result_type(H, alpha, jnp.float32)
    P = _preconditioner(P, d, dtype)
    eye = jnp.eye(d, dtype=dtype)
    Q = jnp.asarray(alpha, dtype) * eye + P
    if hessian_preconditioned:
        Q = inverse_sqrt_psd(H).astype(dtype) @ Q
    return eye - Q @ H.astype(dtype)


def spectral_radius(A) -> Array:
    r""":math:`\rho(A) = \max_i |\lambda_i(A)|` (general, possibly non-symmetric ``A``).

    Uses ``jnp.linalg.eigvals`` (CPU backend; under jit on an accelerator, run it on host)."""
    A = _as_matrix(A)
    return jnp.max(jnp.abs(jnp.linalg.eigvals(A)))


def is_stable(H, alpha, P=None, *, hessian_preconditioned: bool = False, tol: float = 1e-9) -> bool:
    """``rho(A) <= 1 + tol`` for the dynamics of :func:`dynamics_matrix`."""
    A = dynamics_matrix(H, alpha, P, hessian_preconditioned=hessian_preconditioned)
    return bool(spectral_radius(A) <= 1 + tol)


# --- Theorem 1 and Lemma 2 ----------------------------------------------------------------


def _check_alpha(alpha) -> None:
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValidationError(f"alpha must be a finite number >= 0 (Theorem 1), got {alpha!r}")


def _check_hessian(H) -> np.ndarray:
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValidationError(f"H must be a square matrix, got shape {H.shape}")
    if not np.allclose(H, H.T):
        raise ValidationError("H must be symmetric")
    if np.linalg.eigvalsh(H).min() <= 0:
        raise ValidationError("H must be positive definite")
    return H


def theorem1_bounds(H, alpha: float) -> tuple[float, float]:
    r"""STAR Theorem 1: the interval :math:`[\lambda_{\min}(P), \lambda_{\max}(P)] \subseteq
    [-\alpha,\ 2/\lambda_{\max}(H) - \alpha]` that guarantees :math:`\rho(A) \le 1`
    (for symmetric :math:`P`; module docstring). Returns ``(lower, upper)``."""
    _check_alpha(alpha)
    lam_max = float(np.linalg.eigvalsh(_check_hessian(H)).max())
    return -float(alpha), 2.0 / lam_max - float(alpha)


def lemma2_bounds(H, alpha: float) -> tuple[float, float]:
    r"""STAR Lemma 2 (Hessian-preconditioned dynamics, eq. 12): ``(lower, upper) =``
    :math:`(-\alpha,\ 2/\sqrt{\lambda_{\max}(H)} - \alpha)`."""
    _check_alpha(alpha)
    lam_max = float(np.linalg.eigvalsh(_check_hessian(H)).max())
    return -float(alpha), 2.0 / np.sqrt(lam_max) - float(alpha)


def _p_spectrum(P) -> tuple[float, float]:
    P = np.asarray(P, dtype=np.float64)
    eig = np.linalg.eigvals(P)
    if np.max(np.abs(eig.imag)) > 1e-9 * max(1.0, np.max(np.abs(eig))):
        raise ValidationError("P must have real eigenvalues (Theorem 1's assumption)")
    return float(eig.real.min()), float(eig.real.max())


def theorem1_holds(H, alpha: float, P) -> bool:
    """Whether ``P`` satisfies Theorem 1's conditions (9) and (10)."""
    lo, hi = theorem1_bounds(H, alpha)
    p_min, p_max = _p_spectrum(P)
    return lo <= p_min and p_max <= hi


def lemma2_holds(H, alpha: float, P) -> bool:
    """Whether ``P`` satisfies Lemma 2's conditions (9) and (13)."""
    lo, hi = lemma2_bounds(H, alpha)
    p_min, p_max = _p_spectrum(P)
    return lo <= p_min and p_max <= hi


# --- meta-gradients on the NQM (Fig. 2a) --------------------------------------------------


def _check_horizons(horizons: Sequence[int]) -> tuple[int, ...]:
    hs = tuple(int(t) for t in horizons)
    if not hs or any(t < 1 for t in hs) or any(int(t) != t for t in horizons):
        raise ValidationError(f"horizons must be positive integers, got {horizons!r}")
    return hs


def mean_losses(P, alpha, H, key: PRNGKey, horizons: Sequence[int], init_std: float = np.sqrt(10.0), noise_std: float = 1.0) -> Array:
    r"""One sample of :math:`L(P; T) = \frac1T\sum_{t=1}^T \ell_t(\phi_t)` for every ``T`` in
    ``horizons`` (shape ``(len(horizons),)``), from one unroll of the dynamics (6).

    ``key`` fixes the sample: :math:`\phi_0 = \sigma_0 z` and :math:`\xi_t = \sigma_\xi
    z_t` with :math:`z, z_t \sim \mathcal N(0, I)` (``z_t`` from ``fold_in(key_noise, t)``).
    Differentiable in ``P`` and ``alpha``.
    """
    horizons = _check_horizons(horizons)
    H = _as_matrix(H)
    d = H.shape[0]
    dtype = jnp.result_type(P, H, alpha, jnp.float32)
    H = H.astype(dtype)
    Q = jnp.asarray(alpha, dtype) * jnp.eye(d, dtype=dtype) + jnp.asarray(P, dtype)
    k0, kn = jax.random.split(key)
    phi0 = init_std * jax.random.normal(k0, (d,), dtype)

    def step(phi, t):
        xi = noise_std * jax.random.normal(jax.random.fold_in(kn, t), (d,), dtype)
        r = phi - xi
        loss = 0.5 * r @ (H @ r)  # l_t(phi_t)
        return phi - Q @ (H @ r), loss

    t_max = max(horizons)
    _, losses = jax.lax.scan(step, phi0, jnp.arange(t_max + 1))
    running = jnp.cumsum(losses[1:])  # sum_{t=1}^{T} l_t(phi_t) at index T-1
    idx = jnp.asarray(horizons) - 1
    return running[idx] / jnp.asarray(horizons, dtype)


def meta_gradients(
    H,
    alphas,
    key: PRNGKey,
    num_seeds: int,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    P=None,
    init_std: float = np.sqrt(10.0),
    noise_std: float = 1.0,
) -> Array:
    r"""Per-sample meta-gradients :math:`\nabla_P L(P; T)`, shape
    ``(num_seeds, len(alphas), len(horizons), d, d)``.

    Seeds share their draws across ``alphas`` (common random numbers). Forward-mode
    (``jax.jacfwd``) through one scan per (seed, alpha); vmapped over both.
    """
    horizons = _check_horizons(horizons)
    if int(num_seeds) < 1:
        raise ValidationError(f"num_seeds must be >= 1, got {num_seeds!r}")
    H = _as_matrix(H)
    d = H.shape[0]
    alphas = jnp.atleast_1d(jnp.asarray(alphas, jnp.result_type(H, jnp.float32)))
    P = _preconditioner(P, d, alphas.dtype)

    def one(k, alpha):
        return jax.jacfwd(mean_losses)(P, alpha, H, k, horizons, init_std, noise_std)

    per_seed = jax.vmap(lambda k: jax.vmap(lambda a: one(k, a))(alphas))
    return jax.jit(per_seed)(jax.random.split(key, int(num_seeds)))


def trace_variance(grads: Array, axis: int = 0) -> Array:
    r"""Trace of the empirical covariance (A.32, normalised by ``N``) of gradient samples
    along ``axis``; the trailing two axes are the (d, d) gradient."""
    centred = grads - jnp.mean(grads, axis=axis, keepdims=True)
    return jnp.mean(jnp.sum(jnp.square(centred), axis=(-2, -1)), axis=axis)


def meta_gradient_variance(
    H,
    alphas,
    key: PRNGKey,
    num_seeds: int = 500,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    P=None,
    init_std: float = np.sqrt(10.0),
    noise_std: float = 1.0,
) -> Array:
    """Trace of the meta-gradient variance, shape ``(len(alphas), len(horizons))``."""
    return trace_variance(meta_gradients(H, alphas, key, num_seeds, horizons, P, init_std, noise_std))


def expected_meta_loss(H, alpha, P, horizon: int, init_var: float = 10.0, noise_var: float = 1.0) -> Array:
    r"""Closed form of :math:`\mathbb E\, L(P; T)` (STAR eqs. 7-8 with :math:`\phi_0 \sim
    \mathcal N(0, \sigma_0^2 I)`, :math:`\Sigma_\xi = \sigma_\xi^2 I`):

    .. math::
        \mathbb E L = \frac1T \sum_{t=1}^T \tfrac12\big[\mathrm{tr}(H A^t \Sigma_0 A^{t\top})
        + \mathrm{tr}(H \Sigma_t) + \mathrm{tr}(H \Sigma_\xi)\big], \quad
        \Sigma_{t+1} = A \Sigma_t A^\top + (I - A)\Sigma_\xi (I - A)^\top,\ \Sigma_0 = 0.

    Differentiable in ``alpha`` and ``P`` (its gradient is the mean meta-gradient).
    """
    if int(horizon) < 1:
        raise ValidationError(f"horizon must be >= 1, got {horizon!r}")
    H = _as_matrix(H)
    d = H.shape[0]
    dtype = jnp.result_type(H, alpha, P, jnp.float32)
    A = dynamics_matrix(H.astype(dtype), alpha, P)
    eye = jnp.eye(d, dtype=dtype)
    B = eye - A
    sig_xi = noise_var * eye
    noise_in = B @ sig_xi @ B.T

    def step(carry, _):
        At, Sig = carry  # A^{t-1}, Sigma_{t-1}
        At = A @ At
        Sig = A @ Sig @ A.T + noise_in
        loss = 0.5 * (init_var * jnp.sum(H * (At @ At.T)) + jnp.sum(H * Sig) + jnp.sum(H * sig_xi))
        return (At, Sig), loss

    _, losses = jax.lax.scan(step, (eye, jnp.zeros((d, d), dtype)), length=int(horizon))
    return jnp.mean(losses)


def alpha_grid(H, num: int = 50, upper: float = 1.0) -> np.ndarray:
    r"""``num`` values of :math:`\alpha` evenly spaced in the open interval
    :math:`(0,\ \text{upper} \cdot 2/\lambda_{\max}(H))`."""
    lam_max = float(np.linalg.eigvalsh(np.asarray(H, np.float64)).max())
    return np.linspace(0.0, upper * 2.0 / lam_max, int(num) + 2)[1:-1]


def figure2a(
    H,
    key: PRNGKey,
    *,
    num_alphas: int = 50,
    num_seeds: int = 500,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    init_var: float = 10.0,
    noise_var: float = 1.0,
) -> dict:
    r"""STAR Fig. 2a: trace of the meta-gradient variance vs :math:`\alpha` (``P = 0``).

    Returns a JSON-ready dict: ``alphas``, ``horizons``, ``trace_variance[i][j]`` for
    horizon ``i`` and alpha ``j``, the spectral radius :math:`\rho(I - \alpha H)` per alpha,
    :math:`\lambda(H)` and the stability edge :math:`2/\lambda_{\max}(H)`.
    """
    H = np.asarray(H, np.float64)
    alphas = alpha_grid(H, num_alphas)
    var = meta_gradient_variance(
        jnp.asarray(H), jnp.asarray(alphas), key, num_seeds, horizons,
        init_std=float(np.sqrt(init_var)), noise_std=float(np.sqrt(noise_var)),
    )
    radius = [float(np.max(np.abs(np.linalg.eigvals(np.eye(len(H)) - a * H)))) for a in alphas]
    eig = np.linalg.eigvalsh(H)
    return {
        "hessian": H.tolist(),
        "hessian_eigenvalues": eig.tolist(),
        "stability_edge": float(2.0 / eig.max()),
        "init_var": init_var,
        "noise_var": noise_var,
        "num_seeds": int(num_seeds),
        "alphas": alphas.tolist(),
        "horizons": list(_check_horizons(horizons)),
        "trace_variance": np.asarray(var, np.float64).T.tolist(),
        "spectral_radius": radius,
    }
