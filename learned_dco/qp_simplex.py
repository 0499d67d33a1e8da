r"""The exact solve of a diagonal-curvature QP over a shifted simplex.

.. math::

    \min_d \tfrac12 d^\top \mathrm{diag}(q)\, d + c^\top d
    \quad\text{s.t.}\quad \mathbf 1^\top d = b,\ d \ge lo

(what a DCO step over :math:`\{\theta \ge 0,\ \mathbf 1^\top\theta = 1\}` becomes in the step
:math:`d = \theta - \theta_t`). With :math:`y = d - lo` the KKT conditions give
:math:`y_i = (z_i - \nu/q_i)_+`, :math:`z = -c/q - lo`, and the multiplier :math:`\nu` of the
sum follows from sorting the breakpoints :math:`q_i z_i` (the weighted form of the sort-based
simplex projection; Held, Wolfe & Crowder 1974; Duchi et al. 2008):
:math:`\nu = (\sum_{i\in S} z_i - r)/(\sum_{i\in S} 1/q_i)` with
:math:`r = b - \mathbf 1^\top lo` and :math:`S` the largest prefix of the sorted breakpoints
consistent with it. ``O(n log n)``. The active set is held fixed under differentiation, so
``jax.grad`` gives the exact active-set (KKT) derivative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned_dco.types import Array


def solve_simplex(q: Array, c: Array, lo: Array, b: Array) -> tuple[Array, Array]:
    """``(d, dual_residual)`` for the flat problem above: ``q``, ``c``, ``lo`` of shape
    ``(n,)`` (``q > 0``), ``b`` a scalar. ``dual_residual`` is the largest violation of
    stationarity (0 on the support, :math:`\\ge 0` off it), not differentiated."""
    r = b - jnp.sum(lo)
    z = -c / q - lo
    order = jnp.argsort(-jax.lax.stop_gradient(q * z))
    zs, inv_q = z[order], (1.0 / q)[order]
    nus = (jnp.cumsum(zs) - r) / jnp.cumsum(inv_q)
    valid = zs - nus * inv_q > 0  # the k-th breakpoint stays positive at nu_k
    k = jnp.max(jnp.where(valid, jnp.arange(z.size), 0))
    mask = jnp.zeros(z.shape, bool).at[order].set(jnp.arange(z.size) <= jax.lax.stop_gradient(k))
    nu = (jnp.sum(jnp.where(mask, z, 0.0)) - r) / jnp.sum(jnp.where(mask, 1.0 / q, 0.0))
    d = jnp.where(mask, z - nu / q, 0.0) + lo
    grad = q * d + c + nu
    dual = jnp.max(jnp.where(mask, jnp.abs(grad), jnp.maximum(-grad, 0.0)))
    return d, jax.lax.stop_gradient(dual)


__all__ = ["solve_simplex"]
