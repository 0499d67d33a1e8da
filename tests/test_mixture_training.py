"""Meta-training on a task mixture (MetaTrainer with a tasks.Mixture), the scale-free
MeanLogTrain meta-loss, and the horizon-aware scheduled optimizers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_dco as ldco
from learned_dco import meta, tasks
from learned_dco.meta.inner import InnerState, Step
from learned_dco.validation import ValidationError

SMALL = (tasks.Quadratic(dim=3), tasks.Quadratic(dim=5), tasks.SoftmaxRegression(data="synthetic", dim=4, num_classes=3,
                                                                                 num_examples=32, n_val=8, batch_size=8))


def _mixture(horizons=(2, 3), weights=None):
    return tasks.Mixture(SMALL, weights=weights, horizons=horizons)


# --- draws -----------------------------------------------------------------------------------


def test_draws_follow_the_weights_and_depend_only_on_key_and_step():
    """Member frequencies over 600 meta-steps vs weights (1, 2, 3)/6: each count is within
    4.5 binomial standard deviations (a 0.5-vs-0.33 swap of two weights is ~9 sd away)."""
    trainer = meta.MetaTrainer(ldco.LearnedStepSize(), _mixture(weights=(1, 2, 3)), meta.FullUnroll(horizon=1, num_tasks=2))
    state = trainer.init(jax.random.PRNGKey(0))
    draws = [trainer.draw(state._replace(step=jnp.asarray(k, jnp.int32))) for k in range(600)]
    counts = np.bincount([i for i, _ in draws], minlength=3)
    p = np.array([1, 2, 3]) / 6
    assert np.all(np.abs(counts - 600 * p) < 4.5 * np.sqrt(600 * p * (1 - p))), counts
    assert {h for _, h in draws} == {2, 3}
    again = trainer.init(jax.random.PRNGKey(0))  # same key: same draws (a resumed run draws alike)
    assert [trainer.draw(again._replace(step=jnp.asarray(k, jnp.int32))) for k in range(20)] == draws[:20]


# --- routing: the drawn member, horizon and optimizer are the ones the step runs ------------------


@pytest.mark.parametrize("lopt", [ldco.ScheduledAdam(num_steps=50, learning_rate=0.05), ldco.LearnedStepSize()])
def test_meta_gradient_equals_the_members_own_trainer(lopt):
    """The mixture's meta-gradient at a state equals that of a plain MetaTrainer on the drawn
    member with ``FullUnroll(horizon=T)`` and, for a horizon-aware optimizer,
    ``num_steps=T`` (fails if the member, the horizon or ``num_steps`` is not routed)."""
    est = meta.FullUnroll(horizon=7, num_tasks=2, meta_loss="mean_train")
    trainer = meta.MetaTrainer(lopt, _mixture(), est)
    state = trainer.init(jax.random.PRNGKey(1))
    seen = set()
    for k in range(6):
        s = state._replace(step=jnp.asarray(k, jnp.int32))
        index, horizon = trainer.draw(s)
        seen.add((index, horizon))
        own_lopt = dataclasses.replace(lopt, num_steps=horizon) if hasattr(lopt, "num_steps") else lopt
        own = meta.MetaTrainer(own_lopt, SMALL[index], dataclasses.replace(est, horizon=horizon))
        want = own.meta_gradient(s)
        got = trainer.meta_gradient(s)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert len({i for i, _ in seen}) >= 2 and len({h for _, h in seen}) == 2


def test_es_member_runs_whole_episodes():
    trainer = meta.MetaTrainer(ldco.ScheduledAdam(), _mixture(horizons=(4, 9)), meta.ES(horizon=10, truncation=5, num_tasks=2))
    family, est, lopt = trainer.member(1, 9)
    assert family == SMALL[1] and (est.horizon, est.truncation, est.stagger) == (9, 9, False) and lopt.num_steps == 9


def test_a_second_pass_compiles_nothing():
    """After every (member, horizon) has run once, further meta-steps compile no program:
    the number of built programs and of compiled executables stays the same."""
    trainer = meta.MetaTrainer(ldco.ScheduledAdam(), _mixture(horizons=(2, 3)),
                               meta.ES(horizon=3, truncation=3, num_tasks=2, sigma=0.1, meta_loss=meta.MeanLogTrain()),
                               optax.adam(1e-2))
    state = trainer.init(jax.random.PRNGKey(2))
    pairs = set()
    k = 0
    while len(pairs) < 6:
        pairs.add(trainer.draw(state))
        state, metrics = trainer.step(state)
        k += 1
        assert k < 200
    assert np.isfinite(float(metrics.meta_loss))
    built = len(trainer._programs) - 1  # beside the initial stage's program
    compiled = sum(f._cache_size() for f in trainer._programs.values())
    assert built == 6 and compiled == 6
    for _ in range(12):
        state, _ = trainer.step(state)
    assert len(trainer._programs) - 1 == built
    assert sum(f._cache_size() for f in trainer._programs.values()) == compiled
    assert int(state.step) == k + 12


def test_mixture_errors_are_named():
    mix = _mixture()
    with pytest.raises(ValidationError, match="whole-episode"):
        meta.MetaTrainer(ldco.ScheduledAdam(), mix, meta.PES(horizon=4, truncation=2, num_tasks=2))
    with pytest.raises(ValidationError, match="pool must be None"):
        meta.MetaTrainer(ldco.ScheduledAdam(), mix, meta.FullUnroll(num_tasks=2), pool=SMALL[0].sample(jax.random.PRNGKey(0)))
    with pytest.raises(ValidationError, match="depend on the model's shapes"):
        meta.MetaTrainer(ldco.DCOG(), mix, meta.FullUnroll(num_tasks=2))
    trainer = meta.MetaTrainer(ldco.ScheduledAdam(), mix, meta.FullUnroll(num_tasks=2))
    with pytest.raises(ValidationError, match="loop over MetaTrainer.step"):
        trainer.train(jax.random.PRNGKey(0), 2)


# --- MeanLogTrain ------------------------------------------------------------------------------


def _step(loss):
    return Step(InnerState(None, None, None, jnp.zeros((), jnp.int32), None), jnp.asarray(loss), None, None, None, None, None)


@pytest.mark.parametrize(
    "loss, want",
    [(2.0, np.log(2.0)), (1e-20, np.log(1e-8)), (1e9, np.log(1e4)), (np.inf, np.log(1e4)), (np.nan, np.log(1e4))],
)
def test_mean_log_train_clips_and_scores_divergence_as_the_ceiling(loss, want):
    term = meta.MeanLogTrain().step_term(None, _step(loss), horizon=4)
    np.testing.assert_allclose(term, want / 4, rtol=1e-6)


def test_mean_log_train_is_scale_free_and_validated():
    lt = meta.MeanLogTrain()
    a = lt.step_term(None, _step(3.0), 10) - lt.step_term(None, _step(1.5), 10)
    b = lt.step_term(None, _step(300.0), 10) - lt.step_term(None, _step(150.0), 10)
    np.testing.assert_allclose(a, b, rtol=1e-5)  # a 100x larger task does not weigh more
    assert meta.as_meta_loss("mean_log_train") == lt
    with pytest.raises(ValueError, match="floor < ceiling"):
        meta.MeanLogTrain(floor=10.0, ceiling=1.0)


# --- the scheduled optimizers --------------------------------------------------------------------


def test_knot_schedule_interpolates_and_holds_after_the_run():
    sched = ldco.optimizers.knot_schedule(jnp.log(jnp.array([1.0, 0.1, 0.01])), num_steps=10)
    # knots at t = 0, 5, 10; log-linear in between; constant after 10
    np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(40)], [1.0, 0.1, 0.01, 0.01], rtol=1e-5)
    np.testing.assert_allclose(sched(2), np.exp(np.log(1.0) + 0.4 * (np.log(0.1) - np.log(1.0))), rtol=1e-5)
    np.testing.assert_allclose(sched(7), np.exp(np.log(0.1) + 0.4 * (np.log(0.01) - np.log(0.1))), rtol=1e-5)


def test_knot_schedule_clips_its_log_values():
    """Every real meta-parameter is valid: log rates beyond +-LOG_CLIP are clipped, so the
    rate stays finite and positive (exp(200) would be inf in float32, exp(-200) zero)."""
    clip = ldco.optimizers.scheduled.LOG_CLIP
    sched = ldco.optimizers.knot_schedule(jnp.array([200.0, -200.0]), num_steps=4)
    np.testing.assert_allclose([sched(0), sched(4)], [np.exp(clip), np.exp(-clip)], rtol=1e-5)


def _updates(tx, steps=5):
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.3)}
    loss = lambda p: jnp.sum(p["w"] ** 4) + (p["b"] - 1.0) ** 2  # noqa: E731
    state = tx.init(params)
    out = []
    for _ in range(steps):
        u, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out


@pytest.mark.parametrize(
    "lopt, reference",
    [
        (ldco.ScheduledAdam(learning_rate=0.01, b1=0.8, b2=0.99), optax.adam(0.01, b1=0.8, b2=0.99)),
        (ldco.LearnedProdigy(), optax.contrib.prodigy()),
    ],
)
def test_initial_meta_is_the_hand_designed_optimizer(lopt, reference):
    meta_ = lopt.init(jax.random.PRNGKey(0), {"w": jnp.zeros(3)})
    for got, want in zip(_updates(lopt.opt_fn(meta_)), _updates(reference)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9)


def test_learned_prodigy_is_optax_prodigy_for_any_meta():
    """The library's own Prodigy (written for a NaN-free meta-gradient) against
    ``optax.contrib.prodigy`` given the same schedule, betas and coefficient, over 30 steps
    with a varying schedule: the estimate d_t and every update agree to float32 rounding."""
    lopt = ldco.LearnedProdigy(num_steps=30)
    meta_ = lopt.init(None, {"w": jnp.zeros(3)})
    meta_ = {**meta_, "log_lr": meta_["log_lr"] + jnp.linspace(-0.5, 0.7, lopt.knots),
             "b1_logit": jnp.asarray(1.5), "b2_logit": jnp.asarray(5.0), "log_coef": jnp.asarray(0.4)}
    b1, b2 = lopt.betas(meta_)
    reference = optax.contrib.prodigy(lopt.schedule(meta_), betas=(b1, b2), eps=lopt.eps,
                                      estim_lr0=lopt.estim_lr0, estim_lr_coef=jnp.exp(meta_["log_coef"]))
    for got, want in zip(_updates(lopt.opt_fn(meta_), 30), _updates(reference, 30)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_scheduled_adam_follows_its_schedule():
    """With knots (1e-2, 1e-3) over 4 steps, step t's Adam update is eta_t * mhat/sqrt(vhat):
    the ratio of updates to optax.adam(1.0) is exp of the interpolated log rate."""
    lopt = ldco.ScheduledAdam(num_steps=4, knots=2)
    meta_ = lopt.init(jax.random.PRNGKey(0), {"w": jnp.zeros(3)})
    meta_["log_lr"] = jnp.log(jnp.array([1e-2, 1e-3]))
    got = _updates(lopt.opt_fn(meta_), steps=6)
    unit = _updates(optax.adam(1.0), steps=1)[0]
    np.testing.assert_allclose(got[0]["w"], 1e-2 * unit["w"], rtol=1e-5)
    # later steps: compare against optax.adam with the same schedule written by hand
    ref = _updates(optax.adam(lambda t: jnp.exp(jnp.interp(jnp.minimum(t / 4, 1.0), jnp.array([0.0, 1.0]),
                                                           jnp.log(jnp.array([1e-2, 1e-3]))))), steps=6)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a["w"], b["w"], rtol=1e-5)


def test_scheduled_optimizers_reject_bad_fields():
    with pytest.raises(ValidationError, match="knots"):
        ldco.ScheduledAdam(knots=1)
    with pytest.raises(ValidationError, match="b2"):
        ldco.LearnedProdigy(b2=1.0)
    with pytest.raises(ValidationError, match="num_steps"):
        ldco.ScheduledAdam(num_steps=0)
