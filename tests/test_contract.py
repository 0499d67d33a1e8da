"""The contract every learned optimizer in the library passes.

For each entry of ``learned_dco.LEARNED_OPTIMIZERS`` (default constructor):
init/opt_fn on nested pytree params; jit; state shapes/dtypes stable across steps and
through ``jax.lax.cond``; ``jax.vmap`` over a batch of meta-parameters equals a Python
loop; ``optax.chain`` with gradient clipping trains a small flax MLP; the meta-gradient is
finite and matches central differences; meta-parameters tied to one model's shapes raise
``ValueError`` on another, model-agnostic ones work there.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import learned_dco as ldco

NAMES = sorted(ldco.LEARNED_OPTIMIZERS)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(8)(x))
        return nn.Dense(1)(x)


def _problem():
    kx, kp = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(kx, (64, 2), minval=-1.0, maxval=1.0)
    y = jnp.sin(2.0 * x[:, :1]) * jnp.cos(x[:, 1:])
    model = MLP()
    params = model.init(kp, x)

    def loss(p):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    return params, loss


def _dead_input_problem():
    """:func:`_problem` with a third input that is always 0 (a blank pixel at the edge of a
    digit image): the first-layer weights reading it get exactly zero gradient at every step,
    so their second-moment accumulators stay exactly 0."""
    kx, kp = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(kx, (64, 2), minval=-1.0, maxval=1.0)
    y = jnp.sin(2.0 * x[:, :1]) * jnp.cos(x[:, 1:])
    x = jnp.concatenate([x, jnp.zeros((64, 1))], axis=1)
    model = MLP()
    params = model.init(kp, x)

    def loss(p):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    return params, loss


def _signature(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def _unroll(lopt, meta, params, loss, steps):
    tx = optax.chain(optax.clip_by_global_norm(1.0), lopt.opt_fn(meta))

    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), value

    (p, s), values = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return p, s, values


@pytest.mark.parametrize("name", NAMES)
def test_learned_optimizer_contract(name):
    lopt = ldco.LEARNED_OPTIMIZERS[name]()
    assert isinstance(lopt, ldco.LearnedOptimizer)
    params, loss = _problem()
    meta = lopt.init(jax.random.PRNGKey(1), params)
    tx = lopt.opt_fn(meta)
    assert isinstance(tx, optax.GradientTransformation)

    # jit, and state shapes/dtypes stable across steps.
    state = jax.jit(tx.init)(params)
    update = jax.jit(tx.update)
    grads = jax.grad(loss)(params)
    updates, new_state = update(grads, state, params)
    assert _signature(new_state) == _signature(state)
    assert _signature(updates) == _signature(params)

    # The state survives lax.cond (both branches must agree on structure and dtype).
    def maybe_step(pred, state):
        return jax.lax.cond(pred, lambda s: update(grads, s, params)[1], lambda s: s, state)

    kept = jax.jit(maybe_step)(False, new_state)
    stepped = jax.jit(maybe_step)(True, new_state)
    assert _signature(kept) == _signature(stepped) == _signature(state)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(new_state)))

    # Composes with optax.chain and trains a flax MLP.
    _, _, values = jax.jit(lambda m: _unroll(lopt, m, params, loss, 60))(meta)
    assert float(values[-1]) < 0.7 * float(values[0])

    # vmap over a batch of meta-parameters equals a Python loop.
    flat, unravel = ravel_pytree(meta)
    metas = [unravel(flat + 0.05 * i * jnp.sign(flat + 1e-3)) for i in range(3)]
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *metas)
    run = jax.jit(lambda m: _unroll(lopt, m, params, loss, 5)[2][-1])
    batched = jax.jit(jax.vmap(lambda m: _unroll(lopt, m, params, loss, 5)[2][-1]))(batch)
    looped = jnp.stack([run(m) for m in metas])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_learned_optimizer_meta_gradient(name, x64):
    """The meta-gradient is finite and matches central differences, on a model with a dead
    input: weights that never receive a gradient must not poison it. ``d sqrt(v)/dv`` is
    infinite at ``v = 0`` and ``inf * 0`` is NaN, so a rule taking a plain square root of a
    second moment returns a NaN meta-gradient on any model with a dead input (STAR,
    Hyperparam, ScheduledAdam and LearnedProdigy did, on the digits MLP's blank pixels)."""
    lopt = ldco.LEARNED_OPTIMIZERS[name]()
    params, loss = _dead_input_problem()
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    meta = lopt.init(jax.random.PRNGKey(1), params)
    flat, unravel = ravel_pytree(meta)

    def meta_loss(flat_meta):
        p, _, _ = _unroll(lopt, unravel(flat_meta), params, loss, 3)
        return loss(p)

    grad = jax.jit(jax.grad(meta_loss))(flat)
    assert jnp.all(jnp.isfinite(grad)) and float(jnp.linalg.norm(grad)) > 0
    eps = 1e-6
    directions = jax.random.normal(jax.random.PRNGKey(2), (3, flat.size), jnp.float64)
    central = jax.jit(jax.vmap(lambda v: (meta_loss(flat + eps * v) - meta_loss(flat - eps * v)) / (2 * eps)))
    np.testing.assert_allclose(directions @ grad, central(directions), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_learned_optimizer_on_another_model(name):
    """Per-parameter meta-parameters made for one model raise ValueError on another;
    model-agnostic ones (shared across parameters) must just work there."""
    lopt = ldco.LEARNED_OPTIMIZERS[name]()
    params, _ = _problem()
    meta = lopt.init(jax.random.PRNGKey(1), params)
    other = {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}
    tx = lopt.opt_fn(meta)
    try:
        state = tx.init(other)
    except ValueError:
        return
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, other), state, other)
    assert _signature(updates) == _signature(other)
    assert all(jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates))
    with pytest.raises(ValueError):  # gradients that do not match the parameters
        tx.update({"w": jnp.ones((2, 2)), "b": jnp.ones(3)}, state, other)


# --- the public API list -------------------------------------------------------------------


def test_public_api_is_one_list_without_internals():
    import learned_dco.optimizers as opt_pkg
    from learned_dco import meta, pretrained, tasks

    names = set(ldco.__all__)
    assert len(names) == len(ldco.__all__), "duplicate names in ldco.__all__"
    for name in ldco.__all__:
        assert getattr(ldco, name) is not None
    # what the README teaches
    assert {"dcog", "dcogd", "dcom", "DCOG", "STAR", "solve_qp", "qp", "tasks", "meta", "pretrained"} <= names
    assert ldco.solve_qp is ldco.qp.solve_qp and ldco.tasks is tasks and ldco.meta is meta
    assert ldco.pretrained is pretrained
    # internals stay in their subpackage
    assert not {"AdafacState", "adafac_mlp", "DCOState", "blackbox_weight_mask"} & names
    assert "AdafacState" in opt_pkg.__all__
    # optimizers.__all__ is derived: exactly its public, non-module names
    import types

    public = {n for n, v in vars(opt_pkg).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert set(opt_pkg.__all__) == public
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ldco.nope  # noqa: B018


def test_protocols_are_structural():
    from learned_dco import tasks

    for cls in ldco.LEARNED_OPTIMIZERS.values():
        assert isinstance(cls(), ldco.LearnedOptimizer)
    for cls in tasks.FAMILIES.values():
        assert isinstance(cls(), tasks.TaskFamily)
    assert isinstance(ldco.qp.Diagonal(1.0), ldco.QPOperator)
    assert not isinstance(object(), ldco.QPOperator) and not isinstance(object(), tasks.TaskFamily)


def test_registries_build_by_name():
    """Each registry's builder sits next to it and returns exactly the registered class."""
    from learned_dco import meta, optimizers, tasks

    for make, registry, what in (
        (optimizers.make_optimizer, optimizers.LEARNED_OPTIMIZERS, "learned optimizer"),
        (meta.make_estimator, meta.ESTIMATORS, "estimator"),
        (tasks.make_family, tasks.FAMILIES, "task family"),
    ):
        name = sorted(registry)[0]
        assert type(make(name)) is registry[name]
        with pytest.raises(ldco.ValidationError, match=f"unknown {what} 'nope'; known: .*{name}"):
            make("nope")
    assert optimizers.make_optimizer("dcog", learning_rate=0.5).learning_rate == 0.5
    assert meta.make_estimator("pes", horizon=4, truncation=2).truncation == 2
