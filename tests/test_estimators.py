"""Meta-gradient estimators against exact references.

The statistical tests use the STAR paper's 2-D noisy quadratic with a learned scalar
log-step-size, where the expected meta-loss of an episode has a closed form: with
``A_t = I - eta_t H`` the parameter covariance evolves as
``C_{t+1} = A_t C_t A_t^T + eta_t^2 H Sigma H`` from ``C_0 = init_var I``, and the expected
"mean_train" term is ``(tr(H C_{t+1}) + tr(H Sigma)) / (2T)``. The Gaussian-smoothed
objectives that ES and PES are unbiased for are integrated with Gauss-Hermite quadrature.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_dco as ldco
from learned_dco import meta, tasks

T, K = 20, 5  # horizon = 4 truncations
LR, SIGMA = 0.1, 0.1
FAMILY = tasks.NoisyQuadratic.star()
LOPT = ldco.LearnedStepSize(learning_rate=LR)


# --- the closed-form NQM objective -------------------------------------------------------


def _episode_objective(log_lrs_per_step):
    """Expected 'mean_train' meta-loss of one episode with a step size per step."""
    h = jnp.asarray(FAMILY.hessian, log_lrs_per_step.dtype)
    sigma = FAMILY.noise_std**2 * jnp.eye(2, dtype=h.dtype)
    c0 = FAMILY.init_var * jnp.eye(2, dtype=h.dtype)

    def step(c, log_lr):
        eta = jnp.exp(log_lr)
        a = jnp.eye(2, dtype=h.dtype) - eta * h
        c = a @ c @ a.T + eta**2 * h @ sigma @ h
        return c, 0.5 * (jnp.trace(h @ c) + jnp.trace(h @ sigma)) / T

    return jnp.sum(jax.lax.scan(step, c0, log_lrs_per_step)[1])


def _segments(phase):
    """Segment (truncation) index of each episode step when the episode starts at
    position ``phase`` inside a truncation."""
    return (phase + np.arange(T)) // K


def _smoothed_grad(phi, phase, per_segment, nodes=6, sigma=SIGMA):
    """d/dphi E_eps[J(phi + eps_segment)] with independent (PES) or shared (ES) eps."""
    seg = _segments(phase)
    n_seg = int(seg[-1]) + 1 if per_segment else 1
    x, w = np.polynomial.hermite.hermgauss(nodes)
    grid = np.array(list(itertools.product(range(nodes), repeat=n_seg)))
    eps = np.sqrt(2.0) * sigma * x[grid]  # (nodes^n_seg, n_seg)
    weight = np.prod(w[grid], axis=1) / np.pi ** (n_seg / 2)
    seg_index = seg if per_segment else np.zeros(T, int)

    def total_derivative(e):
        return jax.grad(lambda p: _episode_objective(p + e[seg_index]))(phi)

    grads = jax.jit(jax.vmap(total_derivative))(jnp.asarray(eps))
    return float(jnp.sum(jnp.asarray(weight) * grads))


# --- running an estimator with the meta-parameters held fixed ----------------------------


# The suite compiles at XLA optimisation level 0 (conftest.py): it is compile-bound. The
# ES/PES bias tests below are not: 32768 tasks x 36 truncations run for seconds, so their
# estimator loop is compiled at XLA's default level 3 (PES test 27 s -> 17 s on 2 cores).
RUN_BOUND = {"xla_backend_optimization_level": 3}


def _collect(estimator, num_tasks, warmup, steps, seed=0, lopt=LOPT, compiler_options=None):
    """Per-task estimates over ``steps`` truncations after ``warmup`` ones."""
    params = FAMILY.init_params(None, FAMILY.sample(jax.random.PRNGKey(0)))
    theta = lopt.init(None, params)
    bound = estimator.bind(lopt, FAMILY)
    state = bound.init(theta, jax.random.PRNGKey(seed))
    offsets = np.asarray(state.plus.step if isinstance(state, meta.ESState) else state.step)

    def run(state, key):
        def body(state, k):
            est, state = bound(theta, state, k)
            return state, est.grad["log_lr"]

        return jax.lax.scan(body, state, jax.random.split(key, warmup + steps))

    run = jax.jit(run, compiler_options=compiler_options)

    _, grads = run(state, jax.random.PRNGKey(seed + 1))
    return np.asarray(grads[warmup:]), offsets, float(theta["log_lr"])


def _check_unbiased(grads, reference, z=4.0, power=0.15, plain=None, separation=5.0):
    """|mean - reference| < z standard errors, after checking the test's power: the
    standard error is below ``power`` x |reference| and, if given, the ``plain``
    (unsmoothed) gradient lies at least ``separation`` standard errors from the reference."""
    per_task = grads.mean(axis=0)  # tasks are independent; truncations within one are not
    mean = per_task.mean()
    se = per_task.std(ddof=1) / np.sqrt(per_task.size)
    assert se < power * abs(reference), f"test has no power: se={se:.3g}, reference={reference:.3g}"
    if plain is not None:
        assert abs(plain - reference) > separation * se, f"smoothed {reference:.5g} vs plain {plain:.5g}: se {se:.3g}"
    assert abs(mean - reference) < z * se, f"mean {mean:.5g} vs exact {reference:.5g} (se {se:.3g})"
    return mean, se


# ES/PES bias tests: a step size where smoothing matters (lr 0.3, sigma 0.25: the smoothed
# gradients are 12% (PES) and 9% (ES) above the plain one) and 32768 tasks x 8 episodes.
LR_SMOOTH, SIGMA_SMOOTH, TASKS_SMOOTH, EPISODES_SMOOTH = 0.3, 0.25, 32768, 8
LOPT_SMOOTH = ldco.LearnedStepSize(learning_rate=LR_SMOOTH)


def _plain_grad(phi):
    return float(jax.grad(lambda p: _episode_objective(jnp.full(T, p)))(phi))


def _pes_check(num_tasks, episodes, *, sigma=SIGMA, lopt=LOPT, z=4.0, power=0.15, separation=None,
               compiler_options=None):
    # stagger="step": episodes start at every position inside a truncation (the default aligns
    # them with the truncations when K divides T), so mid-truncation boundaries are exercised
    est = meta.PES(horizon=T, truncation=K, num_tasks=num_tasks, sigma=sigma, meta_loss="mean_train", stagger="step")
    grads, offsets, phi = _collect(est, num_tasks, warmup=T // K, steps=episodes * T // K, lopt=lopt,
                                   compiler_options=compiler_options)
    phases = (-offsets) % K  # where each task's episodes start inside a truncation
    exact = {p: _smoothed_grad(phi, p, per_segment=True, sigma=sigma) for p in np.unique(phases)}
    reference = float(np.mean([exact[p] for p in phases]))
    assert len(exact) == K  # every boundary position is exercised, mid-truncation ones too
    plain = None if separation is None else _plain_grad(phi)
    return _check_unbiased(grads, reference, z=z, power=power, plain=plain, separation=separation or 0.0)


def test_pes_is_unbiased_for_the_smoothed_full_horizon_gradient(x64):
    """32768 tasks x 8 episodes at lr 0.3, sigma 0.25: standard error 0.95% of the
    gradient (asserted < 1.1%), |bias| < 3.5 se. Power: a 5% bias is 5.3 se, caught with
    probability 96% (>= 85% at the asserted bound); the plain (unsmoothed) gradient is 14.7 se away (asserted
    >= 5 se), so an estimator of the plain gradient fails. Seen to fail when the estimate
    is scaled by 1.05 and when the accumulator is not reset at episode boundaries."""
    _pes_check(TASKS_SMOOTH, EPISODES_SMOOTH, sigma=SIGMA_SMOOTH, lopt=LOPT_SMOOTH, z=3.5, power=0.011,
               separation=5.0, compiler_options=RUN_BOUND)


def test_es_is_unbiased_for_the_smoothed_full_horizon_gradient(x64):
    """32768 tasks x 8 episodes at lr 0.3, sigma 0.25: standard error 0.87% of the
    gradient (asserted < 1%), |bias| < 3.5 se. Power: a 5% bias is 5.7 se, caught with
    probability 99% (>= 93% at the asserted bound); the plain gradient is 10.8 se away (asserted >= 5 se)."""
    est = meta.ES(horizon=T, truncation=K, num_tasks=TASKS_SMOOTH, sigma=SIGMA_SMOOTH, meta_loss="mean_train")
    grads, _, phi = _collect(est, TASKS_SMOOTH, warmup=T // K, steps=EPISODES_SMOOTH * T // K, lopt=LOPT_SMOOTH,
                             compiler_options=RUN_BOUND)
    reference = _smoothed_grad(phi, 0, per_segment=False, sigma=SIGMA_SMOOTH)
    _check_unbiased(grads, reference, z=3.5, power=0.01, plain=_plain_grad(phi), separation=5.0)


def test_truncated_bptt_bias_is_visible(x64):
    est = meta.TruncatedBPTT(horizon=T, truncation=K, num_tasks=256, meta_loss="mean_train")
    grads, _, phi = _collect(est, 256, warmup=T // K, steps=8 * T // K)
    exact = float(jax.grad(lambda p: _episode_objective(jnp.full(T, p)))(phi))
    per_task = grads.mean(axis=0)
    mean, se = per_task.mean(), per_task.std(ddof=1) / np.sqrt(per_task.size)
    assert abs(mean - exact) > 10 * se, f"TBPTT {mean:.4g} vs exact {exact:.4g} (se {se:.2g})"
    # Full-length truncations (K = T) remove the bias: the estimate is the exact gradient of
    # the sampled episode, whose mean is the true gradient.
    full = meta.TruncatedBPTT(horizon=T, truncation=T, num_tasks=256, meta_loss="mean_train", stagger=False)
    grads, _, _ = _collect(full, 256, warmup=1, steps=8)
    _check_unbiased(grads, exact)


def test_full_unroll_equals_jax_grad_of_the_unrolled_meta_loss(x64):
    """FullUnroll's per-task gradient is jax.grad of a hand-written unroll."""
    family = tasks.BevertonHolt(num_train=32, num_val=16)
    lopt = ldco.DCOM(learning_rate=0.05)
    est = meta.FullUnroll(horizon=4, num_tasks=3, meta_loss="final_val")
    key = jax.random.PRNGKey(0)
    task = family.sample(key)
    params = family.init_params(key, task)
    theta = lopt.init(key, params)
    states = est.tasks(lopt, family, theta, jax.random.PRNGKey(1))
    got = est.estimate_from(lopt, family, theta, states)

    def by_hand(theta, s):
        tx = lopt.opt_fn(theta)
        p, opt_state = s.params, tx.init(s.params)
        for _ in range(4):
            g = jax.grad(family.loss)(p, s.task)
            u, opt_state = tx.update(g, opt_state, p)
            p = optax.apply_updates(p, u)
        return family.val_loss(p, s.task)

    value_and_grad = jax.jit(jax.value_and_grad(by_hand))
    for i in range(3):
        s = jax.tree.map(lambda x: x[i], states)
        value, grad = value_and_grad(theta, s)
        np.testing.assert_allclose(got.meta_loss[i], value, rtol=1e-10)
        for a, b in zip(jax.tree.leaves(got.grad), jax.tree.leaves(grad)):
            np.testing.assert_allclose(a[i], b, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (meta.TruncatedBPTT, dict(horizon=10, truncation=20), "truncation"),
        (meta.PES, dict(horizon=10, truncation=5, sigma=0.0), "sigma"),
        (meta.ES, dict(horizon=10, truncation=5, sigma=-1.0), "sigma"),
        (meta.FullUnroll, dict(horizon=0), "horizon"),
        (meta.FullUnroll, dict(num_tasks=2.5), "num_tasks"),
        (meta.PES, dict(meta_loss="final_accuracy"), "meta_loss"),
    ],
)
def test_bad_estimator_settings_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def _mean_train_by_hand(theta, s, steps, fresh_batch):
    """MeanTrain over ``steps`` updates from inner state ``s`` as a Python loop drawing the
    estimators' minibatches: ``(meta-loss, mean training loss l(theta_t; b_t))``."""
    tx, p, key, total, train = LOPT.opt_fn(theta), s.params, s.key, 0.0, 0.0
    opt_state = s.opt_state
    for _ in range(steps):
        key, k_batch, k_meta, _ = jax.random.split(key, 4)
        value, g = jax.value_and_grad(FAMILY.loss)(p, s.task, FAMILY.sample_batch(k_batch, s.task))
        u, opt_state = tx.update(g, opt_state, p)
        p = optax.apply_updates(p, u)
        fresh = FAMILY.loss(p, s.task, FAMILY.sample_batch(k_meta, s.task))
        total = total + (fresh if fresh_batch else value) / steps
        train = train + value / steps
    return total, train


@pytest.mark.parametrize("fresh_batch", [True, False])
def test_mean_train_both_conventions_equal_jax_grad_of_a_hand_written_unroll(x64, fresh_batch):
    """MeanTrain(fresh_batch=True) scores theta_{t+1} on a fresh batch; fresh_batch=False
    reuses l(theta_t; b_t) computed with the gradient (learned_optimization's convention).
    Both against jax.grad of a Python loop drawing the same minibatches; the reported training
    loss is the mean of l(theta_t; b_t) in both."""
    T_ = 3
    est = meta.FullUnroll(horizon=T_, num_tasks=2, meta_loss=meta.MeanTrain(fresh_batch=fresh_batch))
    params = FAMILY.init_params(None, FAMILY.sample(jax.random.PRNGKey(0)))
    theta = LOPT.init(None, params)
    bound = est.bind(LOPT, FAMILY)
    states = bound.start(theta, (), jax.random.PRNGKey(1))
    got, _ = bound.estimate(theta, states, None)

    for i in range(2):
        s = jax.tree.map(lambda x: x[i], states)
        (value, train), grad = jax.value_and_grad(_mean_train_by_hand, has_aux=True)(theta, s, T_, fresh_batch)
        np.testing.assert_allclose(got.meta_loss[i], value, rtol=1e-10)
        np.testing.assert_allclose(got.train_loss[i], train, rtol=1e-10)
        np.testing.assert_allclose(got.grad["log_lr"][i], grad["log_lr"], rtol=1e-8)


def test_es_reports_the_mean_meta_loss_of_its_antithetic_pair(x64):
    """ES over whole episodes reports, per task, (L(theta + e) + L(theta - e)) / 2 for the
    pair's perturbation e, each L a hand-written unroll from the pair's own start."""
    T_ = 3
    est = meta.ES(horizon=T_, truncation=T_, num_tasks=2, sigma=0.1, meta_loss=meta.MeanTrain(fresh_batch=False))
    params = FAMILY.init_params(None, FAMILY.sample(jax.random.PRNGKey(0)))
    theta = LOPT.init(None, params)
    bound = est.bind(LOPT, FAMILY)
    states = bound.start(theta, est.init(LOPT, FAMILY, theta, jax.random.PRNGKey(2)), jax.random.PRNGKey(3))
    got, _ = bound.estimate(theta, states, jax.random.PRNGKey(3))
    for i in range(2):
        plus, minus, e = jax.tree.map(lambda x: x[i], (states.plus, states.minus, states.noise))
        lp = _mean_train_by_hand(jax.tree.map(jnp.add, theta, e), plus, T_, False)[0]
        lm = _mean_train_by_hand(jax.tree.map(jnp.subtract, theta, e), minus, T_, False)[0]
        assert float(lp) != pytest.approx(float(lm), rel=1e-6)  # the pair differs
        np.testing.assert_allclose(got.meta_loss[i], 0.5 * (lp + lm), rtol=1e-9)


def test_meta_losses_are_values_validated_at_construction():
    assert meta.as_meta_loss("mean_train") == meta.MeanTrain(fresh_batch=True)
    assert meta.PES(meta_loss="final_val").meta_loss == meta.FinalVal()
    assert meta.TruncatedBPTT(meta_loss=meta.MeanTrain(fresh_batch=False)).meta_loss.fresh_batch is False
    with pytest.raises(ValueError, match="fresh_batch"):
        meta.MeanTrain(fresh_batch="no")
    with pytest.raises(ValueError, match="unknown meta_loss 'final_accuracy'"):
        meta.FullUnroll(meta_loss="final_accuracy")


def test_truncated_bptt_across_an_episode_boundary_equals_jax_grad_of_a_hand_written_truncation(x64):
    """TruncatedBPTT over a truncation that an episode boundary splits (stagger="step",
    K = 4 not dividing T = 6; tasks at steps 0, 2, 3 and 5 end their episode after 4 (the
    last step), 4, 3 and 1 steps): the meta-loss sums the terms of both episodes, the
    gradient is jax.grad of a Python loop that restarts the task where its episode ends."""
    from _unroll_reference import check_truncated_estimate

    horizon, trunc = 6, 4
    est = meta.TruncatedBPTT(horizon=horizon, truncation=trunc, num_tasks=4, meta_loss="mean_train", stagger="step")
    params = FAMILY.init_params(None, FAMILY.sample(jax.random.PRNGKey(0)))
    theta = LOPT.init(None, params)
    bound = est.bind(LOPT, FAMILY)
    states = bound.init(theta, jax.random.PRNGKey(1))._replace(step=jnp.array([0, 2, 3, 5], jnp.int32))
    estimate, next_states = bound(theta, states, jax.random.PRNGKey(2))
    check_truncated_estimate(estimate, next_states, LOPT, FAMILY, horizon, trunc, theta, states, rtol=1e-10)
    np.testing.assert_array_equal(next_states.step, [4, 0, 1, 3])
