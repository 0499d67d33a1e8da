"""Tests for learned_dco.tasks.lasso (and the shift knob it shares with tasks.quadratic)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco import tasks as T
from _task_helpers import fast_compiles, sample_many  # noqa: F401


def _ista_reference(A, b, lam, tol=1e-14, max_iters=400_000):
    """Plain ISTA (no momentum) in float64, run until the iterates stop moving."""
    L = jnp.linalg.norm(A, 2) ** 2

    def cond(s):
        return (s[2] < max_iters) & (s[1] > tol)

    def body(s):
        x = s[0]
        z = x - A.T @ (A @ x - b) / L
        x_new = jnp.sign(z) * jnp.maximum(jnp.abs(z) - lam / L, 0.0)
        return x_new, jnp.max(jnp.abs(x_new - x)), s[2] + 1

    x, _, iters = jax.lax.while_loop(cond, body, (jnp.zeros(A.shape[1]), jnp.inf, 0))
    return x, iters


def _check_lasso_kkt(x, A, b, lam, tol):
    g = A.T @ (A @ x - b)  # gradient of the smooth part
    zero = x == 0
    assert np.all(np.abs(g[zero]) <= lam + tol)
    np.testing.assert_allclose(g[~zero], -lam * np.sign(x[~zero]), atol=tol)


def test_lasso_optimum_matches_ista_and_kkt(x64):
    fam = T.Lasso()
    tasks = sample_many(fam, 0, 4)
    assert tasks.A.shape == (4, 20, 40) and tasks.b.shape == (4, 20)
    ista = jax.jit(jax.vmap(lambda A, b: _ista_reference(A, b, fam.lam)))
    ref, iters = ista(tasks.A, tasks.b)
    assert np.all(np.asarray(iters) < 400_000), "ISTA reference did not converge"
    opt = jax.jit(jax.vmap(fam.optimum))(tasks)
    losses = jax.vmap(fam.loss)(opt, tasks)
    # autodiff through the l1 term gives sign(x): nothing from the penalty at x = 0
    g_zero = jax.vmap(jax.grad(fam.loss))(jnp.zeros((4, 40)), tasks)
    np.testing.assert_allclose(g_zero, -jnp.einsum("tij,ti->tj", tasks.A, tasks.b), rtol=1e-12, atol=1e-15)
    g_pos = jax.vmap(jax.grad(fam.loss))(jnp.full((4, 40), 1e-3), tasks)
    smooth = jnp.einsum("tij,ti->tj", tasks.A, jnp.einsum("tij,j->ti", tasks.A, jnp.full(40, 1e-3)) - tasks.b)
    np.testing.assert_allclose(g_pos, smooth + fam.lam, rtol=1e-12, atol=1e-15)
    for i in range(4):
        A, b = np.asarray(tasks.A[i]), np.asarray(tasks.b[i])
        x_ref, x = np.asarray(ref[i]), np.asarray(opt[i])
        _check_lasso_kkt(x_ref, A, b, fam.lam, 1e-9)
        _check_lasso_kkt(x, A, b, fam.lam, 1e-9)
        np.testing.assert_allclose(x, x_ref, atol=1e-8)
        obj = 0.5 * np.sum((A @ x - b) ** 2) + fam.lam * np.sum(np.abs(x))
        np.testing.assert_allclose(losses[i], obj, rtol=1e-12)
        assert np.count_nonzero(x) < 40  # the l1 term is active
    # b comes from the sparse ground truth: ~10% non-zeros, small residual
    x_true = np.asarray(tasks.x_true)
    assert 0 < np.count_nonzero(x_true) < 0.3 * x_true.size
    resid = np.asarray(tasks.b) - np.einsum("tij,tj->ti", np.asarray(tasks.A), x_true)
    assert 0 < np.std(resid) < 0.02  # noise_std = 0.01


def test_lasso_and_quadratic_shift_scale_the_matrix():
    @jax.jit
    def draw(key):
        lasso = [T.sample_tasks(T.Lasso(shift=sh), key, 50) for sh in (0.0, math.log(0.1))]
        quad = [T.sample_tasks(T.Quadratic(shift=sh), key, 2) for sh in (0.0, math.log(2.0))]
        return lasso, quad

    (base, shifted), (qb, qs) = draw(jax.random.PRNGKey(3))
    np.testing.assert_allclose(shifted.A, 0.1 * base.A, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(shifted.x_true, base.x_true)
    # column norms of A are ~1 at shift 0 (the documented N(0, 1/m) scaling)
    assert abs(float(jnp.mean(jnp.sum(base.A**2, axis=1))) - 1.0) < 0.05
    np.testing.assert_allclose(qs.W, 2.0 * qb.W, rtol=1e-6)
    np.testing.assert_array_equal(qs.y, qb.y)
