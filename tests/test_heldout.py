"""benchmarks/heldout.py: its metrics and tuning against hand-computed values (no timing)."""

import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import heldout as H


def test_iqm_drops_the_outer_quartiles():
    assert H.iqm([1, 2, 3, 4]) == 2.5
    assert H.iqm([0.5, 1.0, 3.0, 2.0, 100.0, 7.0, np.nan, None]) == np.mean([2.0, 3.0, 7.0, 100.0])
    assert H.iqm([1.0, 2.0, None, None]) == np.inf  # diverged problems count as the worst
    assert H.iqm([]) is None


def test_divergence_rule():
    assert H.diverged(np.array([1.0, np.nan]))
    assert H.diverged(np.array([1.0, 0.01, 2.0]))  # above 10x its best and above the start
    assert not H.diverged(np.array([1.0, 0.01, 0.5]))  # worse than its best but below the start
    assert not H.diverged(np.array([1.0, 0.5, 0.4]))


def test_tune_picks_the_exact_rate_and_speedup():
    """SGD on 1/2 x^2 from x = 1: after T steps the loss is (1 - lr)^(2T) / 2, so lr = 1 of the
    grid reaches 0 in one step and is the best rate."""
    prob = H.Problem("q", lambda key: jnp.ones(()), lambda p, x, y: 0.5 * p**2, np.zeros((1, 1)), np.zeros((1, 1)), steps=5)
    lr, c = H.tune(prob, lambda lr: optax.sgd(lr), H.GRID, jnp.zeros(2, jnp.uint32))
    assert lr == 1.0 and c[1] == 0.0
    lr, c = H.tune(prob, lambda lr: optax.sgd(lr), H.GRID[:5], jnp.zeros(2, jnp.uint32))  # up to 1e-2
    np.testing.assert_allclose(c[-1], 0.5 * (1 - 1e-2) ** 10, rtol=1e-5)
    row = H._metrics(prob, "x", np.array([1.0, 0.5, 0.2, 0.2, 0.1, 0.05]), ref=0.2)
    assert row["speedup"] == 2 / 5 and row["ratio"] == 0.25 and not row["diverged"]
    assert H._metrics(prob, "x", np.array([1.0, 0.9]), ref=0.2)["speedup"] is None


def test_problems_are_outside_the_mixture_and_numerous():
    probs, sources = H.problems(10)
    assert len(probs) >= 8 and len({p.name for p in probs}) == len(probs)
    assert not any("digits" in p.name for p in probs)
    assert any(p.batch for p in probs) and any(p.batch is None for p in probs)
    for p in probs:
        params = p.init(jnp.zeros(2, jnp.uint32))
        assert np.isfinite(float(p.train_loss(params)))


def test_summary_counts_reaching_and_final_separately():
    """A curve that touches L* and ends slightly above it counts as reaching tuned Adam within
    the budget, not as a final loss at most L*; a curve that never reaches L* counts in neither;
    the median is over the ratios, non-finite ones counted as +inf."""
    prob = H.Problem("q", None, None, np.zeros((1, 1)), np.zeros((1, 1)), steps=4)
    ref = 0.2
    rows = [
        H._metrics(prob, "a", np.array([1.0, 0.2, 0.1, 0.2, 0.2 * (1 + 1e-4)]), ref),  # touches, ends above
        H._metrics(prob, "a", np.array([1.0, 0.5, 0.3, 0.25, 0.21]), ref),  # never reaches
        H._metrics(prob, "a", np.array([1.0, 0.5, 0.3, 0.15, 0.1]), ref),  # ends below
        H._metrics(prob, "a", np.array([1.0, 0.5, np.nan, np.nan, np.nan]), ref),  # diverged
    ]
    (s,) = H.summarise(rows)
    assert s["frac_reached"] == 2 / 4 and s["frac_final_le_adam"] == 1 / 4
    assert s["diverged"] == 1
    np.testing.assert_allclose(s["median_ratio"], (1 + 1e-4 + 1.05) / 2, rtol=1e-12)
