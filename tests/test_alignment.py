"""Episode boundaries aligned with truncations: the truncated estimators' cheap path.

With the default ``stagger`` and a truncation ``K`` dividing the horizon ``T``, episodes
start at multiples of ``K``, every boundary falls at the end of a truncation, and
``Unroll(..., boundary_inside=False)`` resets once after the scan instead of selecting a
fresh state at every step. The reference is the per-step path (``boundary_inside=True``),
which handles a boundary anywhere.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_dco as ldco
from learned_dco import meta, tasks
from learned_dco.meta.starts import initial_states
from learned_dco.meta.unroll import Unroll, ends_aligned

T, K, N = 12, 4, 6
FAMILY = tasks.NoisyQuadratic.star()  # minibatch noise: the key chain matters
LOPT = ldco.DCOM(learning_rate=0.5)  # a stateful optimizer: the reset restarts its state too


@dataclasses.dataclass(frozen=True)
class _StateFromMeta:
    """GD whose optimizer *state* is the step size it was initialised with, so a restart
    under the wrong meta-parameters (e.g. the plus trajectory's for the minus one) shows."""

    def init(self, key, params):
        return {"log_lr": jnp.asarray(-1.0)}

    def opt_fn(self, meta):
        lr = jnp.exp(meta["log_lr"])
        return optax.GradientTransformation(
            lambda params: lr, lambda g, s, params=None: (jax.tree.map(lambda x: -s * x, g), s))


def _meta():
    params = FAMILY.init_params(jax.random.PRNGKey(0), FAMILY.sample(jax.random.PRNGKey(0)))
    return LOPT.init(jax.random.PRNGKey(1), params)


def _states(meta_params, steps, lopt=LOPT):
    states = initial_states(lopt, FAMILY, meta_params, jax.random.PRNGKey(2), len(steps), horizon=T)
    return states._replace(step=jnp.asarray(steps, jnp.int32))


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(x.dtype, jnp.floating):
            np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)  # float32 rounding of other fusions
        else:
            np.testing.assert_array_equal(x, y)  # steps, keys: the same resets, the same streams


@pytest.mark.parametrize("lopt", [LOPT, _StateFromMeta()], ids=["dcom", "state_from_meta"])
@pytest.mark.parametrize("with_after", [False, True])
def test_reset_after_the_scan_equals_the_per_step_reset(with_after, lopt):
    """Tasks at steps 0, K, ..., T - K (the last one ends its episode at the truncation's last
    step) give the same states, loss sums and reset flags on both paths, with and without a
    different meta-parameter for the next episode (ES/PES)."""
    m = _meta() if lopt is LOPT else lopt.init(None, None)
    after = jax.tree.map(lambda x: x + 0.3, m) if with_after else None
    states = _states(m, [0, K, T - K, T - K, K, 0], lopt)
    assert bool(ends_aligned(states, T, K))
    run = Unroll(lopt, FAMILY, T, meta.MeanTrain())
    fast = jax.jit(jax.vmap(lambda s: run(m, s, K, meta_after=after, boundary_inside=False)))(states)
    slow = jax.jit(jax.vmap(lambda s: run(m, s, K, meta_after=after)))(states)
    _assert_same(fast, slow)
    np.testing.assert_array_equal(fast[1].reset, [False, False, True, True, False, False])
    np.testing.assert_array_equal(fast[0].step, [K, 2 * K, 0, 0, 2 * K, K])


def test_ends_aligned_is_false_when_a_boundary_falls_inside():
    m = _meta()
    assert bool(ends_aligned(_states(m, [0, T - K]), T, K))
    assert not bool(ends_aligned(_states(m, [0, T - K + 1]), T, K))  # ends at the 3rd of 4 steps


def test_default_stagger_uses_multiples_of_the_truncation():
    """Offsets are uniform over the multiples of K when K divides T (all T/K of them occur in
    200 tasks with probability > 1 - 3 (2/3)^200), and uniform over the steps otherwise."""
    m = _meta()
    for est, expected in [
        (meta.TruncatedBPTT(horizon=T, truncation=K, num_tasks=200), set(range(0, T, K))),
        (meta.PES(horizon=T, truncation=K, num_tasks=200, stagger="step"), set(range(T))),
        (meta.TruncatedBPTT(horizon=T, truncation=5, num_tasks=200), set(range(T))),  # 5 does not divide 12
        (meta.ES(horizon=T, truncation=K, num_tasks=200, stagger=False), {0}),
    ]:
        state = est.bind(LOPT, FAMILY).init(m, jax.random.PRNGKey(3))
        steps = np.asarray(state.plus.step if isinstance(state, meta.ESState) else state.step)
        assert set(steps.tolist()) == expected, est


@pytest.mark.parametrize("lopt", [LOPT, _StateFromMeta()], ids=["dcom", "state_from_meta"])
@pytest.mark.parametrize("cls", [meta.TruncatedBPTT, meta.ES, meta.PES])
def test_estimators_take_the_same_values_from_aligned_and_per_step_starts(cls, lopt):
    """Three truncations of each estimator from the default (aligned) start equal the same
    computation forced down the per-step path; a restored state with unaligned phases takes
    the per-step branch of the same compiled step."""
    from learned_dco.meta import estimators as E

    kw = {} if cls is meta.TruncatedBPTT else {"sigma": 0.05}
    est = cls(horizon=T, truncation=K, num_tasks=N, **kw)
    bound = est.bind(lopt, FAMILY)
    m = _meta() if lopt is LOPT else lopt.init(None, None)
    state = bound.init(m, jax.random.PRNGKey(4))

    def three(by_alignment):
        original = E._by_alignment
        E._by_alignment = by_alignment
        try:
            step = jax.jit(lambda s, k: bound(m, s, k))
            s, outs = state, []
            for i in range(3):
                e, s = step(s, jax.random.PRNGKey(10 + i))
                outs.append(e)
            return outs, s
        finally:
            E._by_alignment = original

    _assert_same(three(E._by_alignment), three(lambda est, states, batch: batch(True)))


def test_unknown_stagger_is_a_named_error():
    with pytest.raises(ldco.validation.ValidationError, match="PES.stagger"):
        meta.PES(horizon=T, truncation=K, stagger="steps")


def test_restored_unaligned_phases_take_the_per_step_branch(x64):
    """K divides T and the default stagger is on, but the states are restored with phases
    that are not multiples of K (steps 0, 4, 9, 11: episodes ending after 4 (the last step),
    4, 3 and 1 of the K = 4 steps). The estimate must split those truncations at the
    boundary: value, gradient, training loss and next states against jax.grad of a Python
    loop that restarts each task where its episode ends."""
    from _unroll_reference import check_truncated_estimate

    lopt = ldco.LearnedStepSize(learning_rate=0.1)  # cheap to run by hand
    est = meta.TruncatedBPTT(horizon=T, truncation=K, num_tasks=4, meta_loss="mean_train")
    m = lopt.init(None, FAMILY.init_params(None, FAMILY.sample(jax.random.PRNGKey(0))))
    bound = est.bind(lopt, FAMILY)
    states = bound.init(m, jax.random.PRNGKey(4))._replace(step=jnp.array([0, 4, 9, 11], jnp.int32))
    assert not bool(ends_aligned(states, T, K))
    estimate, next_states = bound(m, states, jax.random.PRNGKey(5))
    check_truncated_estimate(estimate, next_states, lopt, FAMILY, T, K, m, states, rtol=1e-10)
    np.testing.assert_array_equal(next_states.step, [4, 8, 1, 3])
