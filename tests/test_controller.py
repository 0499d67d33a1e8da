"""The learned controller over Prodigy (learned_dco/optimizers/controller.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from learned_dco.optimizers import controller as ctl
from learned_dco.validation import ValidationError
from _trajectories import trajectory


def _problem(scale=1.0):
    """A two-tensor least-squares model: w (5, 3) and b (3,), loss scaled by ``scale``."""
    kx, ky, kw = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (40, 5))
    y = jax.random.normal(ky, (40, 3))
    params = {"w": 0.3 * jax.random.normal(kw, (5, 3)), "b": jnp.zeros(3)}

    def loss(p):
        return scale * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return params, loss


def test_untrained_controller_is_optax_prodigy(x64):
    """Zero last layer: every multiplier is 1 and the run is optax.contrib.prodigy()'s
    (float64, so the two agree to rounding over the whole run)."""
    params, loss = _problem()
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    lopt = ctl.ProdigyController(num_steps=30)
    got, state = trajectory(lopt.opt_fn(lopt.init(jax.random.PRNGKey(1), params)), params, loss, 30)
    want, _ = trajectory(optax.contrib.prodigy(), params, loss, 30)
    for a, b in zip(got, want):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-14)
    assert all(float(v) == 0.0 for v in jax.tree.leaves(state.log_mult))


def test_multiplier_scales_prodigys_update(x64):
    """A last-layer bias with L tanh(b3) = log 2 doubles Prodigy's first update exactly."""
    params, loss = _problem()
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    lopt = ctl.ProdigyController(num_steps=10)
    meta = lopt.init(jax.random.PRNGKey(1), params)
    meta["b3"] = jnp.asarray(math.atanh(math.log(2.0) / lopt.max_log_mult))
    grads = jax.grad(loss)(params)
    tx, ref = lopt.opt_fn(meta), optax.contrib.prodigy()
    got, _ = tx.update(grads, tx.init(params), params)
    want, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, 2.0 * b, rtol=1e-12)


def test_tensor_features_closed_form(x64):
    rng = np.random.default_rng(0)
    g, mp, m, u, p = (rng.normal(size=(4, 3)) for _ in range(5))
    v = rng.uniform(0.1, 1.0, size=(4, 3))
    f = np.asarray(ctl.tensor_features(g, mp, m, v, u, p))
    cos = np.sum(g * mp) / (np.linalg.norm(g) * np.linalg.norm(mp))
    snr = np.linalg.norm(m) / np.sqrt(np.sum(v))
    rel = np.clip(np.log10(np.linalg.norm(u) / (np.linalg.norm(p) + 1e-8 * math.sqrt(12))), -8, 2) / 4
    np.testing.assert_allclose(f, [cos, min(snr, 1.0), rel, math.log10(12) / 6, 0.0], rtol=1e-5)
    # zero momentum (the first step) gives agreement 0, not NaN; a vector is flagged
    f0 = np.asarray(ctl.tensor_features(g[0], np.zeros(3), m[0], v[0], u[0], p[0]))
    assert f0[0] == 0.0 and f0[4] == 1.0 and np.all(np.isfinite(f0))


def test_controller_is_invariant_to_the_loss_scale():
    """Every feature and Prodigy are homogeneous of degree 0 in the loss's scale, so a
    random (trained-looking) controller follows the same trajectory on loss and 1000 x loss.
    A feature that read a raw gradient norm would break this."""
    params, loss = _problem()
    _, loss_big = _problem(scale=1000.0)
    lopt = ctl.ProdigyController(num_steps=20)
    meta = lopt.init(jax.random.PRNGKey(3), params)
    meta["w3"] = 0.8 * jax.random.normal(jax.random.PRNGKey(4), meta["w3"].shape)
    meta["b3"] = jnp.asarray(0.2)
    tx = lopt.opt_fn(meta)
    small, s_small = trajectory(tx, params, loss, 20)
    big, s_big = trajectory(tx, params, loss_big, 20)
    mults = np.asarray(jax.tree.leaves(s_small.log_mult))
    assert np.ptp(mults) > 1e-3  # the controller is doing something per tensor
    for a, b in zip(small, big):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=2e-3, atol=1e-5)


def test_controller_reacts_to_oscillation():
    """The agreement feature is negative on an oscillating gradient sequence and positive on
    a steady one (the signal the controller is meant to act on)."""
    g = jnp.ones((3, 2))
    steady = ctl.tensor_features(g, g, g, g * g, 0.1 * g, g)[0]
    flipping = ctl.tensor_features(-g, g, g, g * g, 0.1 * g, g)[0]
    assert float(steady) == pytest.approx(1.0) and float(flipping) == pytest.approx(-1.0)


def test_controller_traced_budget_and_extra_args():
    params, loss = _problem()
    lopt = ctl.ProdigyController()
    meta = lopt.init(jax.random.PRNGKey(1), params)

    @jax.jit
    def run(num_steps):
        tx = ctl.prodigy_controller(meta, num_steps)
        state = tx.init(params)
        value, grads = jax.value_and_grad(loss)(params)
        return tx.update(grads, state, params, value=value)[0]

    out = run(jnp.asarray(50))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))


def test_controller_needs_params():
    params, loss = _problem()
    tx = ctl.ProdigyController().opt_fn(ctl.ProdigyController().init(jax.random.PRNGKey(0), params))
    with pytest.raises(ValueError, match="Prodigy's estimate"):
        tx.update(jax.grad(loss)(params), tx.init(params))


def test_controller_rejects_bad_fields():
    with pytest.raises(ValidationError, match="b1"):
        ctl.ProdigyController(b1=1.0)
    with pytest.raises(ValidationError, match="hidden"):
        ctl.ProdigyController(hidden=0)
    with pytest.raises(ValidationError, match="max_log_mult"):
        ctl.ProdigyController(max_log_mult=0.0)
