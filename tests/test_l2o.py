"""LSTM L2O optimizer and M-L2O meta-adaptation: the update against a NumPy LSTM, the
nested meta-gradient against an explicitly written adaptation and central finite
differences, and adaptation lowering the task loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import learned_dco as ldco
from learned_dco import meta as M
from learned_dco import tasks
from learned_dco.optimizers.lstm import preprocess


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """Tiny programs whose compile time dominates (see tests/test_tasks.py)."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


LOPT = ldco.LSTMOptimizer(hidden_size=4, num_layers=2, learning_rate=0.05)
FAMILY = tasks.Quadratic(dim=3, init_scale=0.1)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_lstm_updates(meta, grads_seq, p=10.0, scale=0.1):
    """A coordinatewise 2-layer LSTM optimizer written with NumPy, one coordinate at a time."""
    meta = jax.tree.map(lambda x: np.asarray(x, np.float64), meta)
    n = grads_seq[0].size
    H = meta["lstm"][0]["w_h"].shape[0]
    h = np.zeros((n, 2, H))
    c = np.zeros((n, 2, H))
    out = []
    for g in grads_seq:
        g = np.asarray(g, np.float64)
        upd = np.zeros(n)
        for i in range(n):
            gi = g[i]
            x = np.array([np.log(abs(gi)) / p, np.sign(gi)]) if abs(gi) >= np.exp(-p) else np.array([-1.0, np.exp(p) * gi])
            for layer in range(2):
                w = meta["lstm"][layer]
                z = x @ w["w_x"] + h[i, layer] @ w["w_h"] + w["b"]
                ig, fg, gg, og = np.split(z, 4)
                c[i, layer] = _sigmoid(fg) * c[i, layer] + _sigmoid(ig) * np.tanh(gg)
                h[i, layer] = _sigmoid(og) * np.tanh(c[i, layer])
                x = h[i, layer]
            upd[i] = -(np.exp(meta["log_lr"]) * gi + scale * (x @ meta["out"]["w"] + meta["out"]["b"]))
        out.append(upd)
    return out


def test_lstm_update_matches_numpy_reference_and_starts_as_gd(x64):
    params = {"a": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
    meta = LOPT.init(jax.random.PRNGKey(0), params)
    grads = [{"a": jnp.array([[0.3, -2e-5], [4.0, 0.0]]), "b": jnp.array([-1.5, 1e-7, 0.02])},
             {"a": jnp.array([[-0.1, 0.5], [1.0, -3.0]]), "b": jnp.array([0.5, -0.2, 1e-3])}]
    tx = LOPT.opt_fn(meta)
    state = tx.init(params)
    # Untrained: the LSTM head is zero, so the update is GD with the initial step.
    u0, _ = tx.update(grads[0], state, params)
    for u, g in zip(jax.tree.leaves(u0), jax.tree.leaves(grads[0])):
        np.testing.assert_allclose(u, -0.05 * g, rtol=1e-12)
    # A non-zero head: compare two steps (recurrent state) with the NumPy LSTM.
    meta = dict(meta, out={"w": jnp.linspace(-1.0, 1.0, 4), "b": jnp.asarray(0.3)})
    tx = LOPT.opt_fn(meta)
    state = tx.init(params)
    ours = []
    for g in grads:
        u, state = jax.jit(tx.update)(g, state, params)
        ours.append(ravel_pytree(u)[0])
    ref = _numpy_lstm_updates(meta, [ravel_pytree(g)[0] for g in grads])
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # Preprocessing: (log|g|/p, sign g) above e^-p, (-1, e^p g) below.
    feats = preprocess(jnp.array([2.0, -1e-6]), p=10.0)
    np.testing.assert_allclose(feats, [[np.log(2.0) / 10, 1.0], [-1.0, -np.exp(10.0) * 1e-6]], rtol=1e-12)


def _explicit_unroll_loss(meta, task, key, horizon):
    """Mean log loss along an unroll, written as a Python loop."""
    k_init, k_run = jax.random.split(key)
    params = FAMILY.init_params(k_init, task)
    tx = LOPT.opt_fn(meta)
    state = tx.init(params)
    values = []
    for _ in jax.random.split(k_run, horizon):
        u, state = tx.update(jax.grad(FAMILY.loss)(params, task), state, params)
        params = params + u
        values.append(jnp.log(FAMILY.loss(params, task) + 1e-12))
    return sum(values) / horizon


def _explicit_maml(meta, task, key, *, steps, lr, horizon, first_order=False):
    k_adapt, k_outer = jax.random.split(key)
    for k in jax.random.split(k_adapt, steps):
        g = jax.grad(_explicit_unroll_loss)(meta, task, k, horizon)
        if first_order:
            g = jax.lax.stop_gradient(g)
        meta = jax.tree.map(lambda m, gi: m - lr * gi, meta, g)
    return _explicit_unroll_loss(meta, task, k_outer, horizon)


def test_ml2o_gradient_matches_explicit_adaptation_and_finite_differences(x64):
    est = M.MetaAdaptation(horizon=2, num_tasks=2, adapt_steps=2, adapt_lr=0.05)
    key = jax.random.PRNGKey(1)
    task0 = FAMILY.sample(key)
    meta = LOPT.init(key, FAMILY.init_params(key, task0))
    flat, unravel = ravel_pytree(meta)
    flat = flat + 0.2 * jax.random.normal(jax.random.PRNGKey(2), flat.shape, jnp.float64)  # a non-trivial head
    meta = unravel(flat)
    out, _ = jax.jit(lambda m, k: est.estimate(LOPT, FAMILY, m, (), k))(meta, key)
    # The estimator's per-task tasks and keys, reproduced.
    k_tasks, k_run = jax.random.split(key)
    states = M.FullUnroll(horizon=2, num_tasks=2).tasks(LOPT, FAMILY, meta, k_tasks)
    keys = jax.random.split(k_run, 2)
    explicit = jax.jit(jax.value_and_grad(
        lambda m, t, k: _explicit_maml(m, t, k, steps=2, lr=0.05, horizon=2)))
    task = jax.tree.map(lambda x: x[0], states.task)
    value, grad = explicit(meta, task, keys[0])
    np.testing.assert_allclose(out.meta_loss[0], value, rtol=1e-10)
    np.testing.assert_allclose(ravel_pytree(jax.tree.map(lambda x: x[0], out.grad))[0], ravel_pytree(grad)[0],
                               rtol=1e-7, atol=1e-10)
    # Central finite differences of the nested objective (second-order terms included).
    loss = jax.jit(lambda f: est.task_loss(LOPT, FAMILY, unravel(f), task, keys[0]))
    g_flat = ravel_pytree(grad)[0]
    eps = 1e-5
    for i, v in enumerate(jax.random.normal(jax.random.PRNGKey(3), (2, flat.size), jnp.float64)):
        fd = (loss(flat + eps * v) - loss(flat - eps * v)) / (2 * eps)
        np.testing.assert_allclose(v @ g_flat, fd, rtol=1e-5, atol=1e-9)
    # First-order variant: the explicit adaptation with the inner gradients held constant.
    fo = M.MetaAdaptation(horizon=2, num_tasks=2, adapt_steps=2, adapt_lr=0.05, first_order=True)
    g_fo = jax.jit(jax.grad(lambda m: fo.task_loss(LOPT, FAMILY, m, task, keys[0])))(meta)
    g_fo_ref = jax.jit(jax.grad(lambda m: _explicit_maml(m, task, keys[0], steps=2, lr=0.05, horizon=2,
                                                         first_order=True)))(meta)
    np.testing.assert_allclose(ravel_pytree(g_fo)[0], ravel_pytree(g_fo_ref)[0], rtol=1e-7, atol=1e-10)
    assert not np.allclose(ravel_pytree(g_fo)[0], g_flat, rtol=1e-3)


def test_adaptation_lowers_the_task_loss_and_trainer_runs():
    shifted = tasks.Quadratic(dim=3, init_scale=0.1, shift=-1.0)  # out-of-distribution scale
    key = jax.random.PRNGKey(4)
    task = shifted.sample(key)
    meta = LOPT.init(key, shifted.init_params(key, task))
    kw = dict(horizon=10, loss="mean_log")
    before = M.unroll_loss(LOPT, shifted, meta, task, key, **kw)
    adapted = jax.jit(lambda m: M.adapt(LOPT, shifted, m, task, key, steps=5, lr=0.1, **kw))(meta)
    after = M.unroll_loss(LOPT, shifted, adapted, task, key, **kw)
    assert float(after) < float(before) - 0.03  # measured: -1.190 -> -1.249
    # Meta-training with the nested estimator through the trainer (2 meta-steps).
    trainer = M.MetaTrainer(LOPT, FAMILY, M.MetaAdaptation(horizon=4, num_tasks=2, adapt_steps=1, adapt_lr=0.01),
                            optax.adam(1e-3))
    state, metrics = trainer.train(jax.random.PRNGKey(5), 2)
    assert np.all(np.isfinite(np.asarray(metrics.meta_loss))) and int(state.skipped) == 0
    curve = M.loss_curve(LOPT, FAMILY, state.meta, FAMILY.sample(key), key, steps=4)
    assert curve.shape == (5,) and np.all(np.isfinite(curve))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="hidden_size"):
        ldco.LSTMOptimizer(hidden_size=0)
    with pytest.raises(ValueError, match="preprocess"):
        ldco.LSTMOptimizer(preprocess="raw")
    with pytest.raises(ValueError, match="adapt_steps"):
        M.MetaAdaptation(adapt_steps=-1)
    with pytest.raises(ValueError, match="adapt_lr"):
        M.MetaAdaptation(adapt_lr=0.0)
    with pytest.raises(ValueError, match="loss"):
        M.MetaAdaptation(loss="final")
    params = {"w": jnp.ones((2, 2))}
    tx = LOPT.opt_fn(LOPT.init(jax.random.PRNGKey(0), params))
    state = tx.init(params)
    with pytest.raises(ValueError, match="grads"):
        tx.update({"w": jnp.ones(3)}, state, params)
    with pytest.raises(ValueError, match="state"):
        tx.update({"v": jnp.ones(5)}, state)
