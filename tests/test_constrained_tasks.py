"""Constrained task families and the learned constrained DCO.

References: ``scipy.optimize.nnls`` (NNLS optimum), a NumPy sort-based simplex projection
and the simplex KKT conditions (simplex optimum), the box KKT conditions (LQR optimum), and
``qp.OSQP`` (an independent general QP solver) for the exact simplex step solve.
Meta-gradients through constrained steps vs finite differences live in test_general.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

from learned_dco import qp, tasks
from learned_dco.optimizers.general import constrained_dcom, shifted_constraints
from learned_dco.qp import SimplexExact, cheapest_solver
from learned_dco.tasks.constrained import BoxLQR, NonnegLeastSquares, SimplexLeastSquares, project_simplex


def _np_simplex_projection(v):
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    k = np.nonzero(u * np.arange(1, v.size + 1) > (css - 1))[0][-1]
    return np.maximum(v - (css[k] - 1) / (k + 1), 0.0)


def test_families_are_registered_and_follow_the_protocol():
    for name, cls in (("nonneg_least_squares", NonnegLeastSquares), ("simplex_least_squares", SimplexLeastSquares),
                      ("box_lqr", BoxLQR)):
        fam = tasks.make_family(name)
        assert isinstance(fam, cls) and isinstance(fam, tasks.TaskFamily)
        batch = tasks.sample_tasks(fam, jax.random.PRNGKey(0), 3)
        params = jax.vmap(fam.init_params)(jax.random.split(jax.random.PRNGKey(1), 3), batch)
        assert jax.vmap(fam.loss)(params, batch).shape == (3,)
        assert np.all(np.asarray(jax.vmap(fam.violation)(params, batch)) <= 1e-7)  # feasible starts
        assert fam.info.has_optimum
    with pytest.raises(ValueError, match="active"):
        NonnegLeastSquares(dim=3, active=4)
    with pytest.raises(ValueError):
        BoxLQR(u_max=-1.0)


def test_projections_match_numpy_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(size=7) * 2
        np.testing.assert_allclose(project_simplex(jnp.asarray(v)), _np_simplex_projection(v), atol=1e-6)
    fam = BoxLQR(horizon=3, input_dim=2, u_max=0.3)
    u = jnp.asarray(rng.normal(size=(3, 2)))
    np.testing.assert_allclose(fam.project(u), np.clip(u, -0.3, 0.3))
    assert float(fam.violation(u)) == pytest.approx(float(np.max(np.abs(u)) - 0.3), rel=1e-6)


def test_nnls_optimum_matches_scipy():
    fam = NonnegLeastSquares()
    for seed in range(3):
        task = fam.sample(jax.random.PRNGKey(seed))
        ref = scipy.optimize.nnls(np.asarray(task.X, np.float64), np.asarray(task.y, np.float64))[0]
        assert np.sum(ref == 0) >= 1  # the constraints are active at the optimum
        np.testing.assert_allclose(fam.optimum(task), ref, atol=2e-5)


def test_simplex_and_lqr_optima_satisfy_kkt():
    fam = SimplexLeastSquares()
    task = fam.sample(jax.random.PRNGKey(4))
    x = np.asarray(fam.optimum(task), np.float64)
    g = np.asarray(jax.grad(fam.loss)(jnp.asarray(x, jnp.float32), task), np.float64)
    assert abs(x.sum() - 1) < 1e-5 and x.min() >= 0
    support = x > 1e-6
    nu = -np.mean(g[support])  # g_i + nu = 0 on the support, >= 0 off it
    assert np.max(np.abs(g[support] + nu)) < 1e-4
    assert np.min(g[~support] + nu) > -1e-4
    assert np.sum(~support) >= 1
    # fixed point of the projected gradient map (KKT of the simplex problem)
    np.testing.assert_allclose(_np_simplex_projection(x - 0.1 * g), x, atol=1e-5)

    lqr = BoxLQR()
    task = lqr.sample(jax.random.PRNGKey(5))
    u = np.asarray(lqr.optimum(task), np.float64)
    g = np.asarray(jax.grad(lqr.loss)(jnp.asarray(u, jnp.float32), task), np.float64)
    upper, lower = u >= lqr.u_max - 1e-6, u <= -lqr.u_max + 1e-6
    free = ~(upper | lower)
    assert upper.any() or lower.any()  # the limits bind
    scale = np.max(np.abs(g)) + 1.0
    assert np.max(np.abs(g[free])) < 1e-3 * scale
    assert np.all(g[upper] <= 1e-3 * scale) and np.all(g[lower] >= -1e-3 * scale)


def test_simplex_exact_matches_osqp_values_and_jacobians(x64):
    rng = np.random.default_rng(1)
    cons = SimplexLeastSquares(dim=8).constraints()
    for trial in range(2):
        theta = jnp.asarray(rng.dirichlet(np.ones(8) * 0.5))
        q, c = jnp.asarray(rng.uniform(0.3, 3.0, 8)), jnp.asarray(rng.normal(size=8))
        kw = shifted_constraints(cons, theta)

        def step(q, c, solver):
            return qp.solve_qp(qp.Diagonal(q), c, kw["A"], kw["b"], lo=kw["lo"], solver=solver)

        mine, ref = step(q, c, SimplexExact()), step(q, c, qp.OSQP())
        assert int(mine.status) == qp.SOLVED and float(mine.residual) < 1e-10
        np.testing.assert_allclose(mine.x, ref.x, atol=1e-8)
        assert float(jnp.sum(theta + mine.x)) == pytest.approx(1.0, abs=1e-12) and float(jnp.min(theta + mine.x)) >= -1e-14
        for arg in ((0, 1) if trial == 0 else ()):
            jm = jax.jacobian(lambda v: step(*(v, c) if arg == 0 else (q, v), SimplexExact()).x)((q, c)[arg])
            jr = jax.jacobian(lambda v: step(*(v, c) if arg == 0 else (q, v), qp.OSQP()).x)((q, c)[arg])
            np.testing.assert_allclose(jm, jr, atol=1e-7)
    # a scaled identity curvature is the Euclidean projection of theta - c / s
    theta = jnp.asarray(rng.dirichlet(np.ones(8)))
    c = jnp.asarray(rng.normal(size=8))
    kw = shifted_constraints(cons, theta)
    x = qp.solve_qp(qp.ScaledIdentity(2.0), c, kw["A"], kw["b"], lo=kw["lo"], solver=SimplexExact()).x
    np.testing.assert_allclose(theta + x, _np_simplex_projection(np.asarray(theta - c / 2.0)), atol=1e-12)
    with pytest.raises(ValueError, match="all ones"):
        qp.solve_qp(qp.ScaledIdentity(1.0), c, 2 * kw["A"], kw["b"], lo=kw["lo"], solver=SimplexExact())


def test_shifted_constraints_describe_the_same_set_in_the_step():
    """For random steps d, every residual of theta + d against {A x = b, G x <= h,
    lo <= x <= hi} equals the residual of d against the shifted constraints, so the step QP's
    feasible set is exactly the original one moved to theta."""
    rng = np.random.default_rng(3)
    params = {"a": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(rng.normal(size=2))}
    flat, _ = ravel_pytree(params)
    A, b = rng.normal(size=(2, 5)), rng.normal(size=2)
    G, h = rng.normal(size=(3, 5)), rng.normal(size=3)
    lo = {"a": jnp.asarray(rng.normal(size=3)) - 1.0, "b": jnp.asarray(rng.normal(size=2)) - 1.0}
    hi = {"a": lo["a"] + 2.0, "b": lo["b"] + 2.5}
    cons = qp.Constraints(A=jnp.asarray(A), b=jnp.asarray(b), G=jnp.asarray(G), h=jnp.asarray(h), lo=lo, hi=hi)
    kw = shifted_constraints(cons, params)
    assert set(kw) == {"A", "b", "G", "h", "lo", "hi"}
    flo, fhi = ravel_pytree(lo)[0], ravel_pytree(hi)[0]
    slo, shi = ravel_pytree(kw["lo"])[0], ravel_pytree(kw["hi"])[0]
    for d in rng.normal(size=(20, 5)):
        x = np.asarray(flat) + d
        np.testing.assert_allclose(np.asarray(kw["A"]) @ d - kw["b"], A @ x - b, atol=1e-5)
        np.testing.assert_allclose(np.asarray(kw["G"]) @ d - kw["h"], G @ x - h, atol=1e-5)
        np.testing.assert_allclose(d - slo, x - flo, atol=1e-5)
        np.testing.assert_allclose(shi - d, fhi - x, atol=1e-5)


def test_cheapest_solver_per_set():
    assert isinstance(cheapest_solver(NonnegLeastSquares().constraints()), qp.Exact)
    assert isinstance(cheapest_solver(BoxLQR().constraints()), qp.Exact)
    assert isinstance(cheapest_solver(SimplexLeastSquares().constraints()), SimplexExact)
    assert isinstance(cheapest_solver(qp.Constraints(G=jnp.ones((1, 3)), h=jnp.ones(1))), qp.IPM)


@pytest.mark.parametrize("fam", [NonnegLeastSquares(dim=6, active=3), SimplexLeastSquares(dim=6, active=3),
                                 BoxLQR(horizon=5)], ids=lambda f: f.name)
def test_every_iterate_of_the_learned_constrained_dco_is_feasible(fam):
    """Random (large, anisotropic) meta-parameters: unconstrained steps would leave the set
    at once; every iterate must stay feasible, and at init the learned DCO is projected GD."""
    task = fam.sample(jax.random.PRNGKey(0))
    lopt = constrained_dcom(fam.constraints(), lr=0.05, momentum=0.5)
    p0 = fam.init_params(None, task)
    m = lopt.init(None, p0)
    m = {"log_lam2": m["log_lam2"] + jax.random.normal(jax.random.PRNGKey(1), p0.shape) - 1.0, "logit_m": m["logit_m"]}
    tx = lopt.opt_fn(m)
    p, s = p0, tx.init(p0)
    left_set = False
    for _ in range(15):
        g = jax.grad(fam.loss)(p, task)
        left_set |= float(fam.violation(p - g * jnp.exp(-m["log_lam2"]))) > 1e-3
        u, s = tx.update(g, s, p)
        p = p + u
        assert float(fam.violation(p)) <= 1e-6
    assert left_set
    assert float(fam.loss(p, task)) < float(fam.loss(p0, task))
    # momentum -> 1 and a scalar lr: projected gradient descent exactly
    pgd = constrained_dcom(fam.constraints(), lr=0.05, momentum=1 - 1e-7)
    tx, p, pp = pgd.opt_fn(pgd.init(None, p0)), p0, p0
    s = tx.init(p0)
    for _ in range(5):
        u, s = tx.update(jax.grad(fam.loss)(p, task), s, p)
        p = p + u
        pp = fam.project(pp - 0.05 * jax.grad(fam.loss)(pp, task))
        np.testing.assert_allclose(p, pp, atol=2e-5)


def test_constrained_dcom_starts_at_its_documented_defaults_and_refuses_ill_posed_ones():
    """Without arguments the first step's QP metric is I/0.05 and the momentum 0.9; a momentum
    outside (0, 1) or a non-positive lr is refused by name."""
    cons = NonnegLeastSquares(dim=3, active=1).constraints()
    meta = constrained_dcom(cons).init(None, jnp.zeros(3))
    np.testing.assert_allclose(jnp.exp(-meta["log_lam2"]), 0.05, rtol=1e-6)
    np.testing.assert_allclose(jax.nn.sigmoid(meta["logit_m"]), 0.9, rtol=1e-6)
    for kw, name in [({"momentum": 1.0}, "momentum"), ({"momentum": 0.0}, "momentum"), ({"lr": 0.0}, "lr")]:
        with pytest.raises(ValueError, match=f"constrained_dcom: {name} must be"):
            constrained_dcom(cons, **kw)


def test_simplex_exact_is_a_registered_qp_backend():
    """Built by its name like every backend; it handles only the set it is made for, and
    refuses a problem without that set naming what it needs and who can solve it."""
    assert qp.SOLVERS["simplex_exact"] is SimplexExact and qp.as_solver("simplex_exact") == SimplexExact()
    assert SimplexExact().supports("box", "eq") and not SimplexExact().supports("box") and not SimplexExact().supports()
    theta, c = jnp.full(4, 0.25), jnp.asarray([0.3, -0.2, 0.5, 0.1])
    kw = shifted_constraints(SimplexLeastSquares(dim=4, active=2).constraints(), theta)
    by_name = qp.solve_qp(qp.ScaledIdentity(1.0), c, kw["A"], kw["b"], lo=kw["lo"], solver="simplex_exact").x
    np.testing.assert_allclose(theta + by_name, _np_simplex_projection(np.asarray(theta - c)), atol=1e-6)
    with pytest.raises(ValueError, match=r"has no box/eq constraints, which solver='simplex_exact'.*needs; use one of"):
        qp.solve_qp(qp.ScaledIdentity(1.0), c, solver="simplex_exact")
    with pytest.raises(ValueError, match=r"lo/hi has no eq constraints.*use one of \('exact', 'osqp', 'cdqp', 'ipm'\)"):
        qp.solve_qp(qp.ScaledIdentity(1.0), c, lo=-theta, solver=SimplexExact())


def test_the_old_optimizers_names_warn_and_give_the_qp_ones():
    from learned_dco import optimizers

    with pytest.warns(DeprecationWarning, match="learned_dco.optimizers.SimplexExact is deprecated.*qp.SimplexExact"):
        assert optimizers.SimplexExact is SimplexExact
    with pytest.warns(DeprecationWarning, match="use learned_dco.qp.cheapest_solver"):
        assert optimizers.cheapest_solver is cheapest_solver
    assert "SimplexExact" not in optimizers.__all__
    with pytest.raises(AttributeError, match="has no attribute 'Simplex'"):
        optimizers.Simplex
