r"""A batched primal-dual interior-point QP solver with a fixed iteration count.

Solves the dense convex QP

.. math::

    \min_x \tfrac12 x^\top Q x + c^\top x \quad\text{s.t.}\quad Ax = b,\ Gx \le h

(``Q`` symmetric positive definite, ``p`` up to a few hundred) by Mehrotra's
predictor-corrector method (Mehrotra 1992; Nocedal & Wright, *Numerical Optimization*,
2nd ed., section 16.6; Wright, *Primal-Dual Interior-Point Methods*, ch. 10) on the
slack form :math:`Gx + s = h`, :math:`s \ge 0`, with multipliers ``y`` (equalities) and
``z \ge 0`` (inequalities). The Newton system of each iteration is reduced to the
multipliers' space, :math:`(C Q^{-1} C^\top + \mathrm{diag}(0, S Z^{-1}))\Delta u = r`
with :math:`C = [A; G]` (``me + mi`` unknowns, one small Cholesky factorisation per
iteration; ``Q`` is factored once per solve), and the factor serves both the predictor
(affine) and the corrector direction, whose centring parameter is
:math:`\sigma = (\mu_\text{aff}/\mu)^3`. The reduction suits the QP steps of DCO, where
the constraints are fewer than the parameters.

The loop runs a *fixed* number of iterations (no data-dependent ``while_loop``), so it is
cheap under ``vmap``: every batch member runs the same program. A member whose residuals
are below ``tol`` is frozen (its iterate is kept by a select), which also keeps ``s`` and
``z`` away from the floating-point floor. A Newton step that produces a non-finite iterate
is discarded the same way, so a singular or infeasible problem ends with finite values
and a reported status rather than NaNs.

Infeasibility is read from the dual iterate: for an infeasible primal the multipliers grow
without bound along a Farkas certificate :math:`(y, z)`, :math:`z \ge 0`,
:math:`A^\top y + G^\top z = 0`, :math:`b^\top y + h^\top z < 0`; the normalised final
multipliers are tested against it (as OSQP does with its dual iterates' differences).

Gradients: a ``custom_vjp`` that solves the active set's KKT system at the solution
(:func:`_solve_bwd`), the same derivative as the implicit function theorem gives the
other backends. Only arrays here; the QP layer (:mod:`learned_dco.qp`, the ``IPM`` value)
stacks boxes into ``G`` and materialises the curvature operator.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from learned_dco.types import Array


class IPMResult(NamedTuple):
    """The final iterate and its diagnostics (all arrays, nothing raised)."""

    x: Array  # (n,) primal solution
    y: Array  # (me,) equality multipliers
    z: Array  # (mi,) inequality multipliers, >= 0
    s: Array  # (mi,) slacks h - G x, >= 0 at convergence
    iterations: Array  # int32: iterations taken before the residuals fell below tol
    residual: Array  # max of stationarity, primal and complementarity (max_i min(s_i, z_i)) residuals
    infeasible: Array  # bool: the final multipliers are a Farkas certificate of primal infeasibility


def default_iterations(dtype) -> int:
    """Iterations that reach the dtype's working accuracy on well-scaled problems (Mehrotra's
    method typically needs 10-20; frozen members cost nothing extra but the select)."""
    return 30 if jnp.dtype(dtype) == jnp.float64 else 20


def default_tol(dtype) -> float:
    return 1e-11 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def _max_step(v: Array, dv: Array) -> Array:
    """Largest ``a <= 1`` with ``v + a dv >= 0`` (``v > 0``)."""
    ratios = jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
    return jnp.minimum(1.0, jnp.min(ratios, initial=jnp.inf))


def _residuals(Q, c, A, b, G, h, x, s, z, y):
    rd = Q @ x + c + A.T @ y + G.T @ z
    rp = A @ x - b
    ri = G @ x + s - h
    return rd, rp, ri


def _inf(v: Array) -> Array:
    return jnp.max(jnp.abs(v), initial=0.0)


def _active(me: int, s: Array, z: Array) -> Array:
    """The active set at an interior-point solution: every equality row, and the inequality
    rows whose multiplier exceeds their slack (``z_i > s_i``; at a strictly complementary
    solution one of the two is 0)."""
    return jnp.concatenate([jnp.ones((me,), bool), z > s])


def _forward(Q, c, A, b, G, h, iterations, tol):
    r"""Mehrotra predictor-corrector in the multipliers' space. With the Cholesky factor
    ``L`` of ``Q`` and ``C = [A; G]``, the Newton step eliminates
    :math:`\Delta x = -Q^{-1}(r_d + C^\top \Delta u)` and solves

    .. math::

        (C Q^{-1} C^\top + \mathrm{diag}(0, S Z^{-1}))\,\Delta u = \ldots

    for :math:`\Delta u = (\Delta y, \Delta z)`: an ``(me + mi)`` square SPD system per
    iteration. ``C Q^{-1} C^\top`` and :math:`Q^{-1}C^\top` are formed once, so the loop
    holds no ``n``-sized factorisation."""
    dtype = c.dtype
    n, me, mi = c.shape[0], A.shape[0], G.shape[0]
    cho = jax.scipy.linalg
    C = jnp.concatenate([A, G])
    L = cho.cho_factor(Q)
    # Q^{-1} explicitly (matrix products batch well under vmap when Q is shared and C is not)
    Qi = cho.cho_solve(L, jnp.eye(n, dtype=dtype))
    QiC = Qi @ C.T  # (n, me + mi)
    Qic = Qi @ c
    K0 = C @ QiC
    scale = 1.0 + jnp.maximum(_inf(c), jnp.maximum(_inf(b), _inf(h)))
    pad = jnp.zeros((me,), dtype)

    def solve_u(d, rhs):
        """``(K0 + diag(0, d)) u = rhs``."""
        K = K0 + jnp.diag(jnp.concatenate([pad, d]))
        return cho.cho_solve(cho.cho_factor(K), rhs)

    # Starting point: argmin 1/2 x'Qx + c'x + 1/2 ||Gx - h||^2 s.t. Ax = b (unit weights),
    # then slacks and multipliers shifted into the positive orthant (Vandenberghe's CVXOPT
    # initialisation).
    u0 = solve_u(jnp.ones((mi,), dtype), -(C @ Qic) - jnp.concatenate([b, h]))
    x0 = -(Qic + QiC @ u0)
    r0 = h - G @ x0

    def shift(v):
        return v + jnp.maximum(0.0, 1.0 - jnp.min(v, initial=1.0))

    s0, z0, y0 = shift(r0), shift(-r0), u0[:me]

    def measure(x, s, z, y):
        rd, rp, ri = _residuals(Q, c, A, b, G, h, x, s, z, y)
        mu = jnp.sum(s * z) / max(mi, 1)
        comp = jnp.max(jnp.minimum(s, z), initial=0.0)  # 0 iff complementary (s, z >= 0)
        return rd, rp, ri, mu, jnp.maximum(jnp.maximum(_inf(rd), _inf(rp)), jnp.maximum(_inf(ri), comp))

    def direction(factor, x, y, z, rp, ri, s, rc):
        # Z ds + S dz = rc and G dx + ds = -ri give G dx - (s/z) dz = -(rc + z ri)/z;
        # Q^{-1} r_d = x + Q^{-1}c + Q^{-1}C'u needs no solve.
        Qird = x + Qic + QiC @ jnp.concatenate([y, z])
        rhs = jnp.concatenate([rp, (rc + z * ri) / z]) - C @ Qird
        du = cho.cho_solve(factor, rhs)
        dx = -(Qird + QiC @ du)
        return dx, -ri - G @ dx, du[me:], du[:me]

    def body(_, state):
        x, s, z, y, count = state
        _, rp, ri, mu, res = measure(x, s, z, y)
        done = res <= tol * scale
        factor = cho.cho_factor(K0 + jnp.diag(jnp.concatenate([pad, s / z])))
        dx, ds, dz, dy = direction(factor, x, y, z, rp, ri, s, -s * z)
        a_aff = jnp.minimum(_max_step(s, ds), _max_step(z, dz))
        mu_aff = jnp.sum((s + a_aff * ds) * (z + a_aff * dz)) / max(mi, 1)
        sigma = jnp.clip(mu_aff / jnp.maximum(mu, jnp.finfo(dtype).tiny), 0.0, 1.0) ** 3
        dx, ds, dz, dy = direction(factor, x, y, z, rp, ri, s, -s * z + sigma * mu - ds * dz)
        a = 0.99 * jnp.minimum(_max_step(s, ds), _max_step(z, dz))
        new = (x + a * dx, s + a * ds, z + a * dz, y + a * dy)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in new]))
        keep = done | ~finite
        x, s, z, y = (jnp.where(keep, old, nv) for old, nv in zip((x, s, z, y), new))
        return x, s, z, y, count + jnp.where(keep, 0, 1).astype(jnp.int32)

    x, s, z, y, count = jax.lax.fori_loop(0, iterations, body, (x0, s0, z0, y0, jnp.zeros((), jnp.int32)))
    _, _, _, _, res = measure(x, s, z, y)
    # Farkas certificate of primal infeasibility on the normalised multipliers.
    norm = jnp.maximum(jnp.maximum(_inf(y), _inf(z)), jnp.finfo(dtype).tiny)
    yn, zn = y / norm, z / norm
    eps = jnp.sqrt(jnp.finfo(dtype).eps)
    infeasible = (res > tol * scale) & (_inf(A.T @ yn + G.T @ zn) <= eps) & (b @ yn + h @ zn < -eps)
    return IPMResult(x, y, z, s, count, res, infeasible), (Qi, QiC, K0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _solve(Q, c, A, b, G, h, iterations, tol):
    return _forward(Q, c, A, b, G, h, iterations, tol)[0]


def _solve_fwd(Q, c, A, b, G, h, iterations, tol):
    res, (Qi, QiC, K0) = _forward(Q, c, A, b, G, h, iterations, tol)
    return res, (res, Qi, QiC, K0, A, G)


def _solve_bwd(iterations, tol, saved, cotangent):
    r"""The implicit-function-theorem derivative at the active set ``E`` (rows of
    ``C = [A; G]``, :func:`_active`) with multipliers :math:`\lambda` (Amos & Kolter 2017,
    OptNet, eq. 8): solve

    .. math::

        \begin{pmatrix} Q & E^\top \\ E & 0 \end{pmatrix}
        \begin{pmatrix} v_x \\ v_\lambda \end{pmatrix}
        = \begin{pmatrix} \bar x \\ 0 \end{pmatrix}

    by its Schur complement :math:`E Q^{-1} E^\top v_\lambda = E Q^{-1}\bar x` (inactive
    rows held at :math:`v_\lambda = 0` by an identity row), then
    :math:`\bar c = -v_x`, :math:`\bar Q = -v_x x^\top`,
    :math:`\bar C = -(\lambda v_x^\top + v_\lambda x^\top)` on active rows,
    :math:`\bar b, \bar h = v_\lambda`. Only the cotangent of ``x`` is used (the
    multipliers and diagnostics are outputs for reporting, not for differentiation)."""
    res, Qi, QiC, K0, A, G = saved
    me = A.shape[0]
    xbar = cotangent.x
    active = _active(me, res.s, res.z)
    both = active[:, None] & active[None, :]
    K = jnp.where(both, K0, jnp.eye(K0.shape[0], dtype=K0.dtype))
    rhs = jnp.where(active, QiC.T @ xbar, 0.0)
    v_lam = jnp.where(active, jnp.linalg.solve(K, rhs), 0.0)
    v_x = Qi @ xbar - QiC @ v_lam
    lam = jnp.where(active, jnp.concatenate([res.y, res.z]), 0.0)
    Cbar = -(lam[:, None] * v_x[None, :] + v_lam[:, None] * res.x[None, :])
    Cbar = jnp.where(active[:, None], Cbar, 0.0)
    del iterations, tol
    return (-jnp.outer(v_x, res.x), -v_x, Cbar[:me], v_lam[:me], Cbar[me:], v_lam[me:])


_solve.defvjp(_solve_fwd, _solve_bwd)


def solve(Q: Array, c: Array, A: Array, b: Array, G: Array, h: Array, *,
          iterations: int | None = None, tol: float | None = None) -> IPMResult:
    r"""Mehrotra predictor-corrector on one dense QP (``vmap`` it for a batch), differentiable
    in ``(Q, c, A, b, G, h)`` through the active set's KKT system (:func:`_solve_bwd`).

    Args:
      Q: ``(n, n)`` symmetric positive definite.
      c: ``(n,)``.
      A, b: ``(me, n)``, ``(me,)`` equality rows (``me = 0`` allowed; full row rank).
      G, h: ``(mi, n)``, ``(mi,)`` inequality rows (``mi = 0`` allowed; every ``h`` finite).
      iterations: the fixed iteration count (default :func:`default_iterations`).
      tol: residual below which a problem is frozen as solved (default :func:`default_tol`).

    Returns:
      An :class:`IPMResult` (gradients flow through ``x`` only).
    """
    iterations = default_iterations(c.dtype) if iterations is None else int(iterations)
    tol = default_tol(c.dtype) if tol is None else float(tol)
    return _solve(Q, c, A, b, G, h, iterations, tol)
