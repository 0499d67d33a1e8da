"""Tests for learned_dco.tasks.quadratic: Quadratic, NoisyQuadratic (STAR), SpectralNoisyQuadratic."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_dco import tasks as T
from _task_helpers import fast_compiles, sample, sample_many  # noqa: F401


def test_quadratic_optimum(x64):
    fam = T.Quadratic()
    tasks = sample_many(fam, 0, 3)
    opts = jax.vmap(fam.optimum)(tasks)
    rng = np.random.default_rng(0)
    for i in range(3):
        task = jax.tree.map(lambda v: v[i], tasks)
        W, y = np.asarray(task.W), np.asarray(task.y)
        x = rng.standard_normal(10)
        np.testing.assert_allclose(fam.loss(x, task), np.sum((W @ x - y) ** 2), rtol=1e-12)
        opt = np.asarray(opts[i])
        np.testing.assert_allclose(opt, np.linalg.solve(W, y), rtol=1e-7, atol=1e-9)
        assert float(fam.loss(opt, task)) < 1e-16 * max(1.0, float(np.sum(y**2)))




def test_noisy_quadratic_star_setup():
    fam = T.NoisyQuadratic.star()
    tasks = sample_many(fam, 1, 4000)
    task = jax.tree.map(lambda v: v[0], tasks)
    np.testing.assert_allclose(task.hessian, [[1.11, 0.596], [0.596, 0.486]], rtol=1e-7)
    np.testing.assert_allclose(task.noise_sqrt, np.eye(2))
    np.testing.assert_array_equal(fam.init_params(jax.random.PRNGKey(5), task), task.phi0)
    # phi_0 ~ N(0, 10 I): variance 10 per coordinate
    phi0 = np.asarray(tasks.phi0, np.float64)
    assert abs(phi0.var() / 10.0 - 1.0) < 0.06  # 8000 draws: sd of the ratio ~ 0.016
    assert abs(np.mean(phi0[:, 0] * phi0[:, 1])) < 0.6  # independent coordinates


@pytest.mark.parametrize(
    "family",
    [T.NoisyQuadratic.star(), T.SpectralNoisyQuadratic(dim=6, rotate=True, noise_std=0.7)],
    ids=["star", "spectral"],
)
def test_noisy_quadratic_expected_loss(family):
    n = 20_000

    @jax.jit
    def draws(key):
        k_task, k_noise = jax.random.split(key)
        task = family.sample(k_task)
        xis = jax.vmap(family.sample_batch, (0, None))(jax.random.split(k_noise, n), task)
        phi = task.phi0
        losses = jax.vmap(family.loss, (None, None, 0))(phi, task, xis)
        opt = family.optimum(task)
        return task, xis, losses, family.loss(phi, task), family.val_loss(phi, task), (
            opt,
            jax.grad(family.loss)(opt, task),
            family.loss(opt, task),
        )

    task, xis, losses, expected, val, (opt, g_opt, l_opt) = jax.device_get(draws(jax.random.PRNGKey(0)))
    H, S = np.asarray(task.hessian, np.float64), np.asarray(task.noise_sqrt, np.float64)
    p = np.asarray(task.phi0, np.float64)
    closed = 0.5 * p @ H @ p + 0.5 * np.trace(H @ S @ S.T)  # independent closed form
    np.testing.assert_allclose(expected, closed, rtol=1e-5)
    np.testing.assert_allclose(val, closed, rtol=1e-5)
    losses = np.asarray(losses, np.float64)
    stderr = losses.std() / math.sqrt(n)
    assert abs(losses.mean() - closed) < 5 * stderr
    # the noise has the documented covariance
    cov = np.cov(np.asarray(xis, np.float64).T)
    np.testing.assert_allclose(cov, S @ S.T, atol=0.05 * max(1.0, np.max(S @ S.T)))
    # phi = 0 minimises the expected loss: zero gradient, minimum 1/2 tr(H Sigma)
    np.testing.assert_array_equal(opt, np.zeros_like(p))
    assert np.max(np.abs(g_opt)) == 0.0
    np.testing.assert_allclose(l_opt, 0.5 * np.trace(H @ S @ S.T), rtol=1e-5)
    assert l_opt < expected


def test_spectral_noisy_quadratic_spectra():
    power = T.SpectralNoisyQuadratic(dim=8, alpha=2.0, eig_max=3.0).eigenvalues()
    np.testing.assert_allclose(power, 3.0 * np.arange(1, 9, dtype=float) ** -2.0, rtol=1e-6)
    logspace = T.SpectralNoisyQuadratic(dim=5, spectrum="logspace", eig_min=1e-3, eig_max=1.0)
    np.testing.assert_allclose(logspace.eigenvalues(), np.logspace(0, -3, 5), rtol=1e-5)
    default = sample(T.SpectralNoisyQuadratic(dim=8), 0).hessian
    np.testing.assert_allclose(default, np.diag(1.0 / np.arange(1, 9)), rtol=1e-6)
    rot = sample(T.SpectralNoisyQuadratic(dim=8, rotate=True), 0).hessian
    assert np.max(np.abs(rot - np.diag(np.diag(rot)))) > 1e-2  # not axis-aligned
    np.testing.assert_allclose(np.linalg.eigvalsh(rot), np.sort(1.0 / np.arange(1, 9)), rtol=1e-4, atol=1e-5)
    lu = T.SpectralNoisyQuadratic(dim=50, spectrum="loguniform", eig_min=1e-2, eig_max=1.0)
    h = np.asarray(jax.vmap(jnp.diag)(sample_many(lu, 1, 2).hessian))
    assert np.all((h >= 1e-2 * (1 - 1e-6)) & (h <= 1.0 + 1e-6)) and not np.allclose(h[0], h[1])
