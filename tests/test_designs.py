"""The per-parameter MLP over Prodigy (optimizers/param_mlp.py) and the learned per-tensor DCOM
step (optimizers/dco_controller.py), each against an independent reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from learned_dco.optimizers import dco
from learned_dco.optimizers import dco_controller as dc
from learned_dco.optimizers import param_mlp as pm
from learned_dco.validation import ValidationError
from _trajectories import trajectory


def _problem(scale=1.0):
    """A two-tensor least-squares model: w (5, 3) and b (3,), loss scaled by ``scale``."""
    kx, ky, kw = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (40, 5))
    y = jax.random.normal(ky, (40, 3))
    params = {"w": 0.3 * jax.random.normal(kw, (5, 3)), "b": 0.1 * jnp.ones(3)}

    def loss(p):
        return scale * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return params, loss


def _f64(tree):
    return jax.tree.map(lambda p: p.astype(jnp.float64), tree)


def _close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, **kw)


def _randomised(meta, seed=3, scale=0.5):
    """Every meta-parameter leaf of the network moved by a Gaussian (so the last layer is not zero)."""
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(meta)))
    return {k: (v + scale * jax.random.normal(next(keys), jnp.shape(v), jnp.result_type(v))
                if k.startswith(("w", "b")) and not k.endswith("logit") else v) for k, v in meta.items()}


# --- prodigy_param_mlp ----------------------------------------------------------------------


def test_untrained_param_mlp_is_optax_prodigy(x64):
    params, loss = _problem()
    params = _f64(params)
    lopt = pm.ProdigyParamMLP(num_steps=30)
    got, _ = trajectory(lopt.opt_fn(lopt.init(jax.random.PRNGKey(1), params)), params, loss, 30)
    want, _ = trajectory(optax.contrib.prodigy(), params, loss, 30)
    for a, b in zip(got, want):
        _close(a, b, rtol=1e-10, atol=1e-14)


def test_param_mlp_output_heads_closed_form(x64):
    r"""Constant heads (zero last-layer weights, bias (s, delta)): the first update is
    exp(L tanh s) u - alpha lambda_1 tanh delta, with u and d_0 from optax's Prodigy and
    lambda_1 = d_0 sqrt(1 - b2) / (1 - b1)."""
    params, loss = _problem()
    params = _f64(params)
    lopt = pm.ProdigyParamMLP(num_steps=10)
    meta = dict(lopt.init(jax.random.PRNGKey(1), params))
    s, delta = 0.3, -0.7
    meta["b3"] = jnp.asarray([s, delta])
    grads = jax.grad(loss)(params)
    tx = lopt.opt_fn(meta)
    got, _ = tx.update(grads, tx.init(params), params)
    ref = optax.contrib.prodigy()
    u, _ = ref.update(grads, ref.init(params), params)
    lam1 = 1e-6 * math.sqrt(1 - 0.999) / (1 - 0.9)
    want = jax.tree.map(lambda x: math.exp(2.0 * math.tanh(s)) * x - 0.1 * lam1 * math.tanh(delta), u)
    _close(got, want, rtol=1e-9, atol=1e-18)


def test_param_mlp_features_are_scale_free_and_clipped(x64):
    g = jnp.asarray([1.0, -2.0, 1e6])
    v = jnp.asarray([1.0, 4.0, 1e-4])
    p = jnp.asarray([3.0, 0.0, -4.0])
    f = pm.param_features(g, 0.5 * g, 0.25 * g, v, p, jnp.asarray(1.0), 0.0, 10.0)
    np.testing.assert_allclose(f[:, 0], [1.0, -1.0, 10.0])  # g / sqrt(v), clipped at 10
    np.testing.assert_allclose(f[:2, 1], [0.5, -0.5])
    np.testing.assert_allclose(f[:, 3], np.array([3.0, 0.0, -4.0]) / np.sqrt(25 / 3), rtol=1e-6)
    f2 = pm.param_features(7.0 * g, 3.5 * g, 1.75 * g, 49.0 * v, p, jnp.asarray(1.0), 0.0, 10.0)
    np.testing.assert_allclose(f2, f, rtol=1e-12)


@pytest.mark.parametrize("lopt", [pm.ProdigyParamMLP(num_steps=20), dc.DCOController(num_steps=20)],
                         ids=["param_mlp", "dcom_controller"])
def test_trained_designs_are_invariant_to_the_loss_scale(lopt, x64):
    """With a random (non-zero) network, the iterates on 1000 x the loss equal those on the loss
    (up to Adam's epsilon in Prodigy's denominator, a 1e-5-relative effect here). A feature
    reading a raw gradient or a raw squared-gradient sum would break this."""
    params, loss = _problem()
    params = _f64(params)
    _, big = _problem(1000.0)
    meta = _randomised(lopt.init(jax.random.PRNGKey(1), params))
    a, _ = trajectory(lopt.opt_fn(meta), params, loss, 20)
    b, _ = trajectory(lopt.opt_fn(meta), params, big, 20)
    _close(a[-1], b[-1], rtol=1e-3, atol=1e-8)
    assert not np.allclose(jax.tree.leaves(a[-1])[0], jax.tree.leaves(params)[0])


# --- dcom_controller ------------------------------------------------------------------------


def test_dcom_controller_steps_are_dco_momentum_steps(x64):
    r"""Two steps of the untrained rule equal two steps of the library's QP-based DCOM
    (``optimizers.dco.dcom_transform``) given the per-tensor Lambda^2 = sqrt(G_i) / rbar_i and
    M = 1 - momentum that the module docstring defines."""
    params, loss = _problem()
    params = _f64(params)
    lopt = dc.DCOController(num_steps=10, momentum=0.8, r_eps=1e-2)
    tx = lopt.opt_fn(lopt.init(jax.random.PRNGKey(1), params))
    state = tx.init(params)
    norm = lambda t: jax.tree.map(lambda x: jnp.sqrt(jnp.sum(x * x)), t)
    rbar = jax.tree.map(lambda n: 1e-2 * (1 + n), norm(params))
    G = jax.tree.map(jnp.zeros_like, rbar)
    p_ref, p = params, params
    ref_state = None
    for _ in range(2):
        g = jax.grad(loss)(p_ref)
        rbar = jax.tree.map(lambda r, d: jnp.maximum(r, d), rbar,
                            norm(jax.tree.map(lambda a, b: a - b, p_ref, params)))
        G = jax.tree.map(lambda acc, n: acc + n**2, G, norm(g))
        lam = jax.tree.map(lambda gg, r: jnp.sqrt(jnp.sqrt(gg) / r), G, rbar)
        ref = dco.dcom_transform(lam, 0.2, max_consecutive_nonfinite=None)
        ref_state = ref.init(p_ref) if ref_state is None else ref_state
        u_ref, ref_state = ref.update(g, ref_state, p_ref)
        p_ref = optax.apply_updates(p_ref, u_ref)
        u, state = tx.update(jax.grad(loss)(p), state, p)
        p = optax.apply_updates(p, u)
        _close(p, p_ref, rtol=1e-9, atol=1e-14)


def test_dcom_controller_curvature_head_scales_the_step(x64):
    """A curvature-head bias with L tanh(b) = log 3 triples the first step (Lambda^2 / 3)."""
    params, loss = _problem()
    params = _f64(params)
    lopt = dc.DCOController(num_steps=10)
    meta = dict(lopt.init(jax.random.PRNGKey(1), params))
    base_tx = lopt.opt_fn(meta)
    g = jax.grad(loss)(params)
    u0, _ = base_tx.update(g, base_tx.init(params), params)
    meta["b3"] = jnp.asarray([math.atanh(math.log(3.0) / 3.0), 0.0])
    tx = lopt.opt_fn(meta)
    u1, _ = tx.update(g, tx.init(params), params)
    _close(u1, jax.tree.map(lambda x: 3.0 * x, u0), rtol=1e-10)


def test_designs_need_params_and_reject_bad_fields():
    params, loss = _problem()
    for lopt in (pm.ProdigyParamMLP(), dc.DCOController()):
        tx = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0), params))
        with pytest.raises(ValueError, match="needs params"):
            tx.update(jax.grad(loss)(params), tx.init(params))
    with pytest.raises(ValidationError, match="momentum"):
        dc.DCOController(momentum=1.0)
    with pytest.raises(ValidationError, match="hidden"):
        pm.ProdigyParamMLP(hidden=0)
