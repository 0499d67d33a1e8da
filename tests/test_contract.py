"""The contract every learned optimizer in the library passes.

For each entry of ``learned_dco.LEARNED_OPTIMIZERS`` (default constructor):
init/opt_fn on nested pytree params; jit; state shapes/dtypes stable across steps and
through ``jax.lax.cond``; ``jax.vmap`` over a batch of meta-parameters equals a Python
loop; ``optax.chain`` with gradient clipping trains a small flax MLP; the meta-gradient is
finite and matches central differences; meta-parameters tied to one model's shapes raise
``ValueError`` on another, model-agnostic ones work there. The same optimizers and the
shipped ``pretrained.load`` are optax citizens (section below): bfloat16/float16 params keep
their state dtypes under ``lax.scan``, ``update`` takes extra arguments (``value=``), and they
compose with ``optax.MultiSteps``, ``optax.multi_transform``, ``flax.nnx.Optimizer`` and
``optax.inject_hyperparams`` (``learning_rate``, ``weight_decay``, a traced ``num_steps``).
"""

import functools

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
    def curve(m):
        return _unroll(lopt, m, params, loss, 60)[2]

    run = jax.jit(curve)
    values = run(meta)
    assert float(values[-1]) < 0.7 * float(values[0])

    # vmap over a batch of meta-parameters equals a Python loop (the loss after 4 updates, the
    # same program as above: a scan compiles once whatever its length).
    flat, unravel = ravel_pytree(meta)
    metas = [unravel(flat + 0.05 * i * jnp.sign(flat + 1e-3)) for i in range(3)]
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *metas)
    batched = jax.jit(jax.vmap(curve))(batch)[:, 4]
    looped = jnp.stack([run(m)[4] for m in metas])
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
    assert {"dcog_transform", "dcogd_transform", "dcom_transform", "DCOG", "STAR", "solve_qp", "qp", "tasks", "meta", "pretrained"} <= names
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


# --- optax citizenship -----------------------------------------------------------------------
# Every learned optimizer's ``opt_fn(meta)`` and the shipped ``pretrained.load(name)`` behave
# like an optax optimizer: low-precision params keep their state dtypes under ``lax.scan``
# (float32 meta-parameters do not promote the moments), ``update`` takes extra arguments
# (``value=loss``), the transformation composes with ``optax.MultiSteps``,
# ``optax.multi_transform`` and ``flax.nnx.Optimizer``, and ``optax.inject_hyperparams``
# drives its ``learning_rate`` / ``weight_decay``. Tiny params keep each case one small program.

CITIZENS = NAMES + ["pretrained:learned_prodigy"]


def _tiny(dtype=jnp.float32):
    return {"w": jnp.asarray([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], dtype), "b": jnp.asarray([0.3, -0.2], dtype)}


def _tiny_loss(p):
    w, b = p["w"].astype(jnp.float32), p["b"].astype(jnp.float32)
    scale = jnp.arange(1.0, 7.0).reshape(3, 2)
    return 0.5 * jnp.sum(scale * (w - 1.0) ** 2) + jnp.sum((b + 0.5) ** 2)


def _factory(name, params):
    """``factory(**options)`` -> the transformation of ``name`` for params shaped like
    ``params`` (float32 meta-parameters, as trained or shipped)."""
    if name.startswith("pretrained:"):
        return functools.partial(ldco.pretrained.load, name.split(":", 1)[1], num_steps=20)
    lopt = ldco.LEARNED_OPTIMIZERS[name]()
    meta = lopt.init(jax.random.PRNGKey(1), jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params))
    return functools.partial(lopt.opt_fn, meta)


def _float_leaves_dtypes(tree):
    return {jnp.dtype(jnp.result_type(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.floating)}


@pytest.mark.parametrize("name", CITIZENS)
def test_low_precision_params_keep_state_dtypes_under_scan(name):
    """bfloat16 and float16 params train under ``lax.scan`` (a carry whose dtypes changed
    would raise TypeError) and every floating state leaf keeps the params' dtype."""
    factory = _factory(name, _tiny())

    def run(params):
        tx = factory()
        state = tx.init(params)

        def step(carry, _):
            p, s = carry
            value, g = jax.value_and_grad(_tiny_loss)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), (value, u)

        (p, s), (values, updates) = jax.lax.scan(step, (params, state), length=3)
        return state, s, p, values, updates

    runs = jax.jit(lambda a, b: (run(a), run(b)))(_tiny(jnp.bfloat16), _tiny(jnp.float16))
    for dtype, (state0, state, p, values, updates) in zip((jnp.bfloat16, jnp.float16), runs):
        assert _signature(state) == _signature(state0)
        assert _float_leaves_dtypes(state0) <= {jnp.dtype(dtype)}, f"{dtype.__name__} params, state {_float_leaves_dtypes(state0)}"
        assert _float_leaves_dtypes(updates) == {jnp.dtype(dtype)} and _float_leaves_dtypes(p) == {jnp.dtype(dtype)}
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((values, updates, p)))
        assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", CITIZENS)
def test_update_takes_extra_args(name):
    """A ``GradientTransformationExtraArgs``: ``update(..., value=loss)`` (alone and in a
    chain) gives the same update and state as without."""
    params = _tiny()
    tx = _factory(name, params)()
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    value, grads = jax.value_and_grad(_tiny_loss)(params)
    state = tx.init(params)
    plain = tx.update(grads, state, params)
    extra = tx.update(grads, state, params, value=value, unrelated=3)
    chained = optax.chain(optax.identity(), tx)
    via_chain = chained.update(grads, chained.init(params), params, value=value)
    for a, b, c in zip(jax.tree.leaves(plain), jax.tree.leaves(extra), jax.tree.leaves((via_chain[0], via_chain[1][1]))):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("name", CITIZENS)
def test_multi_steps_averages_gradients(name):
    """``optax.MultiSteps(tx, 2)``: no update on the first mini-step, then ``tx``'s update
    on the mean of the two gradients (params unchanged in between); with bfloat16 params
    (its ``lax.cond`` / selects need both branches' states of one dtype) the state keeps
    its dtypes."""
    params = _tiny()
    tx = _factory(name, params)()
    g1 = jax.grad(_tiny_loss)(params)
    g2 = jax.tree.map(lambda g: 0.5 * g + 0.25, g1)
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), (params, g1, g2))

    @jax.jit
    def run():
        ms = optax.MultiSteps(tx, every_k_schedule=2)
        s0 = ms.init(params)
        u1, s1 = ms.update(g1, s0, params, value=1.0)
        u2, s2 = ms.update(g2, s1, params, value=1.0)
        mean = jax.tree.map(lambda a, b: 0.5 * (a + b), g1, g2)
        want, _ = tx.update(mean, tx.init(params), params)
        b0 = ms.init(low[0])  # one bfloat16 mini-step traces both branches of MultiSteps' cond
        bu, b1 = ms.update(low[1], b0, low[0])
        return (s0, s2, u1, u2, want), (b0, b1, bu)

    (s0, s2, u1, u2, want), (b0, b1, bu) = run()
    assert _signature(s2) == _signature(s0) and _signature(b1) == _signature(b0)
    assert _signature(bu) == _signature(low[0])
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(u1))
    for got, ref in zip(jax.tree.leaves(u2), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", CITIZENS)
def test_multi_transform_sub_tree(name):
    """Under ``optax.multi_transform`` the optimizer sees its leaves only (the others are
    ``optax.MaskedNode``): its updates equal the optimizer run on those leaves alone."""
    params = _tiny()
    labels = {"w": "learned", "b": "sgd"}
    masked = {"w": params["w"], "b": optax.MaskedNode()}
    tx = optax.multi_transform({"learned": _factory(name, masked)(), "sgd": optax.sgd(0.1)}, labels)
    grads = jax.grad(_tiny_loss)(params)
    updates, state = tx.update(grads, tx.init(params), params, value=1.0)
    updates, _ = tx.update(grads, state, params)
    alone = _factory(name, {"w": params["w"]})()
    ref, s = alone.update({"w": grads["w"]}, alone.init({"w": params["w"]}), {"w": params["w"]})
    ref, _ = alone.update({"w": grads["w"]}, s, {"w": params["w"]})
    np.testing.assert_allclose(updates["w"], ref["w"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(updates["b"], -0.1 * grads["b"], rtol=1e-6)


@pytest.mark.parametrize("name", CITIZENS)
def test_nnx_optimizer(name):
    """``flax.nnx.Optimizer(model, tx, wrt=nnx.Param)`` (it passes ``Variable`` s to
    ``init`` and plain arrays to ``update``) takes the same step as ``tx`` on the arrays."""
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = jnp.asarray([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]])

    def loss(m):
        return jnp.mean((m(x) - 1.0) ** 2)

    pure = nnx.as_pure(nnx.state(model, nnx.Param))
    tx = _factory(name, nnx.state(model, nnx.Param))()  # meta-parameters made from the model's State
    grads = nnx.grad(loss)(model)
    want, _ = tx.update(nnx.as_pure(nnx.state(grads, nnx.Param)), tx.init(pure), pure)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    opt.update(model, grads, value=loss(model))
    after = nnx.as_pure(nnx.state(model, nnx.Param))
    for p, u, q in zip(jax.tree.leaves(pure), jax.tree.leaves(want), jax.tree.leaves(after)):
        np.testing.assert_allclose(q, p + u, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", CITIZENS)
def test_inject_hyperparams_learning_rate_and_weight_decay(name):
    r"""``optax.inject_hyperparams`` over the builder: the state exposes ``learning_rate``
    and ``weight_decay``, and the update is :math:`\eta\,(u - \lambda\theta)` with ``u``
    the default update (decoupled weight decay scaled by the learning rate, as
    ``optax.adamw``); a schedule scales step ``t`` by ``schedule(t)``; the default
    ``learning_rate=1`` is the plain update bit for bit."""
    params = _tiny()
    factory = _factory(name, params)
    grads = jax.grad(_tiny_loss)(params)
    base = factory()
    injected = optax.inject_hyperparams(factory)(learning_rate=0.5, weight_decay=0.1)
    one = factory(learning_rate=1.0, weight_decay=0.0)
    schedule = optax.linear_schedule(1.0, 0.0, 4)
    scheduled = factory(learning_rate=schedule)
    states = [t.init(params) for t in (base, injected, one, scheduled)]
    assert float(states[1].hyperparams["learning_rate"]) == 0.5
    assert float(states[1].hyperparams["weight_decay"]) == pytest.approx(0.1)
    for t in range(2):
        outs = [tx.update(grads, s, params) for tx, s in zip((base, injected, one, scheduled), states)]
        (u, _), (ui, _), (u1, _), (us, _) = outs
        states = [s for _, s in outs]
        for k in params:
            np.testing.assert_allclose(ui[k], 0.5 * (u[k] - 0.1 * params[k]), rtol=1e-5, atol=1e-8)
            np.testing.assert_array_equal(u1[k], u[k])
            np.testing.assert_allclose(us[k], float(schedule(t)) * u[k], rtol=1e-6, atol=1e-9)


def test_pretrained_under_inject_hyperparams_with_traced_num_steps():
    """``inject_hyperparams(partial(pretrained.load, name))(learning_rate=, num_steps=)``:
    the state exposes both, ``num_steps`` arrives as an array, and the updates are
    ``learning_rate`` times those of ``load(name, num_steps=T)`` with a Python int."""
    params = _tiny()
    grads = jax.grad(_tiny_loss)(params)
    tx = optax.inject_hyperparams(functools.partial(ldco.pretrained.load, "learned_prodigy"))(learning_rate=0.5, num_steps=300)
    ref = ldco.pretrained.load("learned_prodigy", num_steps=300)
    s, r = tx.init(params), ref.init(params)
    assert {"learning_rate", "weight_decay", "num_steps"} <= set(s.hyperparams)
    assert int(s.hyperparams["num_steps"]) == 300 and float(s.hyperparams["learning_rate"]) == 0.5
    p = params
    for _ in range(3):
        u, s = jax.jit(tx.update)(grads, s, p, value=_tiny_loss(p))
        v, r = ref.update(grads, r, p)
        for k in p:
            np.testing.assert_allclose(u[k], 0.5 * v[k], rtol=1e-5, atol=1e-9)
        p = optax.apply_updates(p, v)


def _three_updates(make):
    """The updates of three steps of ``make()`` on the tiny problem."""
    tx = make()
    p, s, out = _tiny(), None, []
    s = tx.init(p)
    for _ in range(3):
        u, s = tx.update(jax.grad(_tiny_loss)(p), s, p)
        p = optax.apply_updates(p, u)
        out.append(u)
    return out


@pytest.mark.parametrize("make", [
    lambda T: ldco.pretrained.load("learned_prodigy", num_steps=T),
    lambda T: ldco.ScheduledAdam(num_steps=T, learning_rate=0.1).opt_fn(
        {"log_lr": jnp.log(jnp.asarray([0.3, 0.1, 0.01])), "b1_logit": jnp.asarray(2.0), "b2_logit": jnp.asarray(6.0)}),
], ids=["pretrained", "scheduled_adam"])
def test_num_steps_may_be_traced(make):
    """A traced ``num_steps`` (one compiled program for every horizon) gives the updates of
    the same Python int; another horizon gives other updates (the schedule reads it)."""
    run = jax.jit(lambda T: _three_updates(lambda: make(T)))
    traced, longer = run(jnp.asarray(4)), run(jnp.asarray(400))
    python = _three_updates(lambda: make(4))
    for a, b in zip(jax.tree.leaves(traced), jax.tree.leaves(python)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(traced), jax.tree.leaves(longer)))


def test_learning_rate_and_weight_decay_closed_form():
    r"""``dcog_transform(lam, learning_rate=eta, weight_decay=wd)`` is
    :math:`\eta\,(-g/\Lambda^2 - \lambda\theta)`; ``step_size_gd(eta, weight_decay=wd)`` is
    :math:`-\eta\,(g + \lambda\theta)`."""
    p = _tiny()
    g = jax.grad(_tiny_loss)(p)
    tx = ldco.dcog_transform(2.0, learning_rate=0.5, weight_decay=0.1)
    u, _ = tx.update(g, tx.init(p), p)
    gd = ldco.step_size_gd(0.3, weight_decay=0.2)
    v, _ = gd.update(g, gd.init(p), p)
    for k in p:
        np.testing.assert_allclose(u[k], 0.5 * (-g[k] / 4.0 - 0.1 * p[k]), rtol=1e-6)
        np.testing.assert_allclose(v[k], -0.3 * (g[k] + 0.2 * p[k]), rtol=1e-6)


def test_bad_learning_rate_weight_decay_and_num_steps_are_refused():
    p = _tiny()
    with pytest.raises(ldco.ValidationError, match="weight_decay"):
        ldco.dcog_transform(1.0, weight_decay=-0.1)
    with pytest.raises(ldco.ValidationError, match="learning_rate"):
        ldco.STAR().opt_fn(ldco.STAR().init(jax.random.PRNGKey(0), p), learning_rate=float("nan"))
    gd = ldco.step_size_gd(0.1, weight_decay=0.1)
    with pytest.raises(ldco.ValidationError, match="weight_decay needs params"):
        gd.update(p, gd.init(p))
    for bad in (0, jnp.asarray(0), jnp.ones(2), 2.5):
        with pytest.raises(ldco.ValidationError, match="num_steps"):
            ldco.ScheduledAdam(num_steps=bad)
    with pytest.raises(ldco.ValidationError, match="num_steps"):
        ldco.pretrained.load("learned_prodigy", num_steps=-3)
