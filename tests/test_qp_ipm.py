"""The interior-point QP backend (``qp.IPM``, :mod:`learned_dco.qp_ipm`) in float64 against
the active-set enumeration of tests/test_qp_constraints.py: solutions, implicit gradients
at active constraints against central finite differences and against the OSQP backend's
(independent: jaxopt's ADMM plus the implicit function theorem through ``custom_root``),
a vmapped batch against per-problem solves, boxes with infinite bounds, and infeasible or
ill-posed input reported as a status."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_dco import qp
from tests.test_qp_constraints import _enumerate_active_sets, _fd, _problem


def _solve(Q, c, A, b, G, h, solver=qp.IPM()):
    return qp.solve_qp(qp.Dense(jnp.asarray(Q)), jnp.asarray(c), A, b, G, h, solver=solver)


@pytest.mark.parametrize("seed", range(6))
def test_ipm_matches_active_set_enumeration(seed, x64):
    Q, c, A, b, G, h = _problem(seed, n_eq=1 + seed % 2)
    ref = _enumerate_active_sets(Q, c, A, b, G, h)
    sol = jax.jit(lambda c: _solve(Q, c, A, b, G, h))(jnp.asarray(c))
    np.testing.assert_allclose(sol.x, ref, atol=1e-9)
    assert int(sol.status) == qp.SOLVED
    assert float(sol.primal_residual) < 1e-9 and float(sol.dual_residual) < 1e-9
    assert 0 < int(sol.iterations) <= 30
    if seed == 0:
        assert np.sum(np.abs(G @ ref - h) < 1e-8) >= 1  # active inequalities are exercised


def test_ipm_with_equality_rows_only_is_the_kkt_solution(x64):
    """No inequality rows and no bounds: the IPM reduces to the equality-constrained QP, whose
    minimiser solves the KKT system [[Q, A^T], [A, 0]] [x; y] = [-c; b]."""
    Q, c, A, b, _, _ = _problem(1, n_eq=2)
    n, m = len(c), len(b)
    kkt = np.block([[Q, A.T], [A, np.zeros((m, m))]])
    ref = np.linalg.solve(kkt, np.concatenate([-c, b]))[:n]
    sol = _solve(Q, c, jnp.asarray(A), jnp.asarray(b), None, None)
    assert int(sol.status) == qp.SOLVED
    np.testing.assert_allclose(sol.x, ref, atol=1e-9)


def test_ipm_box_with_infinite_bounds_matches_enumeration(x64):
    """A box stacked into G with an infinite bound on some coordinates (those rows must be
    inert) next to general rows: against the enumeration with the finite bounds as rows."""
    Q, c, A, b, G, h = _problem(3)
    lo = np.array([-0.2, -np.inf, -0.1, -np.inf])
    hi = np.array([np.inf, 0.1, 0.05, np.inf])
    fin_lo, fin_hi = np.isfinite(lo), np.isfinite(hi)
    eye = np.eye(4)
    G_all = np.concatenate([G, eye[fin_hi], -eye[fin_lo]])
    h_all = np.concatenate([h, hi[fin_hi], -lo[fin_lo]])
    ref = _enumerate_active_sets(Q, c, A, b, G_all, h_all)
    assert np.sum(np.abs(G_all[4:] @ ref - h_all[4:]) < 1e-8) >= 1  # a bound is active
    sol = qp.solve_qp(qp.Dense(jnp.asarray(Q)), jnp.asarray(c), A, b, G, h, lo=jnp.asarray(lo),
                      hi=jnp.asarray(hi), solver="ipm")
    np.testing.assert_allclose(sol.x, ref, atol=1e-9)
    assert int(sol.status) == qp.SOLVED


def test_ipm_implicit_gradients_at_active_constraints(x64):
    """Gradients w.r.t. every input (c, b, h, A, G, Q) against float64 central differences
    and against the OSQP backend's implicit gradients, at a strictly complementary point."""
    Q, c, A, b, G, h = _problem(0)
    ref = _enumerate_active_sets(Q, c, A, b, G, h)
    slack = h - G @ ref
    # fewer active rows than unknowns, so x* moves with c and Q (not pinned by the rows)
    assert 1 <= np.sum(slack < 1e-8) < 3 and np.min(slack[slack > 1e-8], initial=1.0) > 1e-3
    w = jnp.arange(1.0, 5.0)

    def f(c, b, h, A, G, Qm, solver):
        x = qp.solve_qp(qp.Dense(Qm), c, A, b, G, h, solver=solver).x
        return jnp.sum(jnp.cos(w * x))

    args = tuple(jnp.asarray(v) for v in (c, b, h, A, G, Q))
    grads = jax.jit(jax.grad(lambda *a: f(*a, qp.IPM()), argnums=tuple(range(6))))(*args)
    osqp = jax.jit(jax.grad(lambda *a: f(*a, qp.OSQP()), argnums=tuple(range(6))))(*args)
    fj = jax.jit(lambda *a: f(*a, qp.IPM()))
    for i in range(5):
        def fi(z, i=i):
            a = list(args)
            a[i] = jnp.asarray(z)
            return float(fj(*a))
        np.testing.assert_allclose(grads[i], _fd(fi, args[i]), atol=1e-6, err_msg=f"argument {i}")
        np.testing.assert_allclose(grads[i], osqp[i], atol=1e-8, err_msg=f"argument {i} vs OSQP")
    assert np.abs(np.asarray(grads[2])).max() > 1e-3  # an active h really moves x
    assert np.abs(np.asarray(grads[0])).max() > 1e-3  # and so does c
    V = jnp.asarray(np.random.default_rng(1).normal(size=(4, 4)))
    V = V + V.T
    fq = lambda t: float(fj(*args[:5], args[5] + t * V))
    np.testing.assert_allclose(jnp.vdot(grads[5], V), (fq(1e-6) - fq(-1e-6)) / 2e-6, atol=1e-6)
    np.testing.assert_allclose(grads[5], osqp[5], atol=1e-8)


def test_ipm_gradient_at_a_weakly_active_constraint_is_one_sided(x64):
    """x_0 >= 0 weakly active (zero multiplier): the gradient is finite and one of the two
    one-sided derivatives; the smooth directions are exact."""
    Q = qp.Dense(jnp.eye(3))
    G, h = -jnp.eye(3), jnp.zeros(3)
    c = jnp.array([0.0, -1.0, 0.5])
    f = lambda c: jnp.sum(jnp.array([1.0, 2.0, 3.0]) * qp.solve_qp(Q, c, G=G, h=h, solver="ipm").x)
    g = jax.grad(f)(c)
    assert bool(jnp.all(jnp.isfinite(g)))
    assert min(abs(float(g[0]) - 0.0), abs(float(g[0]) + 1.0)) < 1e-6
    np.testing.assert_allclose(g[1:], [-2.0, 0.0], atol=1e-6)


def test_ipm_vmapped_batch_equals_per_problem_solves(x64):
    """Different problems in one vmapped batch (each converges in its own number of
    iterations; the fixed loop freezes the finished ones) equal their separate solves."""
    probs = [_problem(s) for s in range(4)]
    stack = [jnp.asarray(np.stack(v)) for v in zip(*probs)]
    batch = jax.jit(jax.vmap(lambda Q, c, A, b, G, h: qp.solve_qp(qp.Dense(Q), c, A, b, G, h, solver="ipm")))(*stack)
    for i, prob in enumerate(probs):
        np.testing.assert_allclose(batch.x[i], _enumerate_active_sets(*prob), atol=1e-9)
    assert np.all(np.asarray(batch.status) == qp.SOLVED)
    assert len(set(np.asarray(batch.iterations).tolist())) > 1  # members did stop at different counts


def test_ipm_infeasible_and_ill_posed_input_give_a_status(x64):
    Q = qp.Dense(jnp.eye(3))
    A, b = jnp.ones((1, 3)), jnp.ones(1)  # sum x = 1 ...
    G = -jnp.eye(3)
    run = jax.jit(lambda h: qp.solve_qp(Q, jnp.zeros(3), A, b, G, h, solver="ipm"))
    bad = run(-jnp.ones(3))  # ... and every x_i >= 1
    assert int(bad.status) == qp.PRIMAL_INFEASIBLE
    assert bool(jnp.all(jnp.isfinite(bad.x))) and float(bad.primal_residual) > 0.1
    good = run(jnp.zeros(3))
    assert int(good.status) == qp.SOLVED
    np.testing.assert_allclose(good.x, np.full(3, 1 / 3), atol=1e-10)
    # too few iterations: reported as not converged
    early = qp.solve_qp(Q, jnp.arange(3.0), A, b, G, jnp.zeros(3), solver=qp.IPM(iterations=1))
    assert int(early.status) == qp.NOT_CONVERGED
    # contradictory equality rows (x_0 = 0 and x_0 = 1): no crash, a non-SOLVED status
    rows = qp.solve_qp(Q, jnp.ones(3), jnp.array([[1.0, 0, 0], [1.0, 0, 0]]), jnp.array([0.0, 1.0]),
                       G, jnp.zeros(3), solver="ipm")
    assert int(rows.status) != qp.SOLVED


def test_ipm_float32_and_options():
    sol = qp.solve_qp(qp.Dense(jnp.eye(3)), jnp.array([0.5, 1.0, 2.0]), jnp.ones((1, 3)), jnp.ones(1),
                      -jnp.eye(3), jnp.zeros(3), solver="ipm")
    assert sol.x.dtype == jnp.float32 and int(sol.status) == qp.SOLVED
    np.testing.assert_allclose(sol.x, [0.75, 0.25, 0.0], atol=1e-5)  # x0 - x1 = 0.5, x2 = 0
    assert qp.as_solver("ipm") == qp.IPM() and qp.IPM().supports("box", "eq", "ineq")
    with pytest.raises(ValueError, match=r"qp.IPM.iterations must be an int >= 1"):
        qp.IPM(iterations=0)
    with pytest.raises(ValueError, match=r"qp.IPM.tol must be a float > 0"):
        qp.IPM(tol=-1.0)
    with pytest.raises(ValueError, match=r"qp.IPM has no option maxiter"):
        qp.IPM().with_options(maxiter=3)


def test_osqp_runs_float32_data_with_x64_on_and_half_precision_is_a_named_error():
    """BoxOSQP's loop mixes in the default float dtype; float32 data with x64 on is solved
    (in float64, cast back) and agrees with the interior-point solve; float16 data is
    refused by name before any solver runs."""
    f32 = jnp.float32
    args = (jnp.arange(3.0, dtype=f32) - 1.0, jnp.ones((1, 3), f32), jnp.ones(1, f32), -jnp.eye(3, dtype=f32),
            jnp.zeros(3, f32))
    with jax.enable_x64(True):
        osqp = qp.solve_qp(qp.Dense(jnp.eye(3, dtype=f32)), *args, solver="osqp")
        ipm = qp.solve_qp(qp.Dense(jnp.eye(3, dtype=f32)), *args, solver="ipm")
    assert osqp.x.dtype == f32 and int(osqp.status) == qp.SOLVED
    np.testing.assert_allclose(osqp.x, [1.0, 0.0, 0.0], atol=1e-5)  # x0 - x1 = 1 would need x1 < 0
    np.testing.assert_allclose(osqp.x, ipm.x, atol=1e-5)
    half = [jnp.asarray(v, jnp.float16) for v in args]
    for solver in ["osqp", "ipm"]:
        with pytest.raises(ValueError, match=rf"solver='{solver}' .* float32 or float64 .* got float16 data"):
            qp.solve_qp(qp.Dense(jnp.eye(3, dtype=jnp.float16)), *half, solver=solver)
