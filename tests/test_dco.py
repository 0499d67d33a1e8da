"""DCO update rules against their closed forms, jax.grad and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import learned_dco as ldco

STEPS = 3
# (solver, boxed): the backends that apply to unconstrained and trust-region steps.
BACKENDS = [("exact", False), ("eqqp", False), ("exact", True), ("osqp", True), ("cdqp", True)]


def _params(dtype):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return {
        "dense": {"w": jax.random.normal(k[0], (3, 2), dtype), "b": jax.random.normal(k[1], (2,), dtype)},
        "out": [jax.random.normal(k[2], (2,), dtype), jnp.asarray(0.3, dtype)],
    }


def _loss(params):
    """A smooth non-quadratic loss coupling every leaf."""
    flat = ravel_pytree(params)[0]
    weights = jnp.linspace(0.5, 2.0, flat.size, dtype=flat.dtype)
    return 0.5 * jnp.sum(weights * flat**2) + jnp.sum(jnp.sin(flat)) + 0.1 * jnp.sum(flat) ** 2


def _meta(rule, params, key, dtype):
    """Concrete meta-parameters for each rule: per-leaf lam/m, a dense B."""
    k1, k2 = jax.random.split(key)
    lam = jax.tree.map(lambda p, i: jnp.full(p.shape, 1.5 + 0.25 * i, dtype), params,
                       jax.tree.unflatten(jax.tree.structure(params), range(len(jax.tree.leaves(params)))))
    lam = jax.tree.map(lambda l: l + 0.2 * jax.random.uniform(k1, l.shape, dtype), lam)
    p = ravel_pytree(params)[0].size
    if rule == "dcog":
        return {"lam": lam}
    if rule == "dcogd":
        return {"B": 0.3 * jnp.eye(p, dtype=dtype) + 0.02 * jax.random.normal(k2, (p, p), dtype)}
    m = jax.tree.map(lambda l: jax.random.uniform(k2, l.shape, dtype, 0.2, 0.9), lam)
    return {"lam": lam, "m": m}


def _build(rule, meta, radius, solver):
    kw = dict(radius=radius, solver=solver)
    if rule == "dcog":
        return ldco.dcog_transform(meta["lam"], **kw)
    if rule == "dcogd":
        return ldco.dcogd_transform(meta["B"], **kw)
    return ldco.dcom_transform(meta["lam"], meta["m"], **kw)


def _run(rule, meta, params, radius=None, solver="exact", steps=STEPS):
    tx = _build(rule, meta, radius, solver)

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(_loss)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, tx.init(params)), length=steps)[0][0]


def _closed_form(rule, meta, params, radius=None, steps=STEPS):
    """The paper's closed forms, written independently of the library."""
    clip = (lambda d: d) if radius is None else (lambda d: jnp.clip(d, -radius, radius))
    momentum = jax.tree.map(jnp.zeros_like, params)
    for _ in range(steps):
        g = jax.grad(_loss)(params)
        if rule == "dcog":
            step = jax.tree.map(lambda g, l: clip(g / l**2), g, meta["lam"])
        elif rule == "dcogd":
            flat, unravel = ravel_pytree(g)
            step = jax.tree.map(clip, unravel(meta["B"] @ flat))
        else:
            momentum = jax.tree.map(lambda m, g, s: m * g + (1 - m) * s, meta["m"], g, momentum)
            step = jax.tree.map(lambda s, l: clip(s / l**2), momentum, meta["lam"])
        params = jax.tree.map(jnp.subtract, params, step)
    return params


def _rel_err(a, b):
    return max(float(jnp.max(jnp.abs(x - y) / (1.0 + jnp.abs(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("solver,boxed", BACKENDS)
@pytest.mark.parametrize("rule", ["dcog", "dcogd", "dcom"])
def test_rule_matches_closed_form_under_jit_and_vmap(rule, solver, boxed, precision):
    with jax.enable_x64(precision == "float64"):
        dtype = jnp.dtype(precision)
        params = _params(dtype)
        radius = 0.05 if boxed else None
        tol = 1e-5 if precision == "float32" else 1e-10
        keys = jax.random.split(jax.random.PRNGKey(1), 3)
        metas = [_meta(rule, params, k, dtype) for k in keys]
        batch = jax.tree.map(lambda *xs: jnp.stack(xs), *metas)

        run = jax.jit(jax.vmap(lambda meta: _run(rule, meta, params, radius, solver)))
        out = run(batch)
        ref = jax.jit(jax.vmap(lambda meta: _closed_form(rule, meta, params, radius)))(batch)
        assert _rel_err(out, ref) < tol
        if boxed:  # the trust region is active somewhere, so the box is really exercised
            unboxed = _closed_form(rule, metas[0], params, None, steps=1)
            step = jax.tree.map(jnp.subtract, params, unboxed)
            assert max(float(jnp.max(jnp.abs(s))) for s in jax.tree.leaves(step)) > radius
        assert all(x.dtype == dtype for x in jax.tree.leaves(out))


def _meta_loss(rule, solver, params):
    def f(meta, radius):
        return _loss(_run(rule, meta, params, radius, solver))

    return f


def _meta_loss_ref(rule, params):
    def f(meta, radius):
        return _loss(_closed_form(rule, meta, params, radius))

    return f


@pytest.mark.parametrize("solver,boxed", [("exact", False), ("exact", True), ("osqp", True)])
@pytest.mark.parametrize("rule", ["dcog", "dcogd", "dcom"])
def test_meta_gradient_matches_closed_form_and_finite_differences(rule, solver, boxed, x64):
    params = _params(jnp.float64)
    meta = _meta(rule, params, jax.random.PRNGKey(2), jnp.float64)
    radius = jnp.asarray(0.05 if boxed else jnp.inf) if boxed else None
    f = jax.jit(_meta_loss(rule, solver, params))
    grad = jax.jit(jax.grad(_meta_loss(rule, solver, params), argnums=(0, 1) if boxed else 0))
    g = grad(meta, radius)
    g_ref = jax.jit(jax.grad(_meta_loss_ref(rule, params), argnums=(0, 1) if boxed else 0))(meta, radius)
    assert _rel_err(g, g_ref) < 1e-8
    if boxed:
        assert abs(float(g[1])) > 1e-3  # active constraints: the radius has an effect

    if solver != "exact":
        return  # iterative forward solves: checked against jax.grad of the closed form above
    # Central differences along random directions of the meta-parameters.
    flat_meta, unravel = ravel_pytree(meta)
    flat_grad = ravel_pytree(g[0] if boxed else g)[0]
    eps = 1e-6
    directions = jax.random.normal(jax.random.PRNGKey(10), (3, flat_meta.size), jnp.float64)
    central = jax.jit(jax.vmap(lambda v: (f(unravel(flat_meta + eps * v), radius) - f(unravel(flat_meta - eps * v), radius)) / (2 * eps)))
    np.testing.assert_allclose(directions @ flat_grad, central(directions), rtol=1e-6, atol=1e-8)
    if boxed:
        fd_r = (f(meta, radius + eps) - f(meta, radius - eps)) / (2 * eps)
        np.testing.assert_allclose(float(g[1]), float(fd_r), rtol=1e-6, atol=1e-8)


def test_learned_dco_initialisation_mimics_gradient_descent():
    params = _params(jnp.float32)
    grads = jax.grad(_loss)(params)
    gd = jax.tree.map(lambda g: -0.05 * g, grads)
    for lopt in [ldco.DCOG(learning_rate=0.05), ldco.DCOGD(learning_rate=0.05), ldco.DCOM(learning_rate=0.05, momentum=0.0)]:
        tx = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0), params))
        updates, _ = tx.update(grads, tx.init(params), params)
        assert _rel_err(updates, gd) < 1e-5, type(lopt).__name__
    # DCOM with momentum beta: an exponential moving average, first step (1 - beta) * GD.
    tx = ldco.DCOM(learning_rate=0.05, momentum=0.9).opt_fn(ldco.DCOM(learning_rate=0.05).init(None, params))
    updates, _ = tx.update(grads, tx.init(params), params)
    assert _rel_err(updates, jax.tree.map(lambda g: 0.1 * g, gd)) < 1e-5


def test_learned_meta_parameters_are_unconstrained():
    """Any real meta-parameters give a well-posed step (finite, correct sign)."""
    params = _params(jnp.float32)
    grads = jax.grad(_loss)(params)
    for lopt in [ldco.DCOG(trust_region=True), ldco.DCOM(trust_region=True)]:
        meta = lopt.init(jax.random.PRNGKey(0), params)
        for value in [-1e3, -30.0, 0.0, 30.0, 1e3]:
            wild = jax.tree.map(lambda x: jnp.full_like(x, value), meta)
            tx = lopt.opt_fn(wild)
            updates, _ = tx.update(grads, tx.init(params), params)
            for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
                assert jnp.all(jnp.isfinite(u))
                assert jnp.all(u * g <= 0)  # a descent direction, coordinate-wise


def test_normalized_gradients_make_the_step_scale_free():
    params = _params(jnp.float32)
    grads = jax.grad(_loss)(params)
    tx = ldco.dcog_transform(2.0, normalize=True)
    u1, _ = tx.update(grads, tx.init(params), params)
    u2, _ = tx.update(jax.tree.map(lambda g: 1e4 * g, grads), tx.init(params), params)
    assert _rel_err(u1, u2) < 1e-6
    norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
    assert _rel_err(u1, jax.tree.map(lambda g: -g / norm / 4.0, grads)) < 1e-6


def test_structure_and_shape_mismatches_raise_naming_the_leaf():
    params = _params(jnp.float32)
    bad_shape = jax.tree.map(jnp.ones_like, params)
    bad_shape["dense"]["w"] = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"lam\['dense'\]\['w'\] has shape \(2, 3\)"):
        ldco.dcog_transform(bad_shape).init(params)
    missing = {"dense": params["dense"]}
    with pytest.raises(ValueError, match=r"missing lam\['out'\]"):
        ldco.dcog_transform(jax.tree.map(jnp.ones_like, missing)).init(params)
    with pytest.raises(ValueError, match=r"m\['dense'\]\['w'\] has shape"):
        ldco.dcom_transform(1.0, bad_shape).init(params)
    with pytest.raises(ValueError, match=r"B has shape \(3, 3\).*size 11"):
        ldco.dcogd_transform(jnp.eye(3)).init(params)
    with pytest.raises(ValueError, match="radius"):
        ldco.dcog_transform(1.0, radius=bad_shape).init(params)
    # Learned optimizers: meta-parameters made for one model, used on another.
    meta = ldco.DCOG().init(jax.random.PRNGKey(0), params)
    with pytest.raises(ValueError, match="log_lam|lam"):
        ldco.DCOG().opt_fn(meta).init(missing)
    # Gradients that do not match the parameters.
    tx = ldco.dcog_transform(1.0)
    with pytest.raises(ValueError, match=r"grads\['dense'\]\['w'\] has shape"):
        tx.update(bad_shape, tx.init(params), params)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))


def test_ill_posed_meta_parameters_raise():
    with pytest.raises(ValueError, match="lam must be nonzero"):
        ldco.dcog_transform(0.0)
    with pytest.raises(ValueError, match=r"lam\['a'\] must be nonzero"):
        ldco.dcom_transform({"a": jnp.array([1.0, 0.0])}, 0.5)
    with pytest.raises(ValueError, match=r"m must be in \[0, 1\]"):
        ldco.dcom_transform(1.0, 1.5)
    with pytest.raises(ValueError, match="radius must be > 0"):
        ldco.dcog_transform(1.0, radius=-0.1)
    with pytest.raises(ValueError, match="non-finite"):
        ldco.dcogd_transform(jnp.full((2, 2), jnp.nan))
    with pytest.raises(ValueError, match="learning_rate"):
        ldco.DCOG(learning_rate=0.0)
    with pytest.raises(ValueError, match="momentum"):
        ldco.DCOM(momentum=1.0)
    with pytest.raises(ValueError, match="solver"):
        ldco.DCOGD(solver="cvxpy")


def test_nonfinite_gradients_are_skipped_then_surface():
    """Documented behaviour: a NaN/Inf gradient step is skipped (zero update, state kept,
    counted); after max_consecutive_nonfinite skips in a row the update passes through."""
    params = _params(jnp.float32)
    grads = jax.grad(_loss)(params)
    bad = jax.tree.map(lambda g: g.at[...].set(jnp.nan) if g.ndim == 0 else g.at[0].set(jnp.inf), grads)
    tx = ldco.dcom_transform(2.0, 0.5, max_consecutive_nonfinite=2)
    update = jax.jit(tx.update)
    _, state = update(grads, tx.init(params), params)
    momentum = state.inner_state.momentum
    for count in (1, 2):
        updates, state = update(bad, state, params)
        assert all(jnp.all(u == 0) for u in jax.tree.leaves(updates))
        assert int(state.total_notfinite) == count
        assert _rel_err(state.inner_state.momentum, momentum) == 0.0
    updates, state = update(bad, state, params)  # third in a row: passes through
    assert not all(jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates))
    # Without the guard the non-finite step is applied as is.
    raw = ldco.dcog_transform(2.0, max_consecutive_nonfinite=None)
    updates, _ = raw.update(bad, raw.init(params), params)
    assert not all(jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates))


def test_solver_values_and_impossible_combinations_fail_at_construction():
    """A name and the value it maps to build the same optimizer; a solver that cannot handle
    the step's constraints fails when the optimizer is built, naming both settings."""
    assert ldco.DCOG(solver="osqp", maxiter=50).solver == ldco.DCOG(solver=ldco.qp.OSQP(maxiter=50)).solver == ldco.qp.OSQP(maxiter=50)
    assert ldco.DCOG(solver="eqqp") == ldco.DCOG(solver=ldco.qp.EqQP())
    assert ldco.DCOGD(solver="eqqp").solver == ldco.qp.EqQP()
    for cls in (ldco.DCOG, ldco.DCOGD, ldco.DCOM):
        with pytest.raises(ValueError, match=r"trust_region=True.*solver='eqqp' \(qp.EqQP\)"):
            cls(trust_region=True, solver="eqqp")
        with pytest.raises(ValueError, match=r"trust_region=True.*solver='eqqp'"):
            cls(trust_region=True, solver=ldco.qp.EqQP(tol=1e-8))
        cls(trust_region=True, solver=ldco.qp.CDQP(maxiter=10))  # boxes: fine
    with pytest.raises(ValueError, match=r"dcog_transform: radius.*solver='eqqp'"):
        ldco.dcog_transform(1.0, radius=0.1, solver="eqqp")
    with pytest.raises(ValueError, match=r"maxiter=5 conflicts with solver=OSQP\(tol=None, maxiter=7\)"):
        ldco.DCOG(solver=ldco.qp.OSQP(maxiter=7), maxiter=5)
    assert ldco.DCOGD(tol=1e-6).solver == ldco.qp.Exact()  # YAML shorthand: no such option, ignored
    assert ldco.DCOGD(solver="cdqp", tol=1e-6).solver == ldco.qp.CDQP(tol=1e-6)
    # The value's options reach the solve: a one-iteration OSQP gives a visibly worse step.
    params = _params(jnp.float32)
    grads = jax.grad(_loss)(params)
    meta = ldco.DCOG().init(None, params)
    meta["log_radius"] = jax.tree.map(lambda p: jnp.full(p.shape, -3.0), params)
    steps = {}
    for name, solver in [("exact", "exact"), ("early", ldco.qp.OSQP(maxiter=1))]:
        lopt = ldco.DCOG(trust_region=True, solver=solver)
        tx = lopt.opt_fn(meta)
        steps[name], state = tx.update(grads, tx.init(params), params)
        steps[name + "_residual"] = float(state.inner_state.qp_residual)
    assert steps["early_residual"] > 1e-3 > steps["exact_residual"]


def test_nonfinite_guard_matches_apply_if_finite_and_keeps_meta_gradients_finite(x64):
    """The select-based guard reproduces optax.apply_if_finite step by step (updates and
    every state field) on a gradient stream with NaN/Inf runs, under vmap with a batched
    predicate; and the meta-gradient through a skipped step is finite and equals the
    meta-gradient of the run without that step."""
    params = _params(jnp.float64)
    grads = jax.grad(_loss)(params)
    bad = jax.tree.map(lambda g: jnp.full_like(g, jnp.nan), grads)
    stream = [grads, bad, bad, bad, jax.tree.map(lambda g: 0.5 * g, grads), bad]
    from learned_dco.optimizers.base import guard_nonfinite as skip_nonfinite

    def run(tx, stream):
        state, outs = tx.init(params), []
        for g in stream:
            u, state = tx.update(g, state, params)
            outs.append(u)
        return outs, state

    inner = ldco.dcom_transform(2.0, 0.5, max_consecutive_nonfinite=None)
    mine = jax.jit(jax.vmap(lambda s: run(skip_nonfinite(inner, 2), s)))
    ref = jax.jit(jax.vmap(lambda s: run(optax.apply_if_finite(inner, 2), s)))
    # two streams in one batch: the predicate differs per task
    streams = jax.tree.map(lambda a, b: jnp.stack([a, b]), stream, [grads] * len(stream))
    (u1, s1), (u2, s2) = mine(streams), ref(streams)
    for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(s1.total_notfinite[0]) == 4 and int(s1.total_notfinite[1]) == 0

    # Meta-gradient through a skipped step: DCOGD with a shared B over a batch where one task
    # sees a NaN gradient at step 2.
    B = 0.2 * jnp.eye(ravel_pytree(params)[0].size)
    flags = jnp.array([False, True])  # NaN injected by a select, whose own derivative is finite

    def meta_loss(B, skip_nan):
        tx = ldco.dcogd_transform(B)

        def one(flag):
            p, state = params, tx.init(params)
            for i in range(3):
                g = jax.grad(_loss)(p)
                if i == 1 and skip_nan:
                    g = jax.tree.map(lambda x: jnp.where(flag, jnp.nan, x), g)
                u, state = tx.update(g, state, p)
                p = optax.apply_updates(p, u)
            return _loss(p)

        return jnp.sum(jax.vmap(one)(flags))

    g_skip = jax.jit(jax.grad(meta_loss), static_argnums=1)(B, True)
    assert bool(jnp.all(jnp.isfinite(g_skip)))

    def ref_loss(B):  # task 0: three steps; task 1: step 2 skipped (two steps)
        tx = ldco.dcogd_transform(B, max_consecutive_nonfinite=None)
        total = 0.0
        for steps in ((0, 1, 2), (0, 2)):
            p, state = params, tx.init(params)
            for _ in steps:
                u, state = tx.update(jax.grad(_loss)(p), state, p)
                p = optax.apply_updates(p, u)
            total = total + _loss(p)
        return total

    np.testing.assert_allclose(g_skip, jax.jit(jax.grad(ref_loss))(B), rtol=1e-10, atol=1e-12)


def test_the_builders_old_names_warn_and_give_the_new_ones():
    """The deprecated builder names (``ldco.dcog``, ...) resolve to the ``*_transform``
    builders with a DeprecationWarning naming the new name; ``ldco.DCOG`` is the class."""
    from learned_dco import optimizers

    for old in ("dcog", "dcogd", "dcom", "metamd"):
        new = getattr(ldco, f"{old}_transform")
        with pytest.warns(DeprecationWarning, match=rf"learned_dco\.{old} is deprecated.*use learned_dco\.{old}_transform"):
            assert getattr(ldco, old) is new
        with pytest.warns(DeprecationWarning, match=rf"use learned_dco\.optimizers\.{old}_transform"):
            assert getattr(optimizers, old) is new
        assert old not in ldco.__all__ and f"{old}_transform" in ldco.__all__
    assert ldco.dcog_transform is not ldco.DCOG
    with pytest.raises(AttributeError, match="has no attribute 'dcogx'"):
        ldco.dcogx


@pytest.mark.parametrize("cls", [ldco.DCOG, ldco.DCOGD, ldco.DCOM])
def test_learned_trust_region_limits_the_step_to_the_radius(cls):
    """A learned DCO optimizer with ``trust_region=True`` starts with the box radius
    ``init_radius`` (a ``log_radius`` like params) and its first step is the trust-region
    closed form ``-clip(c lr g, -r, r)`` (``c = 1 - momentum`` for DCOM's averaged gradient,
    1 otherwise): the unconstrained step where that is inside the box, the radius elsewhere."""
    params = _params(jnp.float32)
    grads = jax.grad(_loss)(params)
    lr = 0.1
    scale = 0.1 if cls is ldco.DCOM else 1.0  # DCOM: the default momentum 0.9
    radius = 0.08 * scale
    lopt = cls(learning_rate=lr, trust_region=True, init_radius=radius)
    assert scale == pytest.approx(1.0 - lopt.momentum if cls is ldco.DCOM else 1.0)
    meta = lopt.init(None, params)
    assert jax.tree.structure(meta["log_radius"]) == jax.tree.structure(params)
    free = jax.tree.map(lambda g: scale * lr * g, grads)
    inside = sum(int(jnp.sum(jnp.abs(f) < radius)) for f in jax.tree.leaves(free))
    assert 0 < inside < ravel_pytree(params)[0].size  # both clipped and free coordinates
    tx = lopt.opt_fn(meta)
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = jax.tree.map(lambda f: -jnp.clip(f, -radius, radius), free)
    assert _rel_err(updates, expected) < 1e-5
    # the radius is learned: a larger one lets the free step through
    meta["log_radius"] = jax.tree.map(lambda r: r + 10.0, meta["log_radius"])
    updates, _ = lopt.opt_fn(meta).update(grads, tx.init(params), params)
    assert _rel_err(updates, jax.tree.map(jnp.negative, free)) < 1e-5
