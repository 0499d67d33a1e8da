"""Tests for learned_dco.tasks.least_squares: LeastSquares (DCO Sec. VI-B) and ShiftedLeastSquares (Theorem 1)."""

from __future__ import annotations

import jax
import numpy as np

from learned_dco import tasks as T
from _task_helpers import fast_compiles, sample, sample_many  # noqa: F401


def test_least_squares_loss_is_paper_sum_and_optimum(x64):
    fam, mean_fam = T.LeastSquares(), T.LeastSquares(reduction="mean")
    rng = np.random.default_rng(0)
    thetas = rng.standard_normal((3, 100))
    perturbations = 1e-3 * rng.standard_normal((20, 100))

    @jax.jit
    def quantities(key, theta, dtheta):
        task = fam.sample(key)
        opt = fam.optimum(task)
        many = jax.vmap(fam.loss, (0, None))
        return (
            task,
            opt,
            fam.loss(theta, task),
            mean_fam.loss(theta, task),
            jax.grad(fam.loss)(theta, task),
            jax.grad(fam.loss)(opt, task),
            fam.loss(opt, task),
            many(opt + dtheta, task),
            fam.init_params(key, task),
            T.LeastSquares(init_scale=2.0).init_params(key, task),
        )

    for i in range(3):
        out = jax.device_get(quantities(jax.random.PRNGKey(i), thetas[i], perturbations))
        task, opt, loss, mean_loss, g0, g_opt, f_opt, f_near, init0, init2 = out
        X, y, theta = task.X, task.y, thetas[i]
        assert X.shape == (100, 100) and y.shape == (100,) and X.dtype == np.float64
        np.testing.assert_allclose(loss, np.sum((X @ theta - y) ** 2), rtol=1e-12)
        np.testing.assert_allclose(mean_loss, np.mean((X @ theta - y) ** 2), rtol=1e-12)
        np.testing.assert_allclose(opt, np.linalg.solve(X, y), rtol=1e-6, atol=1e-8)  # square X
        np.testing.assert_allclose(opt, np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-6, atol=1e-8)
        assert np.max(np.abs(g_opt)) < 1e-8 * np.max(np.abs(g0))
        assert np.all(f_near > f_opt)
        # default init is zeros; init_scale gives N(0, init_scale^2)
        np.testing.assert_array_equal(init0, np.zeros(100))
        assert 1.5 < np.std(init2) < 2.5


def test_shifted_least_squares_theorem1_quantities(x64):
    fam = T.ShiftedLeastSquares()
    X, y = (np.asarray(a) for a in fam.design())
    assert X.shape == (40, 20) and y.shape == (40,)
    # the design is shared by construction and set by data_seed
    np.testing.assert_array_equal(X, np.asarray(T.ShiftedLeastSquares().design()[0]))
    assert not np.allclose(X, np.asarray(T.ShiftedLeastSquares(data_seed=1).design()[0]))

    theta_prime = np.linalg.lstsq(X, y, rcond=None)[0]  # independent reference
    np.testing.assert_allclose(fam.base_solution(), theta_prime, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fam.hessian(), 2 * X.T @ X, rtol=1e-12)
    B_star = np.asarray(fam.one_step_optimal_B())
    np.testing.assert_allclose(B_star @ (X.T @ X), 0.5 * np.eye(20), atol=1e-10)
    l_star = np.sum((X @ theta_prime - y) ** 2)
    np.testing.assert_allclose(fam.optimal_loss(), l_star, rtol=1e-10)

    @jax.jit
    def quantities(task):
        theta0 = fam.init_params(jax.random.PRNGKey(0), task)
        opt = fam.optimum(task)
        return (
            theta0,
            fam.targets(task),
            jax.hessian(fam.loss)(theta0, task),
            opt,
            jax.grad(fam.loss)(opt, task),
            fam.loss(opt, task),
            jax.grad(fam.loss)(theta0, task),
        )

    tasks = sample_many(fam, 0, 5)
    for i in range(5):
        task = jax.tree.map(lambda v: np.asarray(v[i]), tasks)
        theta0, targets, hess, opt, g_opt, l_opt, g = (np.asarray(v) for v in quantities(task))
        np.testing.assert_array_equal(theta0, task.theta0)
        np.testing.assert_allclose(targets, y + X @ task.delta, rtol=1e-12)
        # the Hessian from autodiff is 2 X^T X for every task
        np.testing.assert_allclose(hess, 2 * X.T @ X, rtol=1e-10)
        np.testing.assert_allclose(opt, theta_prime + task.delta, rtol=1e-10, atol=1e-12)
        assert np.max(np.abs(g_opt)) < 1e-9
        np.testing.assert_allclose(l_opt, l_star, rtol=1e-9)
        # the gradient formula of the proof, and one step with B* lands on the optimum
        np.testing.assert_allclose(g, 2 * X.T @ X @ (theta0 - task.delta) - 2 * X.T @ y, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(theta0 - B_star @ g, opt, rtol=1e-9, atol=1e-9)
    # tasks differ in Delta and in the start (so the Z_i of Theorem 1 span R^p)
    Z = np.asarray(tasks.theta0 - tasks.delta) - theta_prime
    assert np.linalg.matrix_rank(Z) == 5
