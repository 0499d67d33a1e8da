"""The general DCO builder: DCOG/DCOGD/DCOM/MetaMD written as step QPs reproduce the
hand-written rules (values and meta-gradients); constrained steps keep every iterate
feasible and match independent references (clipping; Euclidean projection onto the
simplex), with meta-gradients against float64 central differences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import learned_dco as ldco
from learned_dco import qp
from learned_dco.optimizers.general import GeneralDCOState, LearnedDCO, StepQP, general_dco


def _loss(params):
    flat = ravel_pytree(params)[0]
    w = jnp.linspace(0.5, 2.0, flat.size, dtype=flat.dtype)
    return 0.5 * jnp.sum(w * flat**2) + jnp.sum(jnp.sin(flat)) + 0.1 * jnp.sum(flat) ** 2


def _params():
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    return {"w": jax.random.normal(k[0], (3, 2), jnp.float64), "b": jax.random.normal(k[1], (2,), jnp.float64)}


def _run(tx, params, steps=3):
    state = tx.init(params)
    for _ in range(steps):
        u, state = tx.update(jax.grad(_loss)(params), state, params)
        params = optax.apply_updates(params, u)
    return params, state


def _dcog_step(meta, g, params, state):
    return StepQP(qp.Diagonal(jax.tree.map(jnp.square, meta["lam"])), g), state


def _dcogd_step(meta, g, params, state):
    flat, unravel = ravel_pytree(g)
    return StepQP(qp.ScaledIdentity(jnp.ones((), flat.dtype)), unravel(meta["B"] @ flat)), state


def _dcom_step(meta, g, params, s):
    s = jax.tree.map(lambda m, gi, si: m * gi + (1 - m) * si, meta["m"], g, s)
    return StepQP(qp.Diagonal(jax.tree.map(jnp.square, meta["lam"])), s), s


def _metamd_step(meta, g, params, state):
    A, B, eta = meta["A"], meta["B"], meta["eta"]
    op = qp.BlockDiagonal({"w": qp.Kronecker(A / eta, B), "b": qp.Diagonal(meta["d"] / eta)})
    return StepQP(op, g), state


def _rel(a, b):
    return max(float(jnp.max(jnp.abs(x - y) / (1 + jnp.abs(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_general_builder_reproduces_dcog_dcogd_dcom_and_metamd(x64):
    params = _params()
    lam = jax.tree.map(lambda p: 1.5 + 0.1 * jnp.abs(p), params)
    m = jax.tree.map(lambda p: 0.3 + 0.05 * jnp.abs(p), params)
    p = ravel_pytree(params)[0].size
    B = 0.3 * jnp.eye(p) + 0.02 * jax.random.normal(jax.random.PRNGKey(1), (p, p), jnp.float64)
    spd = lambda n, k: (lambda a: a @ a.T / n + jnp.eye(n))(jax.random.normal(jax.random.PRNGKey(k), (n, n), jnp.float64))
    A3, B2, d = spd(3, 2), spd(2, 3), jnp.array([1.3, 0.7])
    cases = [
        ({"lam": lam}, _dcog_step, None, lambda meta: ldco.dcog_transform(meta["lam"])),
        ({"B": B}, _dcogd_step, None, lambda meta: ldco.dcogd_transform(meta["B"])),
        ({"lam": lam, "m": m}, _dcom_step, lambda p: jax.tree.map(jnp.zeros_like, p), lambda meta: ldco.dcom_transform(meta["lam"], meta["m"])),
        ({"A": A3, "B": B2, "d": d, "eta": jnp.asarray(0.2)}, _metamd_step, None,
         lambda meta: ldco.metamd_transform({"w": qp.Kronecker(meta["A"], meta["B"]), "b": meta["d"]}, meta["eta"])),
    ]
    for meta, step, init_state, reference in cases:
        mine = lambda meta: _loss(_run(general_dco(meta, step, init_state=init_state), params)[0])
        ref = lambda meta: _loss(_run(reference(meta), params)[0])
        out, _ = _run(general_dco(meta, step, init_state=init_state), params)
        assert _rel(out, _run(reference(meta), params)[0]) < 1e-12
        assert _rel(jax.grad(mine)(meta), jax.grad(ref)(meta)) < 1e-10


def _simplex_projection(v):
    """Euclidean projection onto {x >= 0, sum x = 1} by sorting (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    k = np.nonzero(u * np.arange(1, v.size + 1) > (css - 1))[0][-1]
    tau = (css[k] - 1) / (k + 1)
    return np.maximum(v - tau, 0.0)


def _simplex_step(meta, g, params, state):
    """theta+ = argmin g.theta + lam^2/2 ||theta - theta_t||^2 over the simplex."""
    n = params.size
    Q = qp.ScaledIdentity(meta["lam"] ** 2)
    return StepQP(Q, g, A=jnp.ones((1, n)), b=jnp.zeros(1), G=-jnp.eye(n), h=params), state


def _nonneg_step(meta, g, params, state):
    return StepQP(qp.Diagonal(meta["lam"] ** 2), g, lo=-params), state


def test_constrained_steps_stay_feasible_and_match_projections(x64):
    target = jnp.array([0.7, -0.2, 0.4, 0.1, -0.5])
    loss = lambda th: 0.5 * jnp.sum((th - target) ** 2 * jnp.arange(1.0, 6.0))
    theta = jnp.full(5, 0.2)
    simplex = LearnedDCO(lambda k, p: {"lam": jnp.asarray(1.5)}, _simplex_step, solver="osqp", constraints=("eq", "ineq"))
    tx = simplex.opt_fn(simplex.init(None, theta))
    state, th = tx.init(theta), theta
    for _ in range(4):
        g = jax.grad(loss)(th)
        u, state = jax.jit(tx.update)(g, state, th)
        expected = _simplex_projection(np.asarray(th - g / 1.5**2))
        th = th + u
        np.testing.assert_allclose(th, expected, atol=1e-8)
        assert float(jnp.min(th)) > -1e-9 and abs(float(jnp.sum(th)) - 1) < 1e-9
        assert int(state.inner_state.qp_status) == qp.SOLVED
    assert int(jnp.sum(th < 1e-9)) >= 1  # the nonnegativity constraint is active

    nonneg = general_dco({"lam": jnp.full(5, 1.2)}, _nonneg_step, constraints=("box",))
    out, _ = _run_plain(nonneg, loss, theta, 4)
    ref = theta
    for _ in range(4):
        ref = jnp.maximum(ref - jax.grad(loss)(ref) / 1.44, 0.0)
    np.testing.assert_allclose(out, ref, atol=1e-12)


def _run_plain(tx, loss, theta, steps):
    state = tx.init(theta)
    for _ in range(steps):
        u, state = tx.update(jax.grad(loss)(theta), state, theta)
        theta = theta + u
    return theta, state


def test_meta_gradient_through_constrained_steps_matches_finite_differences(x64):
    target = jnp.array([0.7, -0.2, 0.4, 0.1, -0.5])
    loss = lambda th: 0.5 * jnp.sum((th - target) ** 2 * jnp.arange(1.0, 6.0))
    theta = jnp.full(5, 0.2)

    def meta_loss(lam):
        tx = general_dco({"lam": lam}, _simplex_step, solver="osqp", constraints=("eq", "ineq"))
        return loss(_run_plain(tx, loss, theta, 3)[0])

    f = jax.jit(meta_loss)
    g = jax.jit(jax.grad(meta_loss))(jnp.asarray(1.5))
    eps = 1e-6
    fd = (f(1.5 + eps) - f(1.5 - eps)) / (2 * eps)
    assert abs(float(g)) > 1e-3
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-6, atol=1e-9)


def test_solver_and_constraints_are_checked_when_built():
    init = lambda k, p: {"lam": jnp.asarray(1.0)}
    with pytest.raises(ValueError, match=r"constraints=\('ineq',\) needs ineq constraints, which solver='exact'"):
        LearnedDCO(init, _simplex_step, constraints=("ineq",))
    with pytest.raises(ValueError, match=r"constraints=\('box',\) needs box constraints, which solver='eqqp'"):
        general_dco({"lam": 1.0}, _nonneg_step, solver="eqqp", constraints=("box",))
    with pytest.raises(ValueError, match="unknown constraint kinds"):
        general_dco({}, _dcog_step, constraints=("cone",))
    tx = general_dco({"lam": jnp.ones(5)}, _nonneg_step)  # box not declared
    with pytest.raises(ValueError, match=r"poses box constraints not declared"):
        tx.update(jnp.ones(5), tx.init(jnp.ones(5)), jnp.ones(5))
    assert isinstance(general_dco({"lam": 1.0}, _dcog_step, max_consecutive_nonfinite=None).init(jnp.ones(2)), GeneralDCOState)


def test_public_builders_are_general_dco_instances_with_their_state_types(x64):
    """dcog/dcogd/dcom/metamd_transform run through general_dco: their states are GeneralDCOState
    subclasses (DCOMState.momentum is the inner state, the closed-form EMA of the gradients),
    the QP status is reported, and errors name the public builder."""
    from learned_dco.optimizers.dco import DCOMState, DCOState
    from learned_dco.optimizers.mirror import MirrorState

    params = _params()
    p = ravel_pytree(params)[0].size
    g0 = jax.grad(_loss)(params)
    factors = {"w": qp.Kronecker(jnp.eye(3), jnp.eye(2)), "b": jnp.ones(2)}
    cases = [(ldco.dcog_transform(2.0, radius=0.05), DCOState), (ldco.dcogd_transform(0.3 * jnp.eye(p)), DCOState),
             (ldco.dcom_transform(2.0, 0.25), DCOMState), (ldco.optimizers.mirror.metamd_transform(factors, 0.1), MirrorState)]
    for tx, cls in cases:
        state = tx.init(params)
        assert type(state.inner_state) is cls and isinstance(state.inner_state, GeneralDCOState)
        u, state = tx.update(g0, state, params)
        assert int(state.inner_state.qp_status) == qp.SOLVED
        assert jax.tree.structure(u) == jax.tree.structure(params)
        assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(params)))
    # DCOM's momentum after two steps from zeros: s2 = m g1 + (1 - m) m g0.
    tx = ldco.dcom_transform(2.0, 0.25)
    state = tx.init(params)
    u, state = tx.update(g0, state, params)
    p1 = optax.apply_updates(params, u)
    g1 = jax.grad(_loss)(p1)
    _, state = tx.update(g1, state, p1)
    expected = jax.tree.map(lambda a, b: 0.25 * b + 0.75 * 0.25 * a, g0, g1)
    assert _rel(state.inner_state.momentum, expected) < 1e-14
    with pytest.raises(ValueError, match="^dcom_transform: update"):
        ldco.dcom_transform(2.0, 0.25).update(g0, ldco.dcom_transform(2.0, 0.25).init(params))
    with pytest.raises(TypeError, match="state_type"):
        general_dco({"lam": 1.0}, _dcog_step, state_type=tuple)


def test_float64_params_give_float64_updates_and_state(x64):
    """With float64 params the step, the state and its QP residual are float64: the DCOG
    step equals ``-g / lam^2`` to float64 round-off, and an unconverged iterative step (one
    coordinate-descent sweep on a coupled box QP) stores the residual of the step it returns,
    ``||d - clip(d - (Q d + g), lo, hi)||_inf``, recomputed here, to float64 precision."""
    params = _params()
    g = jax.grad(_loss)(params)
    lam = jax.tree.map(lambda p: jnp.full(p.shape, 1.7, p.dtype), params)
    tx = general_dco({"lam": lam}, _dcog_step)
    state = tx.init(params)
    assert state.inner_state.qp_residual.dtype == jnp.float64
    u, state = tx.update(g, state, params)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves((u, state)) if jnp.issubdtype(x.dtype, jnp.floating))
    assert _rel(u, jax.tree.map(lambda gi: -gi / 1.7**2, g)) < 1e-15

    flat = ravel_pytree(params)[0]
    a = jax.random.normal(jax.random.PRNGKey(5), (flat.size, flat.size), jnp.float64)
    Q = a @ a.T / flat.size + 0.1 * jnp.eye(flat.size)
    r = 0.3

    def dense_step(meta, g, params, state):
        box = jax.tree.map(lambda p: jnp.full(p.shape, r, p.dtype), params)
        return StepQP(qp.Dense(meta["Q"]), g, lo=jax.tree.map(jnp.negative, box), hi=box), state

    tx = general_dco({"Q": Q}, dense_step, solver=qp.CDQP(maxiter=1), constraints=("box",))
    u, state = tx.update(g, tx.init(params), params)
    d, gf = ravel_pytree(u)[0], ravel_pytree(g)[0]
    residual = jnp.max(jnp.abs(d - jnp.clip(d - (Q @ d + gf), -r, r)))
    assert float(residual) > 1e-3  # unconverged: a residual float32 would round
    assert state.inner_state.qp_residual.dtype == jnp.float64
    np.testing.assert_allclose(float(state.inner_state.qp_residual), float(residual), rtol=1e-13)
