"""MetaMD: the Kronecker mirror-descent step against its closed form and a dense solve;
meta-gradients through the QP layer against an explicit unroll and finite differences; the
regret-bound meta-objective against an explicit computation; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import learned_dco as ldco
from learned_dco import meta as M
from learned_dco import qp, tasks
from learned_dco.optimizers.mirror import KroneckerRaw, spd_from_raw


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """Skip XLA's expensive optimisation passes: the programs here are tiny, compile time
    dominates (as in tests/test_tasks.py)."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _spd(key, n, dtype):
    a = jax.random.normal(key, (n, n), dtype)
    return a @ a.T / n + 0.5 * jnp.eye(n, dtype=dtype)


def _problem(dtype):
    k = jax.random.split(jax.random.PRNGKey(0), 8)
    params = {
        "w": jax.random.normal(k[0], (3, 4), dtype),
        "conv": jax.random.normal(k[1], (2, 2, 3), dtype),  # matrix view (4, 3)
        "b": jax.random.normal(k[2], (4,), dtype),
        "s": jnp.asarray(0.3, dtype),
    }
    factors = {
        "w": qp.Kronecker(_spd(k[3], 3, dtype), _spd(k[4], 4, dtype)),
        "conv": qp.Kronecker(_spd(k[5], 4, dtype), _spd(k[6], 3, dtype)),
        "b": jnp.linspace(0.5, 2.0, 4, dtype=dtype),
        "s": qp.Diagonal(jnp.asarray(1.7, dtype)),
    }
    return params, factors


def _loss(params):
    flat = ravel_pytree(params)[0]
    weights = jnp.linspace(0.5, 2.0, flat.size, dtype=flat.dtype)
    return 0.5 * jnp.sum(weights * flat**2) + jnp.sum(jnp.sin(flat)) + 0.1 * jnp.sum(flat) ** 2


def test_update_equals_closed_form_and_dense_kronecker_solve(x64):
    params, factors = _problem(jnp.float64)
    eta = 0.3
    tx = ldco.metamd_transform(factors, eta)
    g = jax.grad(_loss)(params)
    updates, state = jax.jit(tx.update)(g, tx.init(params), params)
    # Closed form: -eta A^{-1} G B^{-1} on each weight's matrix view, -eta g / d elsewhere.
    for name, shape in (("w", (3, 4)), ("conv", (4, 3))):
        A, B = factors[name].left, factors[name].right
        G = g[name].reshape(shape)
        expected = -eta * np.linalg.solve(A, G) @ np.linalg.inv(B)
        np.testing.assert_allclose(updates[name].reshape(shape), expected, rtol=1e-10, atol=1e-12)
        # Dense (A kron B) solve on the row-major ravelled matrix.
        dense = -eta * np.linalg.solve(np.kron(A, B), np.ravel(G))
        np.testing.assert_allclose(np.ravel(updates[name]), dense, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(updates["b"], -eta * g["b"] / factors["b"], rtol=1e-12)
    np.testing.assert_allclose(updates["s"], -eta * g["s"] / 1.7, rtol=1e-12)
    assert float(state.inner_state.qp_residual) < 1e-10


def test_learned_metamd_starts_as_gd_and_is_positive_definite():
    params, _ = _problem(jnp.float32)
    lopt = ldco.MetaMD(learning_rate=0.05)
    meta = lopt.init(jax.random.PRNGKey(0), params)
    g = jax.grad(_loss)(params)
    tx = lopt.opt_fn(meta)
    updates, _ = tx.update(g, tx.init(params), params)
    for u, gi in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
        np.testing.assert_allclose(u, -0.05 * gi, rtol=1e-5, atol=1e-7)
    # Any real raw matrix gives a symmetric positive-definite factor.
    raw = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (5, 5))
    A = np.asarray(spd_from_raw(raw), np.float64)
    np.testing.assert_allclose(A, A.T, rtol=1e-6)
    assert np.linalg.eigvalsh(A).min() > 0
    # Meta-parameters: two small factors per weight matrix, not a (p, p) matrix.
    n_meta = ravel_pytree(meta)[0].size
    assert n_meta == 1 + (9 + 16) + (16 + 9) + 4 + 1
    assert isinstance(meta["factors"]["w"], KroneckerRaw)


def _explicit_unroll(meta, params, steps):
    """MetaMD written out with dense linear algebra (independent of the QP layer)."""
    eta = jnp.exp(meta["log_eta"])

    def spd(raw):
        L = jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diagonal(raw)))
        return L @ L.T

    for _ in range(steps):
        g = jax.grad(_loss)(params)
        new = {}
        for name, p in params.items():
            raw = meta["factors"][name]
            if isinstance(raw, KroneckerRaw):
                G = g[name].reshape(-1, p.shape[-1])
                step = jnp.linalg.solve(spd(raw.left), G) @ jnp.linalg.inv(spd(raw.right))
                new[name] = p - eta * step.reshape(p.shape)
            else:
                new[name] = p - eta * g[name] / jnp.exp(raw.log_d)
        params = new
    return params


def test_meta_gradient_through_the_qp_matches_explicit_unroll_and_finite_differences(x64):
    params, _ = _problem(jnp.float64)
    lopt = ldco.MetaMD(learning_rate=0.1)
    meta = lopt.init(jax.random.PRNGKey(0), params)
    flat0, unravel = ravel_pytree(meta)
    flat0 = flat0 + 0.1 * jax.random.normal(jax.random.PRNGKey(3), flat0.shape, jnp.float64)

    def library(flat):
        tx = lopt.opt_fn(unravel(flat))

        def step(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(_loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        p, _ = jax.lax.scan(step, (params, tx.init(params)), length=3)[0]
        return _loss(p)

    explicit = jax.jit(jax.value_and_grad(lambda flat: _loss(_explicit_unroll(unravel(flat), params, 3))))
    library = jax.jit(library)
    g_lib = jax.jit(jax.grad(library))(flat0)
    value, g_explicit = explicit(flat0)
    np.testing.assert_allclose(library(flat0), value, rtol=1e-10)
    np.testing.assert_allclose(g_lib, g_explicit, rtol=1e-7, atol=1e-10)
    v = jax.random.normal(jax.random.PRNGKey(4), flat0.shape, jnp.float64)
    eps = 1e-6
    fd = (library(flat0 + eps * v) - library(flat0 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(v @ g_lib, fd, rtol=1e-6)


FAMILY = tasks.MatrixLeastSquares(num_samples=16, num_val=8, dim_in=4, dim_out=3, condition=10.0)


def _explicit_bound(meta, params, task, horizon):
    """B_T written out: MD steps in closed form, theta* = stop_gradient(theta_T)."""
    eta = jnp.exp(meta["log_eta"])
    raw = meta["factors"]
    A, B, d = spd_from_raw(raw["w"].left), spd_from_raw(raw["w"].right), jnp.exp(raw["b"].log_d)
    theta0, dual = params, 0.0
    for _ in range(horizon):
        g = jax.grad(FAMILY.loss)(params, task)
        gw_pre = jnp.linalg.solve(A, g["w"]) @ jnp.linalg.inv(B)
        dual = dual + eta * (jnp.vdot(g["w"], gw_pre) + jnp.vdot(g["b"], g["b"] / d))
        params = {"w": params["w"] - eta * gw_pre, "b": params["b"] - eta * g["b"] / d}
    dw = jax.lax.stop_gradient(params["w"]) - theta0["w"]
    db = jax.lax.stop_gradient(params["b"]) - theta0["b"]
    divergence = 0.5 * (jnp.vdot(dw, A @ dw @ B) + jnp.vdot(db, d * db)) / eta
    return (divergence + 0.5 * dual) / horizon


def test_regret_bound_matches_explicit_computation_and_trains(x64):
    lopt = ldco.MetaMD(learning_rate=0.05)
    est = M.RegretBound(horizon=4, num_tasks=2)
    key = jax.random.PRNGKey(5)
    example = jax.tree.map(lambda x: x.astype(jnp.float64), FAMILY.init_params(key, FAMILY.sample(key)))
    meta = lopt.init(key, example)
    flat, unravel = ravel_pytree(meta)
    meta = unravel(flat + 0.1 * jax.random.normal(jax.random.PRNGKey(6), flat.shape, jnp.float64))
    out, _ = jax.jit(lambda m, k: est.estimate(lopt, FAMILY, m, (), k))(meta, key)
    states = M.FullUnroll(horizon=4, num_tasks=2).tasks(lopt, FAMILY, meta, key)
    explicit = jax.jit(jax.value_and_grad(_explicit_bound), static_argnums=3)
    for i in range(2):
        s = jax.tree.map(lambda x: x[i], states)
        value, grad = explicit(meta, s.params, s.task, 4)
        np.testing.assert_allclose(out.meta_loss[i], value, rtol=1e-10)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], out.grad)), jax.tree.leaves(grad)):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-11)
    # Meta-training on the bound with the comparator fixed at the training-loss minimiser
    # (a fixed function of the meta-parameters) over a pool of tasks lowers the bound and
    # the training loss after the horizon.
    pool = tasks.sample_tasks(FAMILY, jax.random.PRNGKey(7), 4)
    est = M.RegretBound(horizon=10, num_tasks=4, target="optimum")
    trainer = M.MetaTrainer(lopt, FAMILY, est, optax.adam(0.02), pool=pool)
    state, metrics = trainer.train(jax.random.PRNGKey(8), 30)
    losses = np.asarray(metrics.meta_loss)
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    before = M.evaluate(lopt.opt_fn, meta, FAMILY, pool, key, 10).train[:, -1]
    after = M.evaluate(lopt.opt_fn, state.meta, FAMILY, pool, key, 10).train[:, -1]
    assert float(after.mean()) < 0.7 * float(before.mean())


def test_bad_input_raises():
    params, factors = _problem(jnp.float32)
    g = jax.tree.map(jnp.ones_like, params)
    with pytest.raises(ValueError, match="positive definite"):
        ldco.metamd_transform(dict(factors, w=qp.Kronecker(-jnp.eye(3), jnp.eye(4))), 0.1)
    with pytest.raises(ValueError, match="symmetric"):
        ldco.metamd_transform(dict(factors, w=qp.Kronecker(jnp.eye(3) + jnp.triu(jnp.ones((3, 3)), 1), jnp.eye(4))), 0.1)
    with pytest.raises(ValueError, match="eta"):
        ldco.metamd_transform(factors, 0.0)
    with pytest.raises(ValueError, match="> 0"):
        ldco.metamd_transform(dict(factors, b=-jnp.ones(4)), 0.1)
    with pytest.raises(ValueError, match="unknown QP solver"):
        ldco.metamd_transform(factors, 0.1, solver="newton")
    with pytest.raises(ValueError, match=r"MetaMD: maxiter=3 conflicts with solver=EqQP\(tol=None, maxiter=4\)"):
        ldco.MetaMD(solver=qp.EqQP(maxiter=4), maxiter=3)
    with pytest.raises(ValueError, match=r"Kronecker\(A \(3, 3\), B \(4, 4\)\)"):
        ldco.metamd_transform(dict(factors, w=qp.Kronecker(jnp.eye(4), jnp.eye(4))), 0.1).init(params)
    with pytest.raises(ValueError, match="ndim >= 2"):
        ldco.metamd_transform(dict(factors, b=qp.Kronecker(jnp.eye(4), jnp.eye(1))), 0.1).init(params)
    with pytest.raises(ValueError, match="structure"):
        ldco.metamd_transform({"w": factors["w"]}, 0.1).init(params)
    tx = ldco.metamd_transform(factors, 0.1)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(g, tx.init(params))
    with pytest.raises(ValueError, match="learning_rate"):
        ldco.MetaMD(learning_rate=-1.0)
    with pytest.raises(ValueError, match="divergence"):
        M.RegretBound(horizon=2, num_tasks=1).estimate(ldco.DCOG(), FAMILY, {}, (), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="normalize"):
        M.RegretBound(horizon=2, num_tasks=1).estimate(ldco.MetaMD(normalize=True), FAMILY, {}, (), jax.random.PRNGKey(0))
