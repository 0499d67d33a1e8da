"""Step-size learning-to-learn: the stable log objective against naive backprop and the
spectral closed form; gradient vanishing/explosion of the last-iterate objective; the
train-by-train vs train-by-validation effect (scaled-down paper setting)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_dco.studies import stepsize_l2l as S


def _quadratic(d=12, seed=0, lo=0.1, hi=1.0):
    """A quadratic with eigenvalues evenly spread in [lo, hi] (L = hi) and f* = 0."""
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(seed), (d, d)))
    H = (q * jnp.linspace(lo, hi, d)) @ q.T
    w_star = jax.random.normal(jax.random.PRNGKey(seed + 1), (d,))
    return S.quadratic(H, w_star), jnp.zeros(d)


def _regression(d=30, n=20, seed=2):
    tasks = S.sample_regression(jax.random.PRNGKey(seed), 1, d, n)
    full = jax.tree.map(lambda x: x[0], S.all_samples(tasks))
    train, val = (jax.tree.map(lambda x: x[0], p) for p in S.split(tasks, n // 2))
    return full, train, val, jnp.zeros(d)


grad = jax.grad


@functools.partial(jax.jit, static_argnames=("t", "tbt"))
def _evaluate(log_etas, start, problem, val, t, tbt):
    """Values and log-eta gradients of every objective, vmapped over step sizes."""
    held_out = None if tbt else val
    fns = {"naive": S.log_loss_naive, "stable": S.log_loss_stable}
    if tbt:
        fns["spectral"] = lambda le, w0, p, t, v: S.log_loss_spectral(le, w0, p, t)

    def one(le):
        return {k: jax.value_and_grad(f)(le, start, problem, t, held_out) for k, f in fns.items()}

    return jax.vmap(one)(log_etas)


def test_stable_equals_naive_and_spectral_where_naive_is_finite(x64):
    quad, w0q = _quadratic()
    full, train, val, w0 = _regression()
    cases = [(quad, None, w0q), (full, None, w0), (train, val, w0)]
    for problem, held_out, start in cases:
        L = float(S.smoothness(problem))
        log_etas = jnp.log(jnp.array([0.05, 0.7, 1.5, 2.6]) / L)
        for t in (30,):
            out = _evaluate(log_etas, start, problem, problem if held_out is None else held_out, t, held_out is None)
            (v_naive, g_naive), (v_stable, g_stable) = out["naive"], out["stable"]
            assert np.all(np.isfinite(v_naive))
            np.testing.assert_allclose(v_stable, v_naive, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(g_stable, g_naive, rtol=1e-7, atol=1e-10)
            if held_out is None:  # train-by-train: also the eigenbasis closed form
                v_spec, g_spec = out["spectral"]
                np.testing.assert_allclose(v_stable, v_spec, rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(g_stable, g_spec, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("eta_times_L", [5.0, 30.0])
def test_stable_log_gradient_is_bounded_where_naive_overflows(x64, eta_times_L):
    quad, w0 = _quadratic()
    le = jnp.log(eta_times_L / S.smoothness(quad))  # far above 2/L
    bound = float(S.log_grad_bound(le, w0, quad))
    for t in (10, 100, 1000):
        g = float(grad(S.log_loss_stable)(le, w0, quad, t))
        np.testing.assert_allclose(g, grad(S.log_loss_spectral)(le, w0, quad, t), rtol=1e-8)
        assert np.isfinite(g) and abs(g) <= bound * (1 + 1e-9)
    # t = 1000: |1 - eta L|^1000 overflows float64; the naive computation breaks.
    naive_value = S.log_loss_naive(le, w0, quad, 1000)
    naive_grad = grad(S.log_loss_naive)(le, w0, quad, 1000)
    assert not (np.isfinite(naive_value) and np.isfinite(naive_grad))
    np.testing.assert_allclose(
        S.log_loss_stable(le, w0, quad, 1000), S.log_loss_spectral(le, w0, quad, 1000), rtol=1e-10
    )


def test_stable_log_objective_in_float32_and_converging_regime(x64):
    quad64, w0_64 = _quadratic()
    quad32 = jax.tree.map(lambda x: x.astype(jnp.float32), quad64)  # f* = 0 stays exact
    w0_32 = w0_64.astype(jnp.float32)
    L = float(S.smoothness(quad64))
    for eta in (0.5 / L, 1.7 / L, 3.0 / L):  # converging (errors underflow) and diverging
        le64 = jnp.log(jnp.float64(eta))
        le32 = le64.astype(jnp.float32)
        ref = float(grad(S.log_loss_spectral)(le64, w0_64, quad64, 1000))
        g32 = float(grad(S.log_loss_stable)(le32, w0_32, quad32, 1000))
        assert np.isfinite(g32)
        np.testing.assert_allclose(g32, ref, rtol=2e-3, atol=1e-4)
        naive32 = grad(S.log_loss_naive)(le32, w0_32, quad32, 1000)
        assert not np.isfinite(naive32) or abs(float(naive32) - ref) > 0.05 * abs(ref)


def test_last_iterate_gradient_vanishes_below_and_explodes_above_two_over_L(x64):
    quad, w0 = _quadratic()
    L = float(S.smoothness(quad))
    below = [abs(float(grad(S.last_iterate_loss)(jnp.log(1.2 / L), w0, quad, t))) for t in (10, 40, 160)]
    above = [abs(float(grad(S.last_iterate_loss)(jnp.log(2.4 / L), w0, quad, t))) for t in (10, 40, 160)]
    assert below[0] > 1e2 * below[1] > 1e4 * below[2]  # ~ t rho^(2t) decay (rho = 0.88 here)
    assert above[2] > 1e6 * above[1] > 1e12 * above[0]  # ~ t rho^(2t) growth (rho = 1.4 here)
    # The log objective's gradient at the same points stays O(1).
    for le in (jnp.log(1.2 / L), jnp.log(2.4 / L)):
        assert abs(float(grad(S.log_loss_stable)(le, w0, quad, 160))) < 10.0


def test_train_by_train_picks_a_larger_step_and_generalises_worse():
    # Scaled-down paper setting: d = 80, n = 40 (TbT) vs 20 + 20 (TbV), t = 40, noise 1.
    d, n, t = 80, 40, 40
    tasks = S.sample_regression(jax.random.PRNGKey(0), 8, d, n)
    train, val = S.split(tasks, n // 2)
    tbt = S.meta_train(S.all_samples(tasks), t, steps=150, learning_rate=0.1)
    tbv = S.meta_train(train, t, val, steps=150, learning_rate=0.1)
    eta_tbt, eta_tbv = float(jnp.exp(tbt.log_eta)), float(jnp.exp(tbv.log_eta))
    L = float(jnp.mean(jax.vmap(S.smoothness)(S.all_samples(tasks))))
    assert eta_tbt > 0.5 / L  # Theta(1): of the order of 1/L
    assert eta_tbv < 0.5 / t and eta_tbt > 10 * eta_tbv
    # Both meta-objectives were minimised (Adam converged to a stationary point).
    for fit, args in ((tbt, (S.all_samples(tasks), t)), (tbv, (train, t, val))):
        assert abs(float(grad(S.meta_objective)(fit.log_eta, *args))) < 2e-2
    # Held-out (population) loss on new tasks, GD on all n samples with each step size.
    test = S.sample_regression(jax.random.PRNGKey(1), 8, d, n)
    problems = S.all_samples(test)

    def held_out(log_eta):
        w = jax.vmap(lambda p: S.gd(log_eta, jnp.zeros(d), p, t))(problems)
        return float(jnp.mean(S.population_loss(w, test.w_star, test.noise)))

    assert held_out(tbt.log_eta) > held_out(tbv.log_eta) + 0.1


def test_bad_input_raises():
    quad, w0 = _quadratic(d=4)
    with pytest.raises(ValueError, match="horizon"):
        S.log_loss_stable(jnp.zeros(()), w0, quad, 0)
    with pytest.raises(ValueError, match="unknown step-size objective"):
        S.objective_fn("sum")
    with pytest.raises(ValueError, match="least_squares"):
        S.least_squares(jnp.ones((3, 2)), jnp.ones(2))
    with pytest.raises(ValueError, match="quadratic"):
        S.quadratic(jnp.eye(3), jnp.ones(2))
    with pytest.raises(ValueError, match="num_samples"):
        S.sample_regression(jax.random.PRNGKey(0), 2, 3, 0)
    tasks = S.sample_regression(jax.random.PRNGKey(0), 2, 3, 4)
    with pytest.raises(ValueError, match="num_train"):
        S.split(tasks, 4)


def test_the_old_module_name_is_a_deprecated_alias():
    import importlib
    import sys

    sys.modules.pop("learned_dco.stepsize_l2l", None)
    with pytest.warns(DeprecationWarning, match="learned_dco.studies.stepsize_l2l"):
        old = importlib.import_module("learned_dco.stepsize_l2l")
    assert old.log_loss_stable is S.log_loss_stable
