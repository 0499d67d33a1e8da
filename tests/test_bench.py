"""learned_dco.bench: the divergence rule, the statistics, the split's disjointness from the
meta-training mixtures, planted candidates and the baseline cache (tiny problems, no timing)."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from learned_dco import bench
from learned_dco.bench import problems as P
from learned_dco.bench import report as R
from learned_dco.bench import stats as S
from learned_dco.bench import structure
from learned_dco.bench.divergence import diverged, long_run_stats
from learned_dco.bench.runner import Settings

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the divergence rule


def _decay(budget, start=1.0, end=1e-3):
    return np.geomspace(start, end, budget + 1)


def test_divergence_flags_a_post_budget_spike_that_recovers():
    """Loss 1 -> 1e-3 by the budget, then a 1000x spike (back to the start) and a recovery
    below the budget's value: the climb gives back ~100% of the progress (> 10%)."""
    T = 100
    long = np.concatenate([_decay(T), np.geomspace(1e-3, 1.0, 50)[1:], np.geomspace(1.0, 1e-5, 850)])
    assert long[-1] < long[T]  # it recovers: the final loss alone would not tell
    assert not diverged(long[: T + 1])  # the budget run alone is fine
    assert diverged(long, T)
    stats = long_run_stats(long, T)
    assert stats.max_after == pytest.approx(1.0) and stats.argmax == T + 49 and stats.final == pytest.approx(1e-5)


def test_divergence_of_a_late_blow_up_and_its_threshold():
    """3.2e-14 at the budget, 0.28 (16% of the start) after it, 5.5e-5 at the end: diverged.
    A rise from 1e-14 to 1e-13 is not; the threshold is exactly 10% of the progress."""
    T = 10
    start = 1.75
    head = np.geomspace(start, 3.2e-14, T + 1)
    assert diverged(np.concatenate([head, [1e-3, 0.28, 1e-2, 5.5e-5]]), T)
    assert not diverged(np.concatenate([np.geomspace(1.0, 1e-14, T + 1), [1e-13, 5e-14]]), T)
    progress = 1.0 - 0.5
    base = np.linspace(1.0, 0.5, T + 1)
    assert not diverged(np.concatenate([base, [0.5 + 0.1 * progress * 0.999]]), T)
    assert diverged(np.concatenate([base, [0.5 + 0.1 * progress * 1.001]]), T)


def test_divergence_does_not_flag_a_plateau_and_flags_nan_or_a_rise_above_start():
    T = 50
    plateau = np.concatenate([_decay(T), np.full(450, 1e-3)])
    assert not diverged(plateau, T)
    noisy = np.concatenate([_decay(T), 1e-3 * (1 + 0.05 * np.sin(np.arange(450)))])
    assert not diverged(noisy, T)
    assert diverged(np.concatenate([_decay(T), [np.nan]]), T)
    assert diverged(np.array([1.0, 0.5, 1.5]))  # ends above its start


# ---------------------------------------------------------------- statistics


def test_t_interval_and_outcomes_against_hand_values():
    m, lo, hi = S.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / np.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert m == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    ref = np.array([0.3, 0.2, 0.5])
    assert S.outcome(ref, ref, 1e-9) == "tie"
    assert S.outcome(1.05 * ref, ref, 1e-9) == "worse"  # a constant 5% gap has a zero-width interval
    assert S.outcome(0.95 * ref, ref, 1e-9) == "better"
    assert S.outcome(ref * (1 + np.array([1e-7, 2e-7, 1.5e-7])), ref, 1e-9) == "tie"  # float noise, not a loss
    assert S.outcome(ref * np.array([0.5, 2.0, 1.0]), ref, 1e-9) == "tie"  # the interval cannot tell
    assert S.outcome(np.array([np.inf, 0.2, 0.5]), ref, 1e-9) == "worse"
    assert S.outcome(1e-12 * ref, 2e-12 * ref, 1e-6) == "tie"  # both below the floor


def test_paired_comparison_is_the_t_interval_of_seed_mean_floored_log_ratios():
    """``report.paired`` against scipy's one-sample t confidence interval of hand-computed
    per-problem log-ratios; a final below the floor counts as the floor, controls are left out."""
    from scipy import stats

    a = {"p1": [1.0, 4.0], "p2": [0.5, 0.5], "p3": [1e-9, 2.0], "ctl": [100.0, 100.0]}
    b = {"p1": [2.0, 2.0], "p2": [1.0, 0.25], "p3": [1e-3, 1.0], "ctl": [1.0, 1.0]}
    floors = {"p1": 1e-6, "p2": 1e-6, "p3": 1e-3, "ctl": 1e-6}
    result = {"problems": [{"name": n, "control": n == "ctl"} for n in a],
              "results": {n: {"floor": floors[n], "rows": {"x": {"final": a[n]}, "y": {"final": b[n]}}} for n in a}}
    d = np.array([np.mean(np.log(np.array(a[n]) / np.array(b[n]))) for n in ("p1", "p2")]
                 + [np.mean([np.log(1e-3 / 1e-3), np.log(2.0)])])
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    got = R.paired(result, "x", "y")
    assert got["problems"] == 3 and got["wins"] == int(np.sum(d < 0))
    np.testing.assert_allclose(got["mean_log_ratio"], [d.mean(), ci.low, ci.high], rtol=1e-10)
    np.testing.assert_allclose(got["ratio"], np.exp([d.mean(), ci.low, ci.high]), rtol=1e-10)


def test_iqm_and_bootstrap():
    assert S.iqm([1, 2, 3, 4]) == 2.5
    assert S.iqm([0.5, 1.0, 3.0, 2.0, 100.0, 7.0, np.nan, None]) == np.mean([2.0, 3.0, 7.0, 100.0])
    assert S.iqm([]) is None
    np.testing.assert_allclose(S.iqm(np.array([[1, 2, 3, 4], [4, 4, 4, 100]]), axis=1), [2.5, 4.0])
    const = {"x": np.full((5, 3), 2.0)}
    assert S.bootstrap(lambda t: t["x"].mean(axis=(1, 2)), const) == (2.0, 2.0, 2.0)
    rng = np.random.default_rng(0)
    x = {"x": rng.normal(size=(40, 3))}
    point, lo, hi = S.bootstrap(lambda t: t["x"].mean(axis=(1, 2)), x, reps=4000)
    # iid values: resampling problems then seeds adds the within-problem variance once more,
    # var = sigma^2 / (P S) * (1 + (S - 1) / S) (the two-level bootstrap is conservative)
    se = x["x"].std() / np.sqrt(x["x"].size) * np.sqrt(1 + 2 / 3)
    assert lo < point < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)


# ---------------------------------------------------------------- problems and disjointness


def test_problem_set_is_large_varied_and_disjoint_from_every_shipped_mixture():
    probs = P.problem_set("all")
    assert len(probs) >= 16 and len({p.name for p in probs}) == len(probs)
    assert {p.split for p in probs} == {"dev", "test"}
    held = [p for p in probs if not p.control]
    assert len({p.descriptor.model for p in held}) >= 6
    assert all(100 <= p.steps <= 3000 for p in probs)
    assert any(p.batch for p in probs) and any(p.batch is None for p in probs)
    for split in P.SPLITS:
        assert sum(not p.control for p in P.problem_set(split)) >= 6
    recipes = structure.shipped_recipes()
    assert any(k.startswith("config:") for k in recipes) and any(k.startswith("card:") for k in recipes)
    assert structure.overlaps(probs, recipes) == []
    # every control overlaps on purpose
    controls = {name for name, *_ in structure.overlaps(probs, recipes, include_controls=True)}
    assert controls == {p.name for p in probs if p.control}


def test_structural_comparison_fails_when_a_mixture_member_joins_test():
    """Each recipe member, planted into ``test`` with its own descriptor (other data), is caught."""
    recipes = structure.shipped_recipes()
    template = P.by_name("linnerud_mlp_elu")
    for label, members in recipes.items():
        for member in members:
            d = structure.member_descriptor(member)
            planted = P.Problem("planted", "test", P.Descriptor(d.model, "generated:elsewhere", d.loss), template.init,
                                template.loss, template.x, template.y, 100)
            found = structure.overlaps([*P.problem_set("test"), planted], {label: [member]})
            assert [f[0] for f in found] == ["planted"], (label, member)
    with pytest.raises(ValueError, match="no structural descriptor"):
        structure.member_descriptor({"name": "brand_new_family"})


@pytest.mark.slow
def test_problems_have_finite_losses_and_distinct_fingerprints():
    probs = P.problem_set("all")
    for p in probs:
        assert np.isfinite(p.initial_loss) and p.initial_loss > 0
    assert len({p.fingerprint for p in probs}) == len(probs)
    with pytest.raises(ValueError, match="split"):
        P.problem_set("train")


# ---------------------------------------------------------------- runs on a tiny problem


def _tiny(steps=12, scale=1.0, batch=8):
    """Least squares on 32 generated points (minibatch 8): a few-millisecond problem."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = (scale * x @ np.array([[1.0], [-2.0], [0.5]])).astype(np.float32)
    return P.Problem("tiny_lstsq", "dev", P.Descriptor("linear", "generated:tiny", "squared_error"),
                     lambda key: {"w": 0.1 * jax.random.normal(key, (3, 1))},
                     lambda p, x, y: jnp.mean((x @ p["w"] - y) ** 2), x, y, steps, batch)


SETTINGS = Settings(seeds=(0, 1, 2), tuning_seeds=(7,), grid=bench.GRID[2::2], long_factor=2, timing=False)


def test_planted_candidates_reproduce_the_baseline_and_a_5pct_worse_one_is_not_counted(tmp_path):
    prob = _tiny()
    base = bench.run([], problems=[prob], settings=SETTINGS, cache_dir=tmp_path, progress=None, baseline_names=["adam"])
    adam = base["results"][prob.name]["rows"]["adam"]
    lr = adam["lr"]
    planted = bench.Candidate("planted_adam", lambda steps: optax.adam(lr))
    result = bench.run([planted], problems=[prob], settings=SETTINGS, cache_dir=tmp_path, progress=None,
                       baseline_names=["adam"])
    assert result["cache"]["hits"] == 1  # the tuned row came from the cache
    rows = result["results"][prob.name]["rows"]
    np.testing.assert_allclose(rows["planted_adam"]["final"], adam["final"], rtol=1e-5)
    np.testing.assert_allclose(rows["planted_adam"]["best"], adam["best"], rtol=1e-5)
    # a planted row 5% worse than tuned Adam on every seed
    rows["worse_5pct"] = dict(rows["planted_adam"], kind="candidate", final=[1.05 * f for f in adam["final"]],
                              best=[1.05 * b for b in adam["best"]])
    result["problems"][0]["control"] = False
    summary = R.summarise(result, reps=200)
    agg = {r["optimizer"]: r for r in summary["aggregate"]}
    same, worse = agg["planted_adam"], agg["worse_5pct"]
    assert same["iqm_ratio"][0] == pytest.approx(1.0, rel=1e-5)
    assert (same["final_le"][0], same["final_tie"][0], same["reached"][0]) == (0.0, 1.0, 0.0)  # a tie, not a win
    assert worse["iqm_ratio"][0] == pytest.approx(1.05)
    assert (worse["reached"][0], worse["final_le"][0], worse["final_worse"][0]) == (0.0, 0.0, 1.0)
    pp = {r["optimizer"]: r for r in summary["per_problem"]}
    assert pp["planted_adam"]["final_vs_adam"] == "tie" and pp["worse_5pct"]["final_vs_adam"] == "worse"
    assert pp["worse_5pct"]["reached"] != "better"
    md = R.markdown(summary)
    assert md.startswith("# learned-dco bench") and md.index("| optimizer | iqm_ratio") < md.index("## Per problem")


def test_baseline_cache_is_invalidated_when_the_problem_changes(tmp_path):
    kw = dict(settings=SETTINGS, cache_dir=tmp_path, progress=None, baseline_names=["adam"])
    first = bench.run([], problems=[_tiny()], **kw)
    assert first["cache"] == {"dir": str(tmp_path), "hits": 0, "misses": 1}
    again = bench.run([], problems=[_tiny()], **kw)
    assert again["cache"]["hits"] == 1
    assert again["results"]["tiny_lstsq"]["rows"]["adam"]["final"] == first["results"]["tiny_lstsq"]["rows"]["adam"]["final"]
    changed = bench.run([], problems=[_tiny(scale=3.0)], **kw)  # same name, other targets
    assert changed["cache"]["hits"] == 0
    assert changed["results"]["tiny_lstsq"]["rows"]["adam"]["final"] != first["results"]["tiny_lstsq"]["rows"]["adam"]["final"]
    longer = bench.run([], problems=[_tiny(steps=14)], **kw)  # another budget
    assert longer["cache"]["hits"] == 0


def test_resolve_rejects_unknown_names_and_calls_factories_with_the_budget():
    with pytest.raises(ValueError, match="unknown optimizer"):
        bench.resolve("no_such_optimizer")
    with pytest.raises(ValueError, match="tuned baseline"):
        bench.resolve("adam")
    with pytest.raises(ValueError, match="cannot import"):
        bench.resolve("no_such_module_xyz:make")
    cand = bench.resolve("optax:adam")  # optax.adam takes no num_steps -> optax.adam() needs a rate
    with pytest.raises(TypeError):
        cand.make(10)
    cand = bench.resolve("learned_prodigy")
    assert cand.start is not None and cand.start.name == "learned_prodigy (untrained)"


def test_bench_sources_do_not_name_the_app_layer():
    """Layering: app -> bench -> meta/optimizers/tasks; bench never imports learned_dco.app."""
    for path in (ROOT / "learned_dco" / "bench").glob("*.py"):
        text = path.read_text()
        assert "learned_dco.app" not in text and "from learned_dco import app" not in text, path.name


@pytest.mark.slow
def test_bench_does_not_import_the_app_layer():
    code = "import sys, learned_dco.bench; print(sorted(m for m in sys.modules if m.startswith('learned_dco.app')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_cli_lists_problems_and_rejects_unknown_optimizers(capsys):
    from learned_dco.app.cli import EXIT_CONFIG, EXIT_OK, main

    assert main(["bench", "--list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "rosenbrock_6d" in out and "prodigy_linear_decay" in out and "learned_prodigy" in out
    assert main(["bench", "nope", "--no-baseline-cache"]) == EXIT_CONFIG
    assert "unknown optimizer 'nope'" in capsys.readouterr().err
