"""Tests written for mutants that survived the mutation run (docs/mutation/README.md).

Each test names the mutant(s) it kills (mutmut names; ``python -m tools.mutation --only NAME``
re-runs one) and checks the behaviour against an independent reference: the task pool
itself, a residual recomputed from the returned solution, the exact option list.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import learned_dco as ldco
from learned_dco import meta, qp, tasks

# test -> the mutants it must kill. ``python -m tools.mutation --confirm`` runs each test without
# them (it must pass) and with each switched on (it must fail); results in docs/mutation/confirm.json.
KILLS = {
    "test_unbound_init_draws_from_the_pool_like_the_bound_estimator": ["learned_dco.meta.estimators.xǁ_Unboundǁinit__mutmut_1", "learned_dco.meta.estimators.xǁ_Unboundǁinit__mutmut_10"],
    "test_full_unroll_with_the_pool_size_uses_every_pool_task_from_fixed_parameters": ["learned_dco.meta.estimators.xǁFullUnrollǁbind__mutmut_4"],
    "test_dcogd_normalize_divides_the_gradient_by_its_global_norm": ["learned_dco.optimizers.dco.x_dcogd__mutmut_72"],
    "test_dcog_step_names_itself_when_lam_does_not_fit_the_params_it_is_given": ["learned_dco.optimizers.dco.x_dcog__mutmut_48"],
    "test_eqqp_dual_residual_is_the_stationarity_of_the_returned_point": ["learned_dco.qp.x__solve_eqqp__mutmut_64"],
    "test_unknown_option_error_lists_the_options_the_solver_has": ["learned_dco.qp.xǁQPSolverǁwith_options__mutmut_17"],
    "test_as_solver_type_error_names_the_type_given": ["learned_dco.qp.x_as_solver__mutmut_6"],
    "test_exact_backend_reports_zero_iterations": ["learned_dco.qp.xǁExactǁsolve__mutmut_13"],
    "test_one_sided_bounds_match_the_clipped_closed_form": ["learned_dco.qp.x__project__mutmut_26", "learned_dco.qp.x__flat_bounds__mutmut_11",
                                                             "learned_dco.qp.x__flat_bounds__mutmut_21", "learned_dco.qp.x__flat_bounds__mutmut_23"],
    "test_equality_rows_without_rhs_are_refused": ["learned_dco.qp.x_solve_qp__mutmut_8"],
    "test_osqp_tolerance_is_the_one_given": ["learned_dco.qp.x__solve_osqp__mutmut_61"],
    "test_cdqp_box_solution_keeps_the_dtype_of_c": ["learned_dco.qp.x__flat_bounds__mutmut_38"],
    "test_es_train_loss_is_the_mean_of_the_antithetic_pair": ["learned_dco.meta.estimators.xǁ_AntitheticBoundǁestimate__mutmut_104"],
}

FAMILY = tasks.LeastSquares(num_samples=8, dim=3, init_scale=1.0)
LOPT = ldco.DCOG(learning_rate=0.1)


def _meta_and_pool(n):
    key = jax.random.PRNGKey(0)
    params = FAMILY.init_params(key, FAMILY.sample(key))
    return LOPT.init(None, params), tasks.sample_tasks(FAMILY, jax.random.PRNGKey(3), n)


def _rows_of(batch, pool):
    """Index into ``pool`` of each task of ``batch`` (-1 where the task is not a pool task)."""
    flat_pool = np.stack([np.concatenate([np.ravel(x[i]) for x in jax.tree.leaves(pool)])
                          for i in range(jax.tree.leaves(pool)[0].shape[0])])
    out = []
    for i in range(jax.tree.leaves(batch)[0].shape[0]):
        row = np.concatenate([np.ravel(x[i]) for x in jax.tree.leaves(batch)])
        hits = np.flatnonzero(np.all(flat_pool == row, axis=1))
        out.append(int(hits[0]) if hits.size else -1)
    return out


# --- meta/estimators.py -------------------------------------------------------------------


def test_unbound_init_draws_from_the_pool_like_the_bound_estimator():
    """``est.init(lopt, family, meta, key, pool)`` is ``est.bind(lopt, family, pool).init``:
    every task comes from the pool. Kills ``xǁ_Unboundǁinit__mutmut_1`` (meta dropped) and
    ``__mutmut_10`` (pool dropped: fresh tasks instead of pool tasks)."""
    theta, pool = _meta_and_pool(4)
    est = meta.TruncatedBPTT(horizon=4, truncation=2, num_tasks=6)
    key = jax.random.PRNGKey(1)
    got = est.init(LOPT, FAMILY, theta, key, pool)
    assert min(_rows_of(got.task, pool)) >= 0  # pool tasks only
    ref = est.bind(LOPT, FAMILY, pool).init(theta, key)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)


def test_full_unroll_with_the_pool_size_uses_every_pool_task_from_fixed_parameters():
    """DCO's full-batch meta-epoch: ``FullUnroll(num_tasks=N)`` over a pool of ``N`` tasks
    unrolls exactly the pool, in order, from initial parameters that do not depend on the
    meta-step's key. Kills ``xǁFullUnrollǁbind__mutmut_4`` (the pool dropped when binding)."""
    theta, pool = _meta_and_pool(3)
    est = meta.FullUnroll(horizon=2, num_tasks=3)
    a = est.tasks(LOPT, FAMILY, theta, jax.random.PRNGKey(1), pool)
    b = est.tasks(LOPT, FAMILY, theta, jax.random.PRNGKey(2), pool)
    assert _rows_of(a.task, pool) == [0, 1, 2]
    np.testing.assert_array_equal(a.params, b.params)


# --- optimizers/dco.py -------------------------------------------------------------------


def test_dcogd_normalize_divides_the_gradient_by_its_global_norm():
    """``dcogd_transform(B, normalize=True)`` steps ``-B g / ||g||`` (closed form, paper VI-A).
    Kills ``x_dcogd__mutmut_72`` (``normalize`` not passed on: a plain ``-B g`` step)."""
    params = {"w": jnp.arange(6.0).reshape(2, 3) / 10, "b": jnp.ones(2)}
    grads = {"w": jnp.linspace(-1.0, 2.0, 6).reshape(2, 3), "b": jnp.array([0.5, -3.0])}
    flat_g, unravel = jax.flatten_util.ravel_pytree(grads)
    B = jax.random.normal(jax.random.PRNGKey(0), (8, 8)) / 4 + jnp.eye(8)
    tx = ldco.dcogd_transform(B, normalize=True)
    update, _ = tx.update(grads, tx.init(params), params)
    ref = unravel(-(B @ flat_g) / jnp.linalg.norm(flat_g))
    for a, b in zip(jax.tree.leaves(update), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dcog_step_names_itself_when_lam_does_not_fit_the_params_it_is_given():
    """The step re-expands ``lam`` against the params of each update; a model whose shapes
    changed since ``init`` gets an error that names the rule. Kills ``x_dcog__mutmut_48``
    (``None`` as the owner in that message)."""
    lam = {"w": jnp.ones((2, 3)), "b": jnp.ones(2)}
    params = jax.tree.map(jnp.zeros_like, lam)
    tx = ldco.dcog_transform(lam)
    state = tx.init(params)
    other = {"w": jnp.zeros((3, 3)), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match=r"^dcog_transform: lam\['w'\] has shape \(2, 3\)"):
        tx.update(jax.tree.map(jnp.ones_like, other), state, other)


# --- qp.py --------------------------------------------------------------------------------


def test_eqqp_dual_residual_is_the_stationarity_of_the_returned_point(x64):
    """EqQP's dual residual is ``||Qx + c||_inf`` at the x it returns (no constraints, so no
    multipliers): an unconverged GMRES (one restart cycle on an ill-conditioned 40 x 40
    system) is reported as NOT_CONVERGED with that residual. Kills
    ``x__solve_eqqp__mutmut_64`` (residual of nothing: always 0, always SOLVED)."""
    key = jax.random.PRNGKey(0)
    u, _ = jnp.linalg.qr(jax.random.normal(key, (40, 40)))
    m = (u * jnp.logspace(0, 4, 40)) @ u.T
    c = jax.random.normal(jax.random.PRNGKey(1), (40,))
    sol = qp.solve_qp(qp.Dense(m), c, solver=qp.EqQP(maxiter=1))
    stationarity = float(jnp.max(jnp.abs(m @ sol.x + c)))
    assert stationarity > 1e-3  # really unconverged
    np.testing.assert_allclose(float(sol.dual_residual), stationarity, rtol=1e-6)
    assert int(sol.status) == qp.NOT_CONVERGED


def test_unknown_option_error_lists_the_options_the_solver_has():
    """Kills ``xǁQPSolverǁwith_options__mutmut_17`` (the 'none' of an option-less solver)."""
    with pytest.raises(ValueError, match=r"^qp\.Exact has no option tol \(options: none\)$"):
        qp.Exact().with_options(tol=1e-3)
    with pytest.raises(ValueError, match=r"^qp\.OSQP has no option rho \(options: \['maxiter', 'tol'\]\)$"):
        qp.OSQP().with_options(rho=1.0)


# --- written ahead for sampled mutants the stopped run did not reach (README) --------------


def test_as_solver_type_error_names_the_type_given():
    """Kills ``x_as_solver__mutmut_6`` (the message names ``NoneType`` whatever was given)."""
    with pytest.raises(TypeError, match=r"QPSolver value, got int$"):
        qp.as_solver(3)


def test_exact_backend_reports_zero_iterations():
    """Kills ``xǁExactǁsolve__mutmut_13`` (iterations ``None`` instead of 0)."""
    sol = qp.solve_qp(qp.Diagonal(jnp.array([2.0, 4.0])), jnp.array([1.0, -1.0]))
    assert sol.iterations is not None and int(sol.iterations) == 0


@pytest.mark.parametrize("solver", ["exact", "osqp", "cdqp"])
@pytest.mark.parametrize("side", ["lo", "hi"])
def test_one_sided_bounds_match_the_clipped_closed_form(solver, side, x64):
    """Only ``lo`` or only ``hi`` given: ``x = max(-c/d, lo)`` / ``min(-c/d, hi)``. Kills
    ``x__project__mutmut_26``, ``x__flat_bounds__mutmut_11/21/23`` (the missing side)."""
    d, c = jnp.array([1.0, 2.0, 4.0]), jnp.array([-2.0, 1.0, 0.5])
    bound = {"lo": jnp.array([0.5, 0.0, -1.0]), "hi": jnp.array([1.0, -1.0, 0.0])}[side]
    ref = jnp.maximum(-c / d, bound) if side == "lo" else jnp.minimum(-c / d, bound)
    sol = qp.solve_qp(qp.Diagonal(d), c, solver=solver, **{side: bound})
    np.testing.assert_allclose(sol.x, ref, atol=1e-8)
    assert int(sol.status) == qp.SOLVED


@pytest.mark.parametrize("x64_mode, dtype", [(True, "float32"), (False, "bfloat16")])
def test_cdqp_box_solution_keeps_the_dtype_of_c(x64_mode, dtype):
    """The solution is in the dtype of ``c`` even when that is not JAX's default float
    (float32 data with x64 on; half precision): the clipped closed form, exact in bfloat16
    here. Kills ``x__flat_bounds__mutmut_38`` (bounds cast to the default float, which
    promotes BoxCDQP's iterate: float64 / float32 solutions)."""
    with jax.enable_x64(x64_mode):
        dt = jnp.dtype(dtype)
        d, c = jnp.array([1.0, 2.0, 4.0], dt), jnp.array([-2.0, 1.0, 0.5], dt)
        lo, hi = jnp.full(3, -0.25, dt), jnp.ones(3, dt)
        sol = qp.solve_qp(qp.Diagonal(d), c, lo=lo, hi=hi, solver="cdqp")
        assert sol.x.dtype == dt
        np.testing.assert_array_equal(np.asarray(sol.x, np.float64), [1.0, -0.25, -0.125])


def test_equality_rows_without_rhs_are_refused():
    """Kills ``x_solve_qp__mutmut_8`` (``A`` without ``b`` slips past the check)."""
    with pytest.raises(ValueError, match="give A and b together"):
        qp.solve_qp(qp.Diagonal(jnp.ones(2)), jnp.ones(2), A=jnp.ones((1, 2)), solver="osqp")


def test_osqp_tolerance_is_the_one_given(x64):
    """A loose tolerance stops BoxOSQP earlier than the default 1e-12. Kills
    ``x__solve_osqp__mutmut_61`` (the option ignored: always the default)."""
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (6, 6))
    m = a @ a.T / 6 + jnp.eye(6)
    c = jax.random.normal(jax.random.PRNGKey(1), (6,))
    box = dict(lo=-0.1 * jnp.ones(6), hi=0.1 * jnp.ones(6))
    loose = qp.solve_qp(qp.Dense(m), c, solver=qp.OSQP(tol=1e-2), **box)
    tight = qp.solve_qp(qp.Dense(m), c, solver=qp.OSQP(), **box)
    assert int(loose.iterations) < int(tight.iterations)


def test_es_train_loss_is_the_mean_of_the_antithetic_pair():
    """ES's reported training loss is the mean of the two perturbed trajectories' (an
    estimate of the unperturbed loss); with a tiny sigma it matches the unperturbed unroll
    from the same states (forward only, no estimator). Kills
    ``xǁ_AntitheticBoundǁestimate__mutmut_104`` (their half-difference, about 0)."""
    theta, _ = _meta_and_pool(1)
    bound = meta.ES(horizon=4, truncation=2, num_tasks=3, sigma=1e-4).bind(LOPT, FAMILY)
    state = bound.init(theta, jax.random.PRNGKey(1))
    got, _ = bound(theta, state, jax.random.PRNGKey(2))
    run = bound.unroll()
    ref = jax.vmap(lambda s: run(theta, s, 2)[1].train_loss)(state.plus)
    assert float(jnp.min(ref)) > 1e-2
    np.testing.assert_allclose(got.train_loss, ref, rtol=1e-2)
