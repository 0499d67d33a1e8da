"""Every study's verdict function, fed synthetic results built to be reproduced, not reproduced
and inconclusive.

Each builder below makes the per-task values a study records (the paired units of its
verdicts) with a known answer: the learned method clearly better on every task, clearly
worse, or better on half the tasks and worse by the same amount on the other half (a mean
difference of exactly 0: no sample size decides). A verdict function that hard-codes a
verdict, ignores the per-task values or drops the pairing fails at least one case. The
constrained study's verdicts are tested in tests/test_constrained_study.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from learned_dco.studies import stats
from learned_dco.studies.common import validate_results

CASES = ("reproduced", "not reproduced", "inconclusive")
N = 24  # paired units of the synthetic results


def _offsets(case: str, rng, scale: float = 1.0) -> np.ndarray:
    """Per-unit log10 offsets of the claimed-better method: below 0, above 0, or +-0.3 alternating (mean 0)."""
    if case == "reproduced":
        return -scale + 0.05 * rng.normal(size=N)
    if case == "not reproduced":
        return scale + 0.05 * rng.normal(size=N)
    return np.tile([0.3, -0.3], N // 2)


def _verdicts(claims) -> dict[str, str]:
    for c in claims:  # every claim is valid against the schema (kind, test record)
        validate_results({"study": "x", "paper": "p", "config": {}, "versions": {}, "device": {}, "seconds": 1.0,
                          "claims": [c.to_dict()]})
    return {c.id: c.verdict for c in claims}


# --- metamd ---------------------------------------------------------------------------------


def _metamd_data(case):
    rng = np.random.default_rng(0)
    T = 20
    base = 10 ** rng.normal(-2, 0.5, N)
    off = _offsets(case, rng)
    past = {"reproduced": 0.3, "not reproduced": 3.0}.get(case)

    def curve(at_t, final):
        m = float(np.mean(at_t))
        return {"excess_train": {"mean": [m] * (2 * T + 1), "median": [float(np.median(at_t))] * (2 * T + 1),
                                 "per_task_at_T": list(at_t), "per_task_final": list(final), "diverged": 0}}

    learned = base * 10 ** off
    final = learned * past if past else learned * 10 ** np.tile([0.3, -0.3], N // 2)
    curves = {"sgd": curve(base, base), "adam": curve(base * 10 ** (0.01 * rng.normal(size=N)), base),
              "dcog_final": curve(base, base), "metamd_final": curve(learned, final),
              "metamd_bound": curve(learned, final)}
    cost = [{"hidden": list(h), "optimizer": o, "params": p, "meta_params": mp, "meta_grad_temp_MB": mb,
             "meta_grad_argument_MB": 0.1}
            for h, p, rows in (((16,), 1210, (("metamd", 4735, 0.8), ("dcogd", 1464100, 39.5))),
                               ((32,), 2410, (("metamd", 6287, 1.3), ("dcogd", 5808100, 156.0))))
            for o, mp, mb in rows]
    return {"least_squares": {"settings": {"T": T, "num_test": N}, "curves": curves}, "cost": cost}


@pytest.mark.parametrize("case", CASES)
def test_metamd_verdicts(case):
    from learned_dco.studies import metamd

    v = _verdicts(metamd.claims_for(_metamd_data(case)))
    assert v["ls_faster_than_tuned"] == case
    assert v["bound_generalises_past_T"] == case
    assert v["kronecker_scales"] == "holds" and v["digits_mlp"] == "not testable here"


# --- ml2o -----------------------------------------------------------------------------------


def _ml2o_data(case):
    rng = np.random.default_rng(1)
    fams = {}
    for f in ("lasso", "rosenbrock"):
        base = rng.normal(-2, 1, N)
        off = _offsets(case, rng)
        per = {"transfer": base, "vanilla": base - off, "ml2o_unadapted": base - off,
               "ml2o_adapted": base + off, "adam": base}
        per["transfer"] = base  # adapted - transfer = off; adapted - unadapted = 2 off; transfer - vanilla = off
        fams[f] = {"settings": {"meta_steps": 150},
                   "final_log10_per_task": {m: list(x) for m, x in per.items()},
                   "final_median_log10": {m: float(np.median(x)) for m, x in per.items()},
                   "diverged_tasks": {m: 0 for m in per}}
    return {"families": fams}


@pytest.mark.parametrize("case", CASES)
def test_ml2o_verdicts(case):
    from learned_dco.studies import ml2o

    v = _verdicts(ml2o.claims_for(_ml2o_data(case)))
    assert v["ml2o_beats_transfer"] == v["ml2o_beats_vanilla"] == v["adaptation_helps"] == case
    assert v["paper_setup"] == "not testable here"


def test_ml2o_a_split_across_families_is_partly():
    from learned_dco.studies import ml2o

    data = _ml2o_data("reproduced")
    data["families"]["rosenbrock"] = _ml2o_data("not reproduced")["families"]["rosenbrock"]
    assert _verdicts(ml2o.claims_for(data))["ml2o_beats_transfer"] == "partly"


# --- star -----------------------------------------------------------------------------------


def _star_data(case, stability: bool = True):
    """Per-task results of every family; with ``stability`` also the MLP tasks read far past
    the horizon (the units of the stability claim), whose divergence pattern follows ``case``
    while the 10 H evaluation shows none."""
    rng = np.random.default_rng(2)
    ev = {}
    for f in ("digits_mlp", "digits_convnet"):
        base = 10 ** rng.normal(-1, 0.3, N)
        off = _offsets(case, rng)
        star_div = np.zeros(N, int)
        other_div = np.zeros(N, int)
        if not stability and case == "reproduced":
            other_div[: N // 2] = 1
        elif not stability and case == "not reproduced":
            star_div[: N // 2] = 1
        opts = {"star": (base * 10 ** off, star_div), "blackbox": (base, other_div), "hyperparam": (base, other_div),
                "star_no_nominal": (base, other_div), "adam": (base, np.zeros(N, int))}
        ev[f] = {"num_tasks": N, "optimizers": {
            n: {"final_loss": float(np.mean(x)), "diverged_tasks": int(d.sum()), "final_loss_per_task": list(x),
                "diverged_per_task": list(d)} for n, (x, d) in opts.items()}}
    grows = case != "not reproduced"
    ratios = (10.0, 100.0, 1000.0) if grows else (10.0, 5.0, 2.0)
    nqm = {"num_seeds": 500, "stability_edge": 2.0,
           "summary": [{"T": t, "min": 1.0, "min_alpha": 0.5, "at_largest_alpha": r} for t, r in zip((1, 10, 100), ratios)]}
    result = {"evaluation": ev, "config": {"horizon": 50, "meta_steps": 100, "num_tasks": 4}}
    if stability:
        star_div, bb_div = np.zeros(N, int), np.zeros(N, int)
        if case == "reproduced":
            bb_div[: N // 2] = 1
        elif case == "not reproduced":
            star_div[: N // 2] = 1
        result["stability"] = _stability_set({"star": star_div, "blackbox": bb_div, "hyperparam": bb_div})
    return result, nqm


def _stability_set(divergence: dict) -> dict:
    opt = lambda d: {"diverged_tasks": int(d.sum()), "diverged_per_task": list(d), "final_loss": 0.1,
                     "final_loss_per_task": [0.1] * d.size, "num_tasks": d.size}
    n = len(next(iter(divergence.values())))
    return {"family": "digits_mlp", "num_tasks": n, "steps": 2000, "optimizers": {k: opt(d) for k, d in divergence.items()}}


@pytest.mark.parametrize("stability", [True, False], ids=["stability set", "evaluation only"])
@pytest.mark.parametrize("case", CASES)
def test_star_verdicts(case, stability):
    from learned_dco.studies import star

    v = _verdicts(star.claims_for(*_star_data(case, stability)))
    assert v["stability_past_H"] == v["star_best_learned"] == v["nominal_term_ablation"] == case
    assert v["fig2a_variance"] == ("not reproduced" if case == "not reproduced" else "reproduced")
    assert v["paper_scale"] == "not testable here"


def test_star_stability_without_any_divergence_is_inconclusive_with_no_deciding_size():
    from learned_dco.studies import star

    claims = {c.id: c for c in star.claims_for(*_star_data("inconclusive", stability=False))}
    test = claims["stability_past_H"].test
    assert test["verdict"] == "inconclusive" and test["n_to_decide"] is None and test["units"] == 2 * N


def test_star_stability_with_a_rare_divergence_is_inconclusive_and_names_the_size_that_decides():
    """Blackbox diverging on 1 of 24 tasks (STAR on none): mean 1/24, sd sqrt(1/24), so the
    interval holds 0 and n* = ceil((1.96 sd / mean)^2) = ceil(1.96^2 * 24) = 93 tasks."""
    from learned_dco.studies import star

    result, nqm = _star_data("inconclusive")
    bb = np.zeros(N, int)
    bb[3] = 1
    result["stability"] = _stability_set({"star": np.zeros(N, int), "blackbox": bb, "hyperparam": bb})
    test = {c.id: c for c in star.claims_for(result, nqm)}["stability_past_H"].test
    assert test["verdict"] == "inconclusive" and test["units"] == N
    assert test["estimate"] == pytest.approx(-1 / N) and test["n_to_decide"] == 93


# --- dco ------------------------------------------------------------------------------------


def _dco_data(case):
    from learned_dco.studies.dco.experiments import BASELINE_NAMES, DCO_NAMES

    rng = np.random.default_rng(3)
    base = 10 ** rng.normal(0, 0.5, N)
    curves = {}
    for i, b in enumerate(BASELINE_NAMES):
        x = base * (1 + i)  # the first is the best
        curves[b] = {"mean": [float(np.mean(x))] * 31, "per_task_first": list(x), "per_task_final": list(x)}
    for n in DCO_NAMES:
        for key in (n, f"{n}_carry"):
            x = base * 10 ** _offsets(case, rng)
            curves[key] = {"mean": [float(np.mean(x))] * 31, "per_task_first": list(x), "per_task_final": list(x)}
    result = {"best_baseline": BASELINE_NAMES[0], "steps": list(range(31)), "protocols": ["reset", "carry"],
              "final": {k: c["mean"][-1] for k, c in curves.items()}, "curves": curves,
              "qp_check": {"solver": "eqqp", "optimizers": {n: {"max_rel_diff": 1e-6} for n in DCO_NAMES}}}
    ok = case != "not reproduced"
    th = {"rate": 0.5 if ok else 0.9, "rate_bound": 0.6, "relative_gap_final": 1e-9, "rel_error_B": 1e-5,
          "gap": [1.0, 1e-9]}
    return {"experiments": {"least_squares": result}, "theorem1": th}


@pytest.mark.parametrize("case", CASES)
def test_dco_verdicts(case):
    from learned_dco.studies import dco

    v = _verdicts(dco.claims_for(_dco_data(case), {"least_squares": "f.png", "theorem1": "t.png"}))
    assert v["least_squares_reset"] == v["least_squares_carry"] == v["least_squares_first_step"] == case
    assert v["theorem1"] == ("not reproduced" if case == "not reproduced" else "reproduced")
    assert v["least_squares_qp_backend"] == "holds"


def test_dco_one_rule_losing_makes_the_claim_partly():
    from learned_dco.studies import dco

    data = _dco_data("reproduced")
    curves = data["experiments"]["least_squares"]["curves"]
    curves["dcog"] = dict(curves["dcog"], per_task_final=list(np.asarray(curves["adam"]["per_task_final"]) * 10))
    v = _verdicts(dco.claims_for(data, {"least_squares": "f.png", "theorem1": "t.png"}))
    assert v["least_squares_reset"] == "partly" and v["least_squares_carry"] == "reproduced"


# --- l2l ------------------------------------------------------------------------------------


def _l2l_data(case):
    rng = np.random.default_rng(4)
    ok = case != "not reproduced"
    hz = [10, 100, 1000]
    row = lambda naive_wrong: {"abs_grad": {"last_naive": [1e-3, 1e-15, 1e-33] if ok else [1e-3, 1e-3, 1e-3],
                                            "log_stable": [0.1, 0.1, 0.1] if ok else [0.1, 5.0, 5.0]},
                               "derived_bound": 1.0,
                               "first_wrong_t": {"log_stable": None, "log_naive": naive_wrong if ok else None}}
    above = {"abs_grad": {"last_naive": [4e4, 7e36, None] if ok else [1.0, 1.0, 1.0], "log_stable": [0.1] * 3},
             "derived_bound": 1.0, "first_wrong_t": {"log_stable": None, "log_naive": 100 if ok else None}}
    by = {dt: {"below 2/L (eta = 1.5/L)": row(None), "above 2/L (eta = 2.5/L)": above} for dt in ("float32", "float64")}
    tbt = 10 ** rng.normal(0, 0.2, N)
    tbv = tbt * 10 ** _offsets(case, rng, 0.3)
    sweep = [{"t": t, "eta_tbt": 0.05 if ok else 0.05 * t, "eta_tbv_times_t": 0.4} for t in (10, 20, 40)]
    tv = {"setting": {"dim": 200, "n": 100, "t": 40}, "eta_vs_t": sweep,
          "train_by_train": {"population_loss_gd_on_all_n": float(tbt.mean()), "population_loss_per_test_task": list(tbt)},
          "train_by_validation": {"population_loss_gd_on_all_n": float(tbv.mean()),
                                  "population_loss_per_test_task": list(tbv)}}
    return {"gradients": {"horizons": hz, "by_dtype": by}, "train_vs_validation": tv}


@pytest.mark.parametrize("case", CASES)
def test_l2l_verdicts(case):
    from learned_dco.studies import l2l

    v = _verdicts(l2l.claims_for(_l2l_data(case)))
    assert v["tbt_vs_tbv"] == case
    bound = "not reproduced" if case == "not reproduced" else "reproduced"
    for cid in ("last_iterate_vanish_explode", "log_objective_bounded", "naive_backprop_fails", "eta_scaling"):
        assert v[cid] == bound, cid


# --- the rule itself ------------------------------------------------------------------------


def test_paired_interval_matches_a_hand_computed_t_interval():
    a = np.array([1.0, 2.0, 4.0, 3.0])
    b = np.array([2.0, 2.5, 4.2, 3.9])
    d = a - b  # -1, -0.5, -0.2, -0.9
    m, s = d.mean(), d.std(ddof=1)
    half = 3.182446305284263 * s / 2  # t_{0.975, 3} (tables), sqrt(4) = 2
    r = stats.paired_test(a, b, statistic="x", unit="task")
    np.testing.assert_allclose(r["ci"], [m - half, m + half], rtol=1e-9)
    assert r["verdict"] == "reproduced" and r["units"] == 4


def test_units_to_decide_put_the_interval_off_zero():
    rng = np.random.default_rng(5)
    d = 0.1 + rng.normal(size=20)  # a small effect, undecided at 20 units
    r = stats.paired_test(d, np.zeros(20), statistic="x", unit="task")
    assert r["verdict"] == "inconclusive"
    n = r["n_to_decide"]
    m, s = abs(d.mean()), d.std(ddof=1)
    z = 1.959963984540054
    assert z * s / np.sqrt(n) <= m < z * s / np.sqrt(n - 1)  # the smallest such n, normal approximation


@pytest.mark.parametrize("verdicts, combined", [
    (("reproduced", "reproduced"), "reproduced"), (("not reproduced", "not reproduced"), "not reproduced"),
    (("reproduced", "not reproduced"), "partly"), (("reproduced", "inconclusive"), "inconclusive"),
    (("inconclusive", "not reproduced"), "not reproduced"), (("inconclusive", "inconclusive"), "inconclusive"),
    (("partly", "inconclusive"), "partly"), (("reproduced", "inconclusive", "not reproduced"), "partly"),
])
def test_combine(verdicts, combined):
    parts = {str(i): {"verdict": v, "rule": "r"} for i, v in enumerate(verdicts)}
    assert stats.combine(parts)["verdict"] == combined


@pytest.mark.parametrize("bad, message", [
    (dict(a=[1.0, 2.0], b=[1.0]), "same units"), (dict(a=[1.0], b=[2.0]), "at least 2"),
    (dict(a=[1.0, np.inf], b=[1.0, 2.0]), "finite"),
])
def test_paired_test_names_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        stats.paired_test(bad["a"], bad["b"], statistic="x", unit="task")


def test_star_summary_reads_the_run_up_to_the_step_asked():
    """One MLP run read at 10 H (the loss comparisons) and at its end (the stability claim):
    a task that falls to 1e-3 by step 20 and climbs to 0.5 by step 40 has diverged by the end
    (0.5 > 10 x 1e-3) but not by step 20; a task that keeps falling never has."""
    from learned_dco.studies import star

    steps = np.arange(0, 41, 10)
    falls_then_climbs = [1.0, 0.1, 1e-3, 0.05, 0.5]
    keeps_falling = [1.0, 0.5, 0.2, 0.1, 0.05]
    ev = star.Evaluation(steps, np.asarray([[falls_then_climbs, keeps_falling]]))
    early, late = star.summarise(ev, 0, horizon=10, upto=20), star.summarise(ev, 0, horizon=10)
    assert early["diverged_per_task"] == [0, 0] and late["diverged_per_task"] == [1, 0]
    assert early["final_loss_per_task"] == [1e-3, 0.2] and late["final_loss_per_task"] == [0.5, 0.05]
    assert early["loss_at_H"] == late["loss_at_H"] == pytest.approx(0.3) and len(early["curve"]) == 3
    assert early["best_step"] == 20 and late["best_step"] == 30  # mean curve 0.1005 at 20, 0.075 at 30


def test_star_evaluate_runs_a_grid_as_one_batch_equal_to_one_config_at_a_time():
    """Adam's learning-rate grid runs as one vmapped batch of (rate, task) units; a rate's
    per-task curves must equal a run of that rate alone (same tasks, starts and minibatches)."""
    import jax

    from learned_dco import tasks
    from learned_dco.studies import star

    family = tasks.DigitsMLP(hidden=(4,), batch_size=8)
    batch = tasks.sample_tasks(family, jax.random.PRNGKey(1), 3)
    grid = np.asarray([1e-3, 1e-1], np.float32)
    both = star.evaluate(star._adam, grid, family, batch, jax.random.PRNGKey(2), 6, 3)
    assert both.train_loss.shape == (2, 3, 3) and both.steps.tolist() == [0, 3, 6]
    alone = star.evaluate(star._adam, grid[1:], family, batch, jax.random.PRNGKey(2), 6, 3)  # the second: order matters
    np.testing.assert_allclose(both.train_loss[1], alone.train_loss[0], rtol=1e-5)
    assert not np.allclose(both.train_loss[0, :, -1], both.train_loss[1, :, -1])  # the rates differ


@pytest.mark.parametrize("change, message", [
    (dict(stability_eval_every=7), "must divide 10 H"),
    (dict(stability_horizons=5), "stability_horizons must be >= 10"),
    (dict(mlp_tasks=1), "at least 2 tasks"),
    (dict(workers=0), "'workers'"),
])
def test_star_config_errors_name_the_problem(change, message):
    from learned_dco.studies import star

    star.check_config(dict(star.QUICK))
    star.check_config(dict(star.FULL))
    with pytest.raises(ValueError, match=message):
        star.check_config(dict(star.QUICK, **change))


def test_star_stability_reads_the_stability_set_when_there_is_one():
    from learned_dco.studies import star

    result, nqm = _star_data("inconclusive", stability=False)  # no divergence among the evaluation tasks
    div = np.zeros(2 * N, int)
    div[:N] = 1  # Blackbox diverges on half of the stability set, STAR on none
    result["stability"] = _stability_set({"star": np.zeros(2 * N, int), "blackbox": div, "hyperparam": div})
    claims = {c.id: c for c in star.claims_for(result, nqm)}
    assert claims["stability_past_H"].verdict == "reproduced" and claims["stability_past_H"].test["units"] == 2 * N
    assert "stability set" in claims["stability_past_H"].measured and "40 H = 2000 steps" in claims["stability_past_H"].measured
    # ... and only the stability set: divergence at 10 H alone does not decide the claim
    result, nqm = _star_data("reproduced", stability=False)
    result["stability"] = _stability_set({"star": np.zeros(2 * N, int), "blackbox": np.zeros(2 * N, int),
                                          "hyperparam": np.zeros(2 * N, int)})
    assert {c.id: c for c in star.claims_for(result, nqm)}["stability_past_H"].verdict == "inconclusive"


def test_dco_first_step_is_judged_against_the_best_baseline_at_step_1():
    from learned_dco.studies import dco
    from learned_dco.studies.dco.experiments import BASELINE_NAMES, DCO_NAMES

    data = _dco_data("reproduced")
    curves = data["experiments"]["least_squares"]["curves"]
    best_final, other = BASELINE_NAMES[0], BASELINE_NAMES[1]
    first = np.asarray(curves[best_final]["per_task_first"])
    curves[other] = dict(curves[other], per_task_first=list(first * 0.01), mean=[1.0, float(np.mean(first * 0.01))] + [1e9] * 29)
    for n in DCO_NAMES:  # between the two: better than the final-step best, worse than the step-1 best
        curves[n] = dict(curves[n], per_task_first=list(first * 0.1))
    v = _verdicts(dco.claims_for(data, {"least_squares": "f.png", "theorem1": "t.png"}))
    assert v["least_squares_first_step"] == "not reproduced"
