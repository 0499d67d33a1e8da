"""Tests for learned_dco.tasks: each family against an independent reference.

Kept cheap (2 shared CPU cores): one jitted probe per family, reused for the vmap/loop
comparison; float64 checks use the ``x64`` fixture from conftest.py.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
import pytest

from learned_dco import tasks as T
from learned_dco.tasks import nets

# Family instances for the protocol tests. The ConvNet used for the vmap comparison is
# narrowed (vmap correctness does not depend on width); everything else is the default.
DEFAULTS = {name: cls() for name, cls in T.FAMILIES.items()}
PROBE_FAMILIES = dict(DEFAULTS, digits_convnet=T.DigitsConvNet(channels=(8, 8, 8)))
STOCHASTIC = {
    "noisy_quadratic",
    "spectral_noisy_quadratic",
    "digits_mlp",
    "digits_convnet",
    "softmax_regression",
    "logistic_regression",
    "mlp_classifier",
}


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """Skip XLA's expensive LLVM passes while this module runs.

    On a small CPU box most of this module's time is XLA compiling vmapped threefry
    (a 64-key vmap of a 3-line sampler takes seconds at full optimisation, a tenth of
    that without); the programs here are tiny, so execution speed does not matter.
    """
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@functools.lru_cache(maxsize=None)
def jitted(family, method):
    """One persistent ``jax.jit`` of ``family.<method>`` (bound methods are new objects on
    every access, so ``jax.jit(family.sample)`` inline would recompile every time)."""
    return jax.jit(getattr(family, method))


@functools.lru_cache(maxsize=None)
def task_sampler(family, num_tasks):
    """Jitted ``key -> sample_tasks(family, key, num_tasks)``."""
    return jax.jit(lambda key: T.sample_tasks(family, key, num_tasks))


def sample(family, seed):
    return jitted(family, "sample")(jax.random.PRNGKey(seed))


def sample_many(family, seed, num_tasks):
    return task_sampler(family, num_tasks)(jax.random.PRNGKey(seed))


def _probe(family):
    """key -> (task, params, batch, training loss at init, validation loss at init)."""

    def probe(key):
        k_task, k_init, k_batch = jax.random.split(key, 3)
        task = family.sample(k_task)
        params = family.init_params(k_init, task)
        batch = family.sample_batch(k_batch, task)
        return task, params, batch, family.loss(params, task, batch), family.val_loss(params, task)

    return probe


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


# --- registry -------------------------------------------------------------------------------


def test_registry_names_and_make_family():
    assert set(T.FAMILIES) == {
        "least_squares",
        "shifted_least_squares",
        "beverton_holt",
        "smooth_interpolation",
        "noisy_quadratic",
        "spectral_noisy_quadratic",
        "lasso",
        "quadratic",
        "rosenbrock",
        "digits_mlp",
        "digits_convnet",
        "softmax_regression",
        "logistic_regression",
        "mlp_classifier",
    }
    for cls in T.FAMILIES.values():
        assert issubclass(cls, T.TaskFamilyBase)
        assert cls.__doc__ and cls.source
    fam = T.make_family("least_squares", dim=7, num_samples=9)
    assert fam == T.LeastSquares(num_samples=9, dim=7)
    with pytest.raises(ValueError, match="nope"):
        T.make_family("nope")


def test_yaml_style_lists_are_normalised_and_hashable():
    # A YAML config gives lists; families must stay hashable (static jit arguments).
    fam = T.BevertonHolt(hidden=[5, 5], r0_range=[1, 2], k_range=[1, 2], n_range=[0, 10])
    assert fam == T.BevertonHolt() and hash(fam) == hash(T.BevertonHolt())
    nq = T.NoisyQuadratic(hessian=[[1.11, 0.596], [0.596, 0.486]])
    assert nq == T.NoisyQuadratic.star()
    conv = T.DigitsConvNet(channels=[32, 64, 64], strides=[2, 1, 1])
    assert hash(conv) == hash(T.DigitsConvNet())


# --- protocol: determinism, vmap == loop, info ---------------------------------------------

# Parameter counts of the default families, worked out by hand from their docstrings.
NUM_PARAMS = {
    "least_squares": 100,
    "shifted_least_squares": 20,
    "beverton_holt": (1 * 5 + 5) + (5 * 5 + 5) + (5 * 1 + 1),  # 1-5-5-1
    "smooth_interpolation": (1 * 10 + 10) + (10 * 10 + 10) + (10 * 1 + 1),  # 1-10-10-1
    "noisy_quadratic": 2,
    "spectral_noisy_quadratic": 10,
    "lasso": 40,
    "quadratic": 10,
    "rosenbrock": 2,
    "digits_mlp": (64 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10),
    "digits_convnet": (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 64 + 64) + (64 * 10 + 10),
    "softmax_regression": 64 * 10 + 10,
    "logistic_regression": 64 * 1 + 1,
    "mlp_classifier": (64 * 32 + 32) + (32 * 10 + 10),
}
HAS_OPTIMUM = {
    "least_squares",
    "shifted_least_squares",
    "noisy_quadratic",
    "spectral_noisy_quadratic",
    "lasso",
    "quadratic",
    "rosenbrock",
}


@pytest.mark.parametrize("name", sorted(PROBE_FAMILIES))
def test_deterministic_and_vmap_matches_loop(name):
    family = PROBE_FAMILIES[name]
    probe = _probe(family)
    single = jax.jit(probe)
    keys = jax.random.split(jax.random.PRNGKey(42), 64)
    batched = jax.device_get(jax.jit(jax.vmap(probe))(keys))

    first = jax.device_get(single(keys[0]))
    assert _leaves_equal(first, single(keys[0])), "same key must give the same task"
    assert not _leaves_equal(first[0], single(keys[1])[0]), "different keys must differ"
    assert (first[2] is None) == (name not in STOCHASTIC)

    for i in range(keys.shape[0]):
        out = jax.device_get(single(keys[i]))
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(jax.tree.map(lambda x: x[i], batched))):
            assert a.shape == b.shape and a.dtype == b.dtype
            if np.issubdtype(a.dtype, np.integer):
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)
    loss, val = batched[3], batched[4]
    assert loss.shape == val.shape == (64,)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(val))
    # info.num_params is the size of the ravelled params
    assert family.info.num_params == ravel_pytree(first[1])[0].size


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_info(name):
    family = DEFAULTS[name]
    info = family.info
    assert info.num_params == NUM_PARAMS[name]
    assert info.name == type(family).__name__ and info.source
    assert info.stochastic == (name in STOCHASTIC)
    assert info.has_optimum == (name in HAS_OPTIMUM)
    if not info.has_optimum:
        with pytest.raises(NotImplementedError):
            family.optimum(jax.eval_shape(family.sample, jax.random.PRNGKey(0)))
    else:  # optimum has the params' structure and shapes (abstract evaluation only)
        task = jax.eval_shape(family.sample, jax.random.PRNGKey(0))
        params = jax.eval_shape(family.init_params, jax.random.PRNGKey(0), task)
        opt = jax.eval_shape(family.optimum, task)
        assert jax.tree.structure(opt) == jax.tree.structure(params)
        assert [o.shape for o in jax.tree.leaves(opt)] == [p.shape for p in jax.tree.leaves(params)]


# --- bad input ----------------------------------------------------------------------------

BAD = [
    (T.LeastSquares, dict(dim=-1), "dim"),
    (T.LeastSquares, dict(dim=2.5), "dim"),
    (T.LeastSquares, dict(num_samples=0), "num_samples"),
    (T.LeastSquares, dict(reduction="max"), "reduction"),
    (T.LeastSquares, dict(init_scale=-1.0), "init_scale"),
    (T.ShiftedLeastSquares, dict(num_samples=10, dim=20), "num_samples"),
    (T.ShiftedLeastSquares, dict(shift_scale=-1.0), "shift_scale"),
    (T.ShiftedLeastSquares, dict(data_seed=-3), "data_seed"),
    (T.BevertonHolt, dict(noise_var=-0.1), "noise_var"),
    (T.BevertonHolt, dict(num_train=-5), "num_train"),
    (T.BevertonHolt, dict(r0_range=(2.0, 1.0)), "r0_range"),
    (T.BevertonHolt, dict(k_range=(0.0, 1.0)), "k_range"),
    (T.BevertonHolt, dict(hidden=(5, -5)), "hidden"),
    (T.BevertonHolt, dict(activation="swish9"), "activation"),
    (T.SmoothInterpolation, dict(x_range=(1.0,)), "x_range"),
    (T.SmoothInterpolation, dict(num_val=0), "num_val"),
    (T.SmoothInterpolation, dict(c_range=(-1.0, 1.0)), "c_range"),
    (T.NoisyQuadratic, dict(hessian=((1.0, 2.0), (3.0, 4.0))), "hessian"),
    (T.NoisyQuadratic, dict(hessian=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))), "hessian"),
    (T.NoisyQuadratic, dict(hessian=((1.0, 0.0), (0.0, -1.0))), "hessian"),
    (T.NoisyQuadratic, dict(init_var=-10.0), "init_var"),
    (T.NoisyQuadratic, dict(noise_std=-1.0), "noise_std"),
    (T.SpectralNoisyQuadratic, dict(dim=0), "dim"),
    (T.SpectralNoisyQuadratic, dict(spectrum="flat"), "spectrum"),
    (T.SpectralNoisyQuadratic, dict(eig_min=2.0, eig_max=1.0), "eig_min"),
    (T.Lasso, dict(lam=-0.005), "lam"),
    (T.Lasso, dict(sparsity=1.5), "sparsity"),
    (T.Lasso, dict(dim=-1), "dim"),
    (T.Lasso, dict(shift=float("nan")), "shift"),
    (T.Quadratic, dict(dim=0), "dim"),
    (T.Rosenbrock, dict(dim=1), "dim"),
    (T.Rosenbrock, dict(curvature=0.0), "curvature"),
    (T.DigitsMLP, dict(n_val=0), "n_val"),
    (T.DigitsMLP, dict(n_val=1797), "n_val"),
    (T.DigitsMLP, dict(batch_size=-1), "batch_size"),
    (T.DigitsMLP, dict(hidden=()), "hidden"),
    (T.DigitsConvNet, dict(strides=(2, 1)), "strides"),
    (T.DigitsConvNet, dict(pooling="max"), "pooling"),
    (T.DigitsConvNet, dict(split_seed=-1), "split_seed"),
]


@pytest.mark.parametrize("cls, kwargs, field", BAD, ids=[f"{c.__name__}-{f}" for c, _, f in BAD])
def test_bad_input_names_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


# --- least squares ----------------------------------------------------------------------------


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


# --- M-L2O families -------------------------------------------------------------------------


def test_rosenbrock_minimum_at_ones():
    rng = np.random.default_rng(0)
    for dim in (2, 5):
        fam = T.Rosenbrock(dim=dim)
        task = T.RosenbrockTask(x0=jnp.zeros(dim))
        opt = fam.optimum(task)
        np.testing.assert_array_equal(opt, np.ones(dim))
        assert float(fam.loss(opt, task)) == 0.0
        assert float(jnp.max(jnp.abs(jax.grad(fam.loss)(opt, task)))) == 0.0
        xs = rng.standard_normal((10, dim))
        values = np.asarray(jax.vmap(fam.loss, (0, None))(jnp.asarray(xs, jnp.float32), task))
        for x, value in zip(xs, values):
            ref = sum((1 - x[i]) ** 2 + 100 * (x[i + 1] - x[i] ** 2) ** 2 for i in range(dim - 1))
            np.testing.assert_allclose(value, ref, rtol=1e-5)
        near = np.asarray(jax.vmap(fam.loss, (0, None))(opt + 1e-2 * jnp.asarray(xs, jnp.float32), task))
        assert np.all(near > 0.0)
        np.testing.assert_array_equal(fam.init_params(jax.random.PRNGKey(0), task), task.x0)
    # shift moves the start distribution, not the objective
    x0 = sample_many(T.Rosenbrock(shift=3.0), 0, 400).x0
    assert abs(float(jnp.mean(x0)) - 3.0) < 0.2 and abs(float(jnp.std(x0)) - 1.0) < 0.1


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


# --- noisy quadratic ----------------------------------------------------------------------------


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


# --- DCO regression families ------------------------------------------------------------------


def test_beverton_holt_data():
    fam = T.BevertonHolt()
    draw = jax.jit(lambda key: [T.sample_tasks(f, key, 16) for f in (fam, T.BevertonHolt(noisy_val=True))])
    tasks, noisy = draw(jax.random.PRNGKey(0))
    assert tasks.x_train.shape == tasks.y_train.shape == (16, 500, 1)
    assert tasks.x_val.shape == tasks.y_val.shape == (16, 100, 1)
    r0 = np.asarray(tasks.r0, np.float64)[:, None, None]
    k = np.asarray(tasks.k, np.float64)[:, None, None]
    assert np.all((r0 >= 1) & (r0 <= 2)) and np.all((k >= 1) & (k <= 2))
    x_tr, x_va = np.asarray(tasks.x_train, np.float64), np.asarray(tasks.x_val, np.float64)
    assert x_tr.min() >= 0.0 and x_tr.max() <= 10.0 and x_tr.max() > 9.0
    # validation targets are the clean map; training targets carry N(0, 0.1) noise (variance)
    np.testing.assert_allclose(tasks.y_val, r0 * x_va / (k + x_va), rtol=1e-5)
    resid = np.asarray(tasks.y_train, np.float64) - r0 * x_tr / (k + x_tr)
    assert abs(resid.var() - 0.1) < 0.01 and abs(resid.mean()) < 0.02  # 8000 draws
    np.testing.assert_array_equal(noisy.y_train, tasks.y_train)
    assert abs(np.var(np.asarray(noisy.y_val - tasks.y_val, np.float64)) - 0.1) < 0.03
    # the MLP is 1-5-5-1 and the losses are MSEs
    task = jax.tree.map(lambda v: v[0], tasks)

    @jax.jit
    def evaluate(key):
        params = fam.init_params(key, task)
        return params, fam.val_loss(params, task), fam.clean_val_loss(params, task)

    params, val, clean_val = jax.device_get(evaluate(jax.random.PRNGKey(2)))
    (w1, b1), (w2, b2), (w3, b3) = ((layer["w"], layer["b"]) for layer in params["layers"])
    assert [w1.shape, w2.shape, w3.shape] == [(1, 5), (5, 5), (5, 1)]
    pred = np.tanh(np.tanh(x_va[0] @ w1 + b1) @ w2 + b2) @ w3 + b3  # independent forward pass
    np.testing.assert_allclose(val, np.mean((pred - np.asarray(task.y_val)) ** 2), rtol=1e-5)
    np.testing.assert_allclose(clean_val, val, rtol=1e-6)


def test_smooth_interpolation_data():
    fam = T.SmoothInterpolation()
    tasks = sample_many(fam, 0, 8)
    assert tasks.x_train.shape == (8, 500, 1) and tasks.x_val.shape == (8, 100, 1)
    for coef in (tasks.a, tasks.b, tasks.c):
        assert np.all((coef >= 0) & (coef <= 1))
    x = np.asarray(tasks.x_train, np.float64)
    assert x.min() >= -5.0 and x.max() <= 5.0 and x.min() < -4.0 and x.max() > 4.0
    a, b, c = (np.asarray(v, np.float64)[:, None, None] for v in (tasks.a, tasks.b, tasks.c))
    np.testing.assert_allclose(tasks.y_train, a * np.cos(b * x) * np.exp(-c * np.abs(x)), atol=1e-6)
    task = jax.tree.map(lambda v: v[0], tasks)
    params = fam.init_params(jax.random.PRNGKey(1), task)
    assert [layer["w"].shape for layer in params["layers"]] == [(1, 10), (10, 10), (10, 1)]
    pred = fam.predict(params, task.x_train)
    np.testing.assert_allclose(fam.loss(params, task), np.mean((pred - task.y_train) ** 2), rtol=1e-6)


# --- digits -----------------------------------------------------------------------------------


def test_bundled_digits_file():
    images, labels = T.load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(np.round(images * 16), images * 16)  # counts 0..16 / 16
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 170 and set(np.unique(labels)) == set(range(10))
    raw = (importlib.resources.files("learned_dco.tasks") / "data" / "digits.npz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == (
        "b2dab7b501728c22e9119ad76740b2e17c77a231e42d1e592380d90886f1a05e"
    )


@pytest.mark.parametrize("cls", [T.DigitsMLP, T.DigitsConvNet])
def test_digits_split_and_batches(cls):
    fam = cls(channels=(4, 4, 4)) if cls is T.DigitsConvNet else cls()
    tasks = sample_many(fam, 0, 3)
    assert tasks.train_idx.shape == (3, 1500) and tasks.val_idx.shape == (3, 297)
    for i in range(3):
        tr, va = np.asarray(tasks.train_idx[i]), np.asarray(tasks.val_idx[i])
        assert len(np.intersect1d(tr, va)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(1797))
    assert not np.array_equal(tasks.val_idx[0], tasks.val_idx[1])  # per-task split
    fixed = sample_many(cls(split_seed=7), 0, 2)
    np.testing.assert_array_equal(fixed.val_idx[0], fixed.val_idx[1])

    @jax.jit
    def probe(task, key):
        k_init, k_batch = jax.random.split(key)
        params = fam.init_params(k_init, task)
        batch = fam.sample_batch(k_batch, task)
        logits = fam._logits(params, jnp.asarray(T.load_digits()[0])[batch])
        return batch, logits, fam.loss(params, task, batch), fam.accuracy(params, task, "train")

    task = jax.tree.map(lambda v: v[0], tasks)
    batch, logits, loss, acc = (np.asarray(v) for v in probe(task, jax.random.PRNGKey(1)))
    assert batch.shape == (128,) and len(np.unique(batch)) == 128  # without replacement
    assert np.all(np.isin(batch, np.asarray(task.train_idx)))
    # loss on a batch is the cross-entropy of those examples (independent log-softmax)
    labels = T.load_digits()[1]
    logits = logits.astype(np.float64)
    assert logits.shape == (128, 10)
    lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
    np.testing.assert_allclose(loss, np.mean(lse - logits[np.arange(128), labels[batch]]), rtol=1e-5)
    assert 0.0 <= acc <= 1.0


def test_digits_mlp_learns():
    fam = T.DigitsMLP()
    task = sample(fam, 0)
    opt = optax.adam(1e-3)

    @jax.jit
    def train(key):
        params0 = fam.init_params(key, task)

        def step(carry, k):
            params, state = carry
            grads = jax.grad(fam.loss)(params, task, fam.sample_batch(k, task))
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        keys = jax.random.split(key, 300)
        (params, _), _ = jax.lax.scan(step, (params0, opt.init(params0)), keys)
        return [(fam.accuracy(p, task, "val"), fam.val_loss(p, task)) for p in (params0, params)]

    (acc0, val0), (acc, val) = jax.device_get(train(jax.random.PRNGKey(1)))
    assert acc0 < 0.35
    assert acc > 0.9, acc  # chance is 0.1
    assert val < 0.5 * val0


def test_digits_convnet_shapes_and_learns():
    fam = T.DigitsConvNet()
    params = jax.eval_shape(fam.init_params, jax.random.PRNGKey(0), None)
    assert [c["w"].shape for c in params["conv"]] == [(3, 3, 1, 32), (3, 3, 32, 64), (3, 3, 64, 64)]
    assert params["head"]["w"].shape == (64, 10)
    flat = jax.eval_shape(T.DigitsConvNet(pooling="flatten").init_params, jax.random.PRNGKey(0), None)
    assert flat["head"]["w"].shape == (4 * 4 * 64, 10)
    # a few Adam steps (python loop: XLA:CPU runs convolutions inside lax.scan slowly)
    task = sample(fam, 0)
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, state, key):
        grads = jax.grad(fam.loss)(params, task, fam.sample_batch(key, task))
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = fam.init_params(jax.random.PRNGKey(1), task)
    state = opt.init(params)
    for key in jax.random.split(jax.random.PRNGKey(2), 40):
        params, state = step(params, state, key)
    assert float(jax.jit(fam.accuracy)(params, task)) > 0.6  # chance is 0.1


def test_nets_shapes():
    params = nets.mlp_init(jax.random.PRNGKey(0), (3, 4, 2))
    assert nets.mlp_apply(params, jnp.ones((5, 3))).shape == (5, 2)
    assert nets.conv_output_size(8, (2, 1, 1)) == 4 and nets.conv_output_size(7, (2, 2)) == 2
    w = nets.mlp_init(jax.random.PRNGKey(0), (400, 400), gain=2.0)["layers"][0]["w"]
    assert abs(float(jnp.var(w)) * 400 / 2.0 - 1.0) < 0.05  # He variance 2 / fan_in
