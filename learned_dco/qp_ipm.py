r"""A batched primal-dual interior-point QP solver with a fixed iteration count.

Solves the dense convex QP

.. math::

    \min_x \tfrac12 x^\top Q x + c^\top x \quad\text{s.t.}\quad Ax = b,\ Gx \le h

(``Q`` symmetric positive definite, ``p`` up to a few hundred) by Mehrotra's
predictor-corrector method (Mehrotra 1992; Nocedal & Wright, *Numerical Optimization*,
2nd ed., section 16.6; Wright, *Primal-Dual Interior-Point Methods*, ch. 10) on the
slack form :math:`Gx + s = h`, :math:`s \ge 0`, with multipliers ``y`` (equalities) and
``z \ge 0`` (inequalities). One Newton system per iteration

.. math::

    \begin{pmatrix} Q & A^\top & G^\top \\ A & 0 & 0 \\ G & 0 & -Z^{-1}S \end{pmatrix}
    \begin{pmatrix} \Delta x \\ \Delta y \\ \Delta z \end{pmatrix}
    = \ldots

is reduced to :math:`H = Q + G^\top (Z S^{-1}) G` (Cholesky) and the Schur complement
:math:`A H^{-1} A^\top` of the equality rows (small), factored once and used for both the
predictor (affine) and the corrector direction, whose centring parameter is
:math:`\sigma = (\mu_\text{aff}/\mu)^3`.

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

Only arrays here; the QP layer (:mod:`learned_dco.qp`, the ``IPM`` value) stacks boxes into
``G``, materialises the curvature operator and adds implicit differentiation.
"""

from __future__ import annotations

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


def solve(Q: Array, c: Array, A: Array, b: Array, G: Array, h: Array, *,
          iterations: int | None = None, tol: float | None = None) -> IPMResult:
    r"""Mehrotra predictor-corrector on one dense QP (``vmap`` it for a batch).

    Args:
      Q: ``(n, n)`` symmetric positive definite.
      c: ``(n,)``.
      A, b: ``(me, n)``, ``(me,)`` equality rows (``me = 0`` allowed).
      G, h: ``(mi, n)``, ``(mi,)`` inequality rows (``mi = 0`` allowed; every ``h`` finite).
      iterations: the fixed iteration count (default :func:`default_iterations`).
      tol: residual below which a problem is frozen as solved (default :func:`default_tol`).

    Returns:
      An :class:`IPMResult`.
    """
    dtype = c.dtype
    n, me, mi = c.shape[0], A.shape[0], G.shape[0]
    iterations = default_iterations(dtype) if iterations is None else iterations
    tol = default_tol(dtype) if tol is None else tol
    scale = 1.0 + jnp.maximum(_inf(c), jnp.maximum(_inf(b), _inf(h)))
    cho = jax.scipy.linalg

    def factor(w):
        H = Q + G.T @ (w[:, None] * G)
        L = cho.cho_factor(H)
        if me == 0:
            return L, None, None
        HiA = cho.cho_solve(L, A.T)
        S = A @ HiA
        return L, HiA, cho.cho_factor(S)

    def kkt_solve(fac, f, g):
        """``[H A'; A 0] [dx; dy] = [f; g]`` by the Schur complement of the equality rows."""
        L, HiA, Sf = fac
        Hif = cho.cho_solve(L, f)
        if me == 0:
            return Hif, jnp.zeros((0,), dtype)
        dy = cho.cho_solve(Sf, A @ Hif - g)
        return Hif - HiA @ dy, dy

    # Starting point: the KKT system with unit weights (the equality-constrained least
    # squares point of Q, G), slacks and multipliers shifted into the positive orthant.
    x0, y0 = kkt_solve(factor(jnp.ones((mi,), dtype)), -c + G.T @ h, b)
    r0 = h - G @ x0

    def shift(v):
        return v + jnp.maximum(0.0, 1.0 - jnp.min(v, initial=1.0))

    s0, z0 = shift(r0), shift(-r0)

    def measure(x, s, z, y):
        rd, rp, ri = _residuals(Q, c, A, b, G, h, x, s, z, y)
        mu = jnp.sum(s * z) / max(mi, 1)
        comp = jnp.max(jnp.minimum(s, z), initial=0.0)  # 0 iff complementary (s, z >= 0)
        return rd, rp, ri, mu, jnp.maximum(jnp.maximum(_inf(rd), _inf(rp)), jnp.maximum(_inf(ri), comp))

    def direction(fac, rd, rp, ri, s, z, rc):
        # Z ds + S dz = rc, G dx + ds = -ri  =>  dz = (rc + z ri + z G dx) / s
        f = -rd - G.T @ ((rc + z * ri) / s)
        dx, dy = kkt_solve(fac, f, -rp)
        ds = -ri - G @ dx
        dz = (rc + z * ri + z * (G @ dx)) / s
        return dx, ds, dz, dy

    def body(_, state):
        x, s, z, y, count = state
        rd, rp, ri, mu, res = measure(x, s, z, y)
        done = res <= tol * scale
        fac = factor(z / s)
        dx, ds, dz, dy = direction(fac, rd, rp, ri, s, z, -s * z)
        a_aff = jnp.minimum(_max_step(s, ds), _max_step(z, dz))
        mu_aff = jnp.sum((s + a_aff * ds) * (z + a_aff * dz)) / max(mi, 1)
        sigma = jnp.clip(mu_aff / jnp.maximum(mu, jnp.finfo(dtype).tiny), 0.0, 1.0) ** 3
        dx, ds, dz, dy = direction(fac, rd, rp, ri, s, z, -s * z + sigma * mu - ds * dz)
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
    return IPMResult(x, y, z, s, count, res, infeasible)
