"""General linear constraints in the QP layer: solutions against active-set enumeration,
KKT residuals, infeasibility as a status inside jit, implicit gradients against float64
central finite differences at active and weakly active constraints, and hypothesis
property tests over random operators, boxes and dtypes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from learned_dco import qp


def _enumerate_active_sets(Q, c, A, b, G, h):
    """Reference minimiser of 1/2 x'Qx + c'x s.t. Ax = b, Gx <= h by enumerating every
    active set of G (numpy, float64): solve the KKT system with those rows as equalities,
    keep the points that are feasible with nonnegative multipliers, return the best."""
    Q, c, A, b, G, h = (np.asarray(v, np.float64) for v in (Q, c, A, b, G, h))
    n, best = c.size, None
    for k in range(G.shape[0] + 1):
        for active in itertools.combinations(range(G.shape[0]), k):
            E = np.concatenate([A, G[list(active)]]) if active else A
            f = np.concatenate([b, h[list(active)]]) if active else b
            m = E.shape[0]
            K = np.block([[Q, E.T], [E, np.zeros((m, m))]])
            try:
                sol = np.linalg.solve(K, np.concatenate([-c, f]))
            except np.linalg.LinAlgError:
                continue
            x, mult = sol[:n], sol[n + A.shape[0]:]
            if np.all(G @ x <= h + 1e-9) and np.all(mult >= -1e-9):
                val = 0.5 * x @ Q @ x + c @ x
                if best is None or val < best[1] - 1e-12:
                    best = (x, val)
    return best[0]


def _problem(seed, n=4, n_eq=1, n_ineq=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    Q = M @ M.T / n + 0.5 * np.eye(n)
    c = rng.normal(size=n)
    A = rng.normal(size=(n_eq, n))
    G = rng.normal(size=(n_ineq, n))
    x0 = rng.normal(size=n)  # a feasible point: h has slack at x0
    b = A @ x0
    h = G @ x0 + rng.uniform(0.0, 0.5, n_ineq)
    return tuple(np.asarray(v, dtype) for v in (Q, c, A, b, G, h))


@pytest.mark.parametrize("seed", range(6))
def test_general_qp_matches_active_set_enumeration_with_small_kkt_residual(seed, x64):
    Q, c, A, b, G, h = _problem(seed)
    ref = _enumerate_active_sets(Q, c, A, b, G, h)
    sol = jax.jit(lambda c: qp.solve_qp(qp.Dense(jnp.asarray(Q)), c, A, b, G, h, solver="osqp"))(jnp.asarray(c))
    np.testing.assert_allclose(sol.x, ref, atol=1e-8)
    assert int(sol.status) == qp.SOLVED
    assert float(sol.primal_residual) < 1e-9 and float(sol.dual_residual) < 1e-9
    n_active = int(np.sum(np.abs(G @ ref - h) < 1e-8))
    if seed == 0:
        assert n_active >= 1  # the reference really exercises active inequalities


def test_equality_qp_backends_match_the_kkt_solve(x64):
    Q, c, A, b, _, _ = _problem(7, n_eq=2)
    K = np.block([[Q, A.T], [A, np.zeros((2, 2))]])
    ref = np.linalg.solve(K, np.concatenate([-c, b]))[:4]
    for solver in ["eqqp", qp.OSQP()]:
        sol = qp.solve_qp(qp.Dense(jnp.asarray(Q)), jnp.asarray(c), A, b, solver=solver)
        np.testing.assert_allclose(sol.x, ref, atol=1e-9)
        assert float(sol.residual) < 1e-9 and int(sol.status) == qp.SOLVED
    # gradient of a function of the solution w.r.t. b against autodiff of the KKT solve
    f = lambda b, solver: jnp.sum(jnp.sin(qp.solve_qp(qp.Dense(jnp.asarray(Q)), jnp.asarray(c), A, b, solver=solver).x))
    f_ref = lambda b: jnp.sum(jnp.sin(jnp.linalg.solve(jnp.asarray(K), jnp.concatenate([-jnp.asarray(c), b]))[:4]))
    g_ref = jax.grad(f_ref)(jnp.asarray(b))
    for solver in ["eqqp", "osqp"]:
        np.testing.assert_allclose(jax.grad(f)(jnp.asarray(b), solver), g_ref, atol=1e-8)


def test_infeasible_problem_is_reported_not_raised_inside_jit(x64):
    Q = qp.Dense(jnp.eye(3))
    A, b = jnp.ones((1, 3)), jnp.ones(1)  # sum x = 1 ...
    G, h = -jnp.eye(3), -jnp.ones(3)  # ... and every x_i >= 1
    sol = jax.jit(lambda h: qp.solve_qp(Q, jnp.zeros(3), A, b, G, h, solver="osqp"))(h)
    assert int(sol.status) == qp.PRIMAL_INFEASIBLE
    assert float(sol.primal_residual) > 0.1
    feasible = jax.jit(lambda h: qp.solve_qp(Q, jnp.zeros(3), A, b, G, h, solver="osqp"))(jnp.zeros(3))
    assert int(feasible.status) == qp.SOLVED
    # an unconverged iterative solve is reported as such
    early = qp.solve_qp(Q, jnp.arange(3.0), A, b, G, jnp.zeros(3), solver=qp.OSQP(maxiter=2))
    assert int(early.status) == qp.NOT_CONVERGED


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_osqp_with_every_row_slack_solves_to_the_unconstrained_minimiser(precision):
    """When the unconstrained minimiser -Q^{-1}c is strictly feasible, OSQP's dual never
    moves; the solve must still run to convergence (status SOLVED, not a primal-infeasible
    verdict from a zero dual step) and its implicit gradient is the unconstrained one,
    d(w'x)/dc = -Q^{-1}w."""
    with jax.enable_x64(precision == "float64"):
        dtype = jnp.dtype(precision)
        d = jnp.array([1.0, 2.0, 3.0], dtype)
        c = jnp.array([1.0, -1.0, 0.5], dtype)
        G, h = jnp.ones((1, 3), dtype), jnp.full(1, 0.1, dtype)  # sum x = -2/3 < 0.1 at the minimiser
        lo, hi = jnp.full(3, -5.0, dtype), jnp.full(3, 5.0, dtype)
        w = jnp.array([1.0, 2.0, 3.0], dtype)
        for kwargs in [dict(G=G, h=h), dict(lo=lo, hi=hi)]:
            solve = jax.jit(lambda c: qp.solve_qp(qp.Diagonal(d), c, solver="osqp", **kwargs))
            sol = solve(c)
            assert int(sol.status) == qp.SOLVED, kwargs
            tol = 1e-4 if precision == "float32" else 1e-9
            np.testing.assert_allclose(sol.x, -c / d, rtol=tol, atol=tol)
            grad = jax.grad(lambda c: jnp.vdot(w, solve(c).x))(c)
            np.testing.assert_allclose(grad, -w / d, rtol=tol, atol=tol)


def test_constraint_kinds_are_checked_against_the_solver():
    Q, c = qp.Dense(jnp.eye(2)), jnp.ones(2)
    with pytest.raises(ValueError, match=r"G/h needs ineq constraints, which solver='exact'"):
        qp.solve_qp(Q, c, G=jnp.eye(2), h=jnp.ones(2))
    with pytest.raises(ValueError, match=r"A/b needs eq constraints, which solver='cdqp'"):
        qp.solve_qp(Q, c, A=jnp.eye(2), b=jnp.ones(2), solver="cdqp")
    with pytest.raises(ValueError, match=r"A must be \(m, 2\) and b \(m,\)"):
        qp.solve_qp(Q, c, A=jnp.eye(3), b=jnp.ones(3), solver="osqp")
    with pytest.raises(ValueError, match="give G and h together"):
        qp.solve_qp(Q, c, G=jnp.eye(2), solver="osqp")


def _fd(f, z, eps=1e-6):
    z = np.asarray(z, np.float64)
    out = []
    for i in range(z.size):
        e = np.zeros_like(z)
        e.flat[i] = eps
        out.append((f(z + e) - f(z - e)) / (2 * eps))
    return np.array(out).reshape(z.shape)


def test_implicit_gradients_at_active_constraints_match_finite_differences(x64):
    Q, c, A, b, G, h = _problem(0)
    ref = _enumerate_active_sets(Q, c, A, b, G, h)
    slack = h - G @ ref
    assert np.sum(slack < 1e-8) >= 1 and np.min(slack[slack > 1e-8], initial=1.0) > 1e-3  # strict

    def f(c, b, h, Qm):
        x = qp.solve_qp(qp.Dense(Qm), c, A, b, G, h, solver="osqp").x
        return jnp.sum(jnp.cos(jnp.arange(1.0, 5.0) * x))

    args = tuple(jnp.asarray(v) for v in (c, b, h, Q))
    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(*args)
    fj = jax.jit(f)
    for i in range(3):
        def fi(z, i=i):
            a = list(args)
            a[i] = jnp.asarray(z)
            return float(fj(*a))
        np.testing.assert_allclose(grads[i], _fd(fi, args[i]), atol=1e-6)
    # Q: directional derivative along a symmetric direction
    V = jnp.asarray(np.random.default_rng(1).normal(size=(4, 4)))
    V = V + V.T
    fq = lambda t: float(fj(args[0], args[1], args[2], args[3] + t * V))
    np.testing.assert_allclose(jnp.vdot(grads[3], V), (fq(1e-6) - fq(-1e-6)) / 2e-6, atol=1e-6)


def test_gradient_at_a_weakly_active_constraint_is_a_one_sided_derivative(x64):
    """Degenerate point: x* sits on x_0 >= 0 with a zero multiplier (c_0 = 0 exactly).
    The map c -> x* has a kink there; the implicit gradient must be finite and equal to
    one of the two one-sided derivatives (never an average or garbage)."""
    Q = qp.Dense(jnp.eye(3))
    G, h = -jnp.eye(3), jnp.zeros(3)
    c = jnp.array([0.0, -1.0, 0.5])  # x* = (0, 1, 0): x_0 weakly active, x_2 strictly active
    f = lambda c: jnp.sum(jnp.array([1.0, 2.0, 3.0]) * qp.solve_qp(Q, c, G=G, h=h, solver="osqp").x)
    g = jax.grad(f)(c)
    assert bool(jnp.all(jnp.isfinite(g)))
    eps = 1e-6
    e0 = jnp.array([1.0, 0.0, 0.0])
    right = (f(c + eps * e0) - f(c)) / eps  # c_0 > 0: x_0 stays at 0
    left = (f(c) - f(c - eps * e0)) / eps  # c_0 < 0: x_0 = -c_0 moves
    assert abs(float(right) - 0.0) < 1e-6 and abs(float(left) + 1.0) < 1e-6
    assert min(abs(float(g[0]) - float(right)), abs(float(g[0]) - float(left))) < 1e-6
    np.testing.assert_allclose(g[1:], [-2.0, 0.0], atol=1e-6)  # smooth directions


_floats = st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, derandomize=True, phases=(Phase.explicit, Phase.generate), print_blob=True)
@given(
    diag=st.lists(st.floats(0.2, 5.0), min_size=5, max_size=5),
    c=st.lists(_floats, min_size=5, max_size=5),
    radius=st.floats(0.05, 1.0),
    dense=st.booleans(),
    precision=st.sampled_from(["float32", "float64"]),
)
def test_property_box_qp_kkt_and_implicit_gradients(diag, c, radius, dense, precision):
    """Random diagonal or dense SPD operators with a box: the fixed-point (KKT) residual
    is ~0 in the solution's dtype, the status is SOLVED, and the implicit gradient w.r.t.
    c matches float64 central differences of the same solver."""
    # float32 runs with x64 off, as users run it (jaxopt's BoxOSQP mixes in float64
    # constants when x64 is on and the data is float32).
    with jax.enable_x64(precision == "float64"):
        dtype = jnp.dtype(precision)
        d = jnp.asarray(diag, dtype)
        if dense:
            R = jnp.asarray(np.linalg.qr(np.random.default_rng(len(c)).normal(size=(5, 5)))[0], dtype)
            op, solver = qp.Dense(R @ jnp.diag(d) @ R.T), "osqp"
        else:
            op, solver = qp.Diagonal(d), "exact"
        cv = jnp.asarray(c, dtype)
        box = jnp.full(5, radius, dtype)
        sol = qp.solve_qp(op, cv, lo=-box, hi=box, solver=solver)
        assert sol.x.dtype == dtype
        tol = 1e-4 if precision == "float32" else 1e-9
        assert float(sol.residual) < tol and int(sol.status) == qp.SOLVED
        if precision == "float32":
            return
        w = jnp.arange(1.0, 6.0)
        f = jax.jit(lambda c: jnp.sum(jnp.sin(w * qp.solve_qp(op, c, lo=-box, hi=box, solver=solver).x)))
        g = jax.jit(jax.grad(lambda c: jnp.sum(jnp.sin(w * qp.solve_qp(op, c, lo=-box, hi=box, solver=solver).x))))(cv)
        # skip coordinates sitting (numerically) on a kink of the box
        unc = -np.linalg.solve(np.asarray(op.to_dense(cv)), np.asarray(cv)) if not dense else None
        fd = _fd(lambda z: float(f(jnp.asarray(z))), cv)
        kink = np.abs(np.abs(np.asarray(sol.x)) - radius) < 1e-5
        kink &= np.abs(np.asarray(sol.x)) < radius + 1e-5
        if unc is not None:
            kink = np.abs(np.abs(unc) - radius) < 1e-4
            np.testing.assert_allclose(np.asarray(g), fd, atol=1e-6)
        else:
            np.testing.assert_allclose(np.asarray(g), fd, atol=1e-5)


def test_osqp_with_a_box_and_linear_rows_matches_active_set_enumeration(x64):
    """Box bounds together with equality and inequality rows (OSQP stacks ``C = [A; G; I]``),
    the second coordinate bounded above only and the third below only, against active-set
    enumeration of the same problem with the box written as inequality rows: a bound and
    the inequality are active, and the solution differs from the one without the box."""
    Q = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]])
    c = np.array([-1.0, 0.5, 0.8])
    lo, hi = np.array([-0.2, -np.inf, -0.3]), np.array([0.2, 0.25, np.inf])
    A, b = np.array([[1.0, 1.0, 1.0]]), np.array([0.3])
    G, h = np.array([[1.0, -1.0, 0.5]]), np.array([-0.3])
    finite_lo, finite_hi = np.isfinite(lo), np.isfinite(hi)
    box_G = np.concatenate([-np.eye(3)[finite_lo], np.eye(3)[finite_hi]])
    box_h = np.concatenate([-lo[finite_lo], hi[finite_hi]])
    ref = _enumerate_active_sets(Q, c, A, b, np.concatenate([G, box_G]), np.concatenate([h, box_h]))
    assert np.isclose(ref[1], hi[1]) and np.isclose(G @ ref, h)  # a bound and the row are active ...
    assert np.max(np.abs(ref - _enumerate_active_sets(Q, c, A, b, G, h))) > 0.1  # ... and matters
    sol = qp.solve_qp(qp.Dense(jnp.asarray(Q)), jnp.asarray(c), lo=jnp.asarray(lo), hi=jnp.asarray(hi),
                      solver="osqp", A=jnp.asarray(A), b=jnp.asarray(b), G=jnp.asarray(G), h=jnp.asarray(h))
    np.testing.assert_allclose(sol.x, ref, atol=1e-8)
    assert int(sol.status) == qp.SOLVED and float(sol.residual) < 1e-8
