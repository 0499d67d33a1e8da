"""The QP layer against closed forms, dense linear algebra and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_dco import qp


def _tree(key, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    c = {"layer": {"w": jax.random.normal(k1, (3, 2), dtype), "b": jax.random.normal(k2, (2,), dtype)},
         "scale": jax.random.normal(k3, (), dtype)}
    d = jax.tree.map(lambda v: 0.5 + jnp.abs(v[..., None].sum(-1)) + 0.1 * jnp.ones_like(v), c)
    return c, d


def _max_rel(a, b):
    return max(float(jnp.max(jnp.abs(x - y) / (1.0 + jnp.abs(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _spd(key, n, dtype=jnp.float64):
    a = jax.random.normal(key, (n, n), dtype)
    return a @ a.T / n + jnp.eye(n, dtype=dtype)


@pytest.mark.parametrize("solver", ["exact", "eqqp"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_diagonal_unconstrained_matches_closed_form(solver, precision):
    with jax.enable_x64(precision == "float64"):
        dtype = jnp.dtype(precision)
        c, d = _tree(jax.random.PRNGKey(0), dtype)
        sol = jax.jit(lambda d, c: qp.solve_qp(qp.Diagonal(d), c, solver=solver))(d, c)
        ref = jax.tree.map(lambda c, d: -c / d, c, d)
        tol = 1e-5 if precision == "float32" else 1e-10
        assert _max_rel(sol.x, ref) < tol
        assert float(sol.residual) < tol
        assert jax.tree.leaves(sol.x)[0].dtype == dtype


@pytest.mark.parametrize("solver", ["exact", "osqp", "cdqp"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_diagonal_box_matches_clipped_closed_form(solver, precision):
    with jax.enable_x64(precision == "float64"):
        dtype = jnp.dtype(precision)
        c, d = _tree(jax.random.PRNGKey(1), dtype)
        r = jax.tree.map(lambda v: jnp.full_like(v, 0.4), c)
        lo = jax.tree.map(jnp.negative, r)
        ref = jax.tree.map(lambda c, d: jnp.clip(-c / d, -0.4, 0.4), c, d)
        n_active = sum(int(jnp.sum(jnp.abs(x) >= 0.4)) for x in jax.tree.leaves(ref))
        assert 0 < n_active < sum(x.size for x in jax.tree.leaves(ref))  # both kinds of entries
        sol = jax.jit(lambda d, c: qp.solve_qp(qp.Diagonal(d), c, lo=lo, hi=r, solver=solver))(d, c)
        tol = 1e-5 if precision == "float32" else 1e-10
        assert _max_rel(sol.x, ref) < tol


def test_dense_backends_agree_with_linear_algebra(x64):
    key = jax.random.PRNGKey(2)
    m = _spd(key, 6)
    c = jax.random.normal(jax.random.PRNGKey(3), (6,))
    ref = -jnp.linalg.solve(m, c)
    for solver in ["exact", "eqqp"]:
        sol = qp.solve_qp(qp.Dense(m), c, solver=solver)
        np.testing.assert_allclose(sol.x, ref, rtol=1e-10, atol=1e-12)
    # Gradients with respect to Q: jaxopt/cholesky return the symmetrised gradient.
    f_ref = lambda m, c: jnp.sum(jnp.sin(-jnp.linalg.solve(m, c)))
    g_ref = jax.grad(f_ref, argnums=(0, 1))(m, c)
    sym = lambda g: (g + g.T) / 2
    for solver in ["exact", "eqqp"]:
        g = jax.grad(lambda m, c: jnp.sum(jnp.sin(qp.solve_qp(qp.Dense(m), c, solver=solver).x)), argnums=(0, 1))(m, c)
        np.testing.assert_allclose(sym(g[0]), sym(g_ref[0]), atol=1e-10)
        np.testing.assert_allclose(g[1], g_ref[1], atol=1e-10)


def test_dense_box_gradients_match_finite_differences(x64):
    """BoxOSQP (tight implicit solve) and BoxCDQP on a coupled QP with active constraints."""
    m = _spd(jax.random.PRNGKey(4), 5)
    c = jax.random.normal(jax.random.PRNGKey(5), (5,))
    r = 0.3

    def f(c, r, solver):
        box = r * jnp.ones(5)
        return jnp.sum(jnp.cos(jnp.arange(1.0, 6.0) * qp.solve_qp(qp.Dense(m), c, lo=-box, hi=box, solver=solver).x))

    x = qp.solve_qp(qp.Dense(m), c, lo=-r * jnp.ones(5), hi=r * jnp.ones(5), solver="cdqp").x
    assert 0 < int(jnp.sum(jnp.isclose(jnp.abs(x), r))) < 5  # some constraints active
    eps = 1e-6
    # Central differences of the (tightly solved) forward map, all directions in one vmap.
    directions = jnp.concatenate([jnp.eye(5), jnp.zeros((5, 1))], axis=1)
    directions = jnp.concatenate([directions, jnp.eye(6)[-1:]], axis=0)  # last row: radius

    @jax.jit
    def fd(z):
        return jax.vmap(lambda e: (f(c + eps * e[:5], r + eps * e[5], "cdqp") - f(c - eps * e[:5], r - eps * e[5], "cdqp")) / (2 * eps))(directions)

    fd_all = fd(0.0)
    for solver in ["osqp", "cdqp"]:
        gc, gr = jax.jit(jax.grad(f, argnums=(0, 1)), static_argnums=2)(c, r, solver)
        np.testing.assert_allclose(gc, fd_all[:5], atol=1e-7)
        np.testing.assert_allclose(gr, fd_all[5], atol=1e-7)


def test_exact_box_gradients_at_active_constraints(x64):
    c, d = _tree(jax.random.PRNGKey(6), jnp.float64)

    def f(d, c, r, solver):
        box = jax.tree.map(lambda v: r * jnp.ones_like(v), c)
        x = qp.solve_qp(qp.Diagonal(d), c, lo=jax.tree.map(jnp.negative, box), hi=box, solver=solver).x
        return sum(jnp.sum(jnp.cos(1.0 + v)) for v in jax.tree.leaves(x))

    def f_ref(d, c, r):
        x = jax.tree.map(lambda c, d: jnp.clip(-c / d, -r, r), c, d)
        return sum(jnp.sum(jnp.cos(1.0 + v)) for v in jax.tree.leaves(x))

    g_ref = jax.grad(f_ref, argnums=(0, 1, 2))(d, c, 0.4)
    assert float(g_ref[2]) != 0.0  # the radius matters: some constraints are active
    for solver in ["exact", "osqp", "cdqp"]:
        g = jax.jit(jax.grad(f, argnums=(0, 1, 2)), static_argnums=3)(d, c, 0.4, solver)
        assert _max_rel(g, g_ref) < 1e-8, solver


def test_kronecker_and_block_operators_match_dense(x64):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
    left, right = _spd(k1, 3), _spd(k2, 4)
    x = jax.random.normal(k3, (3, 4))
    op = qp.Kronecker(left, right)
    dense = op.to_dense(x)
    np.testing.assert_allclose(op.matvec(x).ravel(), dense @ x.ravel(), rtol=1e-12)
    np.testing.assert_allclose(op.solve(x).ravel(), jnp.linalg.solve(dense, x.ravel()), rtol=1e-10)

    tree = {"w": x, "b": jnp.arange(1.0, 5.0)}
    block = qp.BlockDiagonal({"w": op, "b": qp.Diagonal(jnp.arange(2.0, 6.0))})
    assert not block.separable
    flat = jax.flatten_util.ravel_pytree(tree)[0]
    full = block.to_dense(tree)
    sol = qp.solve_qp(block, tree)
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(sol.x)[0], -jnp.linalg.solve(full, flat), rtol=1e-10)
    # Implicit gradient through the Kronecker factors against autodiff of the dense solve.
    g = jax.grad(lambda a: jnp.sum(qp.solve_qp(qp.Kronecker(a, right), x).x ** 2))(left)
    g_ref = jax.grad(lambda a: jnp.sum(jnp.linalg.solve(jnp.kron(a, right), x.ravel()) ** 2))(left)
    np.testing.assert_allclose((g + g.T) / 2, (g_ref + g_ref.T) / 2, rtol=1e-8, atol=1e-12)


def test_status_is_reported_not_raised():
    """An iterative solve stopped early reports a large residual instead of raising."""
    m = _spd(jax.random.PRNGKey(8), 8, jnp.float32)
    c = jax.random.normal(jax.random.PRNGKey(9), (8,))
    box = jnp.full(8, 0.2)
    sol = jax.jit(lambda c: qp.solve_qp(qp.Dense(m), c, lo=-box, hi=box, solver=qp.OSQP(maxiter=1)))(c)
    good = qp.solve_qp(qp.Dense(m), c, lo=-box, hi=box, solver="osqp")
    assert float(sol.residual) > 100 * float(good.residual)
    assert int(sol.iterations) <= int(good.iterations)


def test_bad_solver_arguments():
    d = qp.Dense(jnp.eye(2))
    with pytest.raises(ValueError, match="unknown QP solver"):
        qp.solve_qp(d, jnp.ones(2), solver="newton")
    with pytest.raises(ValueError, match="separable"):
        qp.solve_qp(d, jnp.ones(2), lo=-jnp.ones(2), hi=jnp.ones(2), solver="exact")
    with pytest.raises(ValueError, match=r"lo/hi needs box constraints, which solver='eqqp' \(qp.EqQP\)"):
        qp.solve_qp(d, jnp.ones(2), lo=-jnp.ones(2), hi=jnp.ones(2), solver=qp.EqQP(tol=1e-6))
    with pytest.raises(TypeError, match="QPSolver value"):
        qp.solve_qp(d, jnp.ones(2), solver=3)
    with pytest.raises(ValueError, match="maxiter"):
        qp.OSQP(maxiter=0)
    with pytest.raises(ValueError, match="tol"):
        qp.EqQP(tol=-1.0)
    with pytest.raises(ValueError, match="no option tol"):
        qp.Exact().with_options(tol=1e-3)


def test_solvers_are_values_and_names_map_to_them():
    """Names give default-option values; values carry options, compare and hash by value,
    and say which constraints they handle."""
    assert qp.as_solver("exact") == qp.Exact() and qp.as_solver("eqqp") == qp.EqQP()
    assert qp.as_solver("osqp") == qp.OSQP() and qp.as_solver("cdqp") == qp.CDQP()
    value = qp.OSQP(tol=1e-5, maxiter=50)
    assert qp.as_solver(value) is value
    assert hash(value) == hash(qp.OSQP(tol=1e-5, maxiter=50)) and value != qp.OSQP()
    assert value.with_options(maxiter=10) == qp.OSQP(tol=1e-5, maxiter=10)
    assert {n for n, cls in qp.SOLVERS.items() if qp.as_solver(n).supports("box")} == {"exact", "osqp", "cdqp", "ipm"}
    assert qp.EqQP().supports() and not qp.EqQP().supports("box")
    with pytest.raises(Exception):  # frozen
        value.tol = 1.0
    # The options really reach the backend: one OSQP iteration is a different answer.
    m = _spd(jax.random.PRNGKey(8), 4, jnp.float32)
    c, box = jnp.arange(1.0, 5.0), jnp.full(4, 0.3)
    early = qp.solve_qp(qp.Dense(m), c, lo=-box, hi=box, solver=qp.OSQP(maxiter=1))
    full = qp.solve_qp(qp.Dense(m), c, lo=-box, hi=box, solver="osqp")
    assert int(early.iterations) == 1 < int(full.iterations)


@pytest.mark.parametrize("side", ["lo", "hi"])
def test_primal_residual_of_a_one_sided_bound_is_the_largest_violation(side, x64):
    """Only ``lo`` (or only ``hi``) given: the residual of a point outside is
    ``max(lo - x)^+`` (``max(x - hi)^+``), on a pytree, and 0 for a feasible point."""
    x = {"a": jnp.array([0.0, 2.0, -1.5]), "b": jnp.array(3.0)}
    bound = {"a": jnp.array([0.5, 1.0, -1.0]), "b": jnp.array(1.0)}
    cons = qp.Constraints(**{side: bound})
    # lo: a[0] 0.5 below, a[2] 0.5 below; hi: a[1] 1 above, b 2 above
    expected = 0.5 if side == "lo" else 2.0
    np.testing.assert_allclose(float(qp.primal_residual(x, cons)), expected, rtol=1e-12)
    inside = jax.tree.map(lambda v: v + (1.0 if side == "lo" else -1.0), bound)
    assert float(qp.primal_residual(inside, cons)) == 0.0


@pytest.mark.parametrize("side", ["lo", "hi"])
def test_exact_refuses_a_one_sided_bound_on_a_non_separable_curvature(side):
    """The exact backend clips ``-Q^{-1} c``, the box solution only for a diagonal ``Q``; a
    dense ``Q`` with only one bound is refused like a two-sided box (clipping would be wrong:
    here the clipped unconstrained minimiser is not the constrained one)."""
    m = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    c = jnp.array([-3.0, 3.0])  # unconstrained minimiser (3, -3); clipped (1, -3) / (3, -1),
    # constrained minimiser (1, -2) / (2, -1)
    bound = {"lo": jnp.array([-jnp.inf, -1.0]), "hi": jnp.array([1.0, jnp.inf])}[side]
    with pytest.raises(ValueError, match=r"'exact' QP backend handles box constraints only for a separable.*Dense"):
        qp.solve_qp(qp.Dense(m), c, solver="exact", **{side: bound})


def test_cdqp_options_reach_the_solve(x64):
    """BoxCDQP with ``maxiter=1`` stops after one sweep, unconverged, on a coupled dense QP
    with two active bounds; a loose ``tol`` stops before the default tolerance does. The
    reference for the converged default solve is the KKT solve of its active set."""
    a = jax.random.normal(jax.random.PRNGKey(3), (6, 6), jnp.float64)
    m = a @ a.T + 0.1 * jnp.eye(6)
    c = jax.random.normal(jax.random.PRNGKey(4), (6,), jnp.float64)
    r = 0.5
    box = dict(lo=-r * jnp.ones(6), hi=r * jnp.ones(6))
    full = qp.solve_qp(qp.Dense(m), c, solver="cdqp", **box)
    active = np.abs(np.asarray(full.x)) >= r - 1e-12
    assert active.sum() == 2
    free = ~active
    x_ref = np.where(active, np.asarray(full.x), 0.0)
    M, C = np.asarray(m), np.asarray(c)
    x_ref[free] = np.linalg.solve(M[np.ix_(free, free)], -(C[free] + M[np.ix_(free, active)] @ x_ref[active]))
    np.testing.assert_allclose(full.x, x_ref, atol=1e-10)
    assert np.all(np.abs(x_ref[free]) < r)
    one = qp.solve_qp(qp.Dense(m), c, solver=qp.CDQP(maxiter=1), **box)
    assert int(one.iterations) == 1 < int(full.iterations)
    assert float(one.residual) > 0.1 and int(one.status) == qp.NOT_CONVERGED
    assert float(jnp.max(jnp.abs(one.x - x_ref))) > 0.05
    loose = qp.solve_qp(qp.Dense(m), c, solver=qp.CDQP(tol=1e-2), **box)
    assert int(loose.iterations) < int(full.iterations) // 2
    assert 1e-4 < float(loose.residual) < 0.1
