"""The constrained study: schema of a tiny run, its baselines and verdicts."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_dco.studies import constrained as C
from learned_dco.studies.common import validate_results
from learned_dco.tasks.constrained import SimplexLeastSquares


@pytest.mark.integration
def test_tiny_run_writes_the_schema(tmp_path):
    cfg = C.Config(meta_steps=3, tasks_per_step=2, horizon=5, train_tasks=4, test_tasks=6, grid_size=3,
                   families=("simplex_least_squares",))
    lines = []
    res = C.run(tmp_path, quick=True, seed=1, config=cfg, log=lines.append)
    assert len(lines) == 1
    validate_results(res)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["study"] == "constrained" and on_disk["claims"] == res["claims"]
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[6].startswith("| claim |") or "| claim |" in report.split("## Held-out")[0]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    ids = [c["id"] for c in res["claims"]]
    assert ids == ["every_iterate_feasible", "beats_baselines_simplex_least_squares"]
    fam = res["families"]["simplex_least_squares"]
    assert set(fam["optimizers"]) >= {"projected GD", "projected Adam", "exponentiated gradient", "learned DCO"}
    for o in fam["optimizers"].values():  # every optimizer of the study keeps its iterates on the simplex
        assert o["max_violation"] <= cfg.feasibility_tol
        assert len(o["median_curve"]) == cfg.horizon + 1
    assert res["claims"][0]["verdict"] == "holds" and res["claims"][0]["kind"] == "sanity"
    assert res["claims"][1]["kind"] == "comparative" and res["claims"][1]["test"]["units"] == cfg.test_tasks
    assert fam["solver"] == "SimplexExact"


def test_baselines_are_the_textbook_updates():
    fam = SimplexLeastSquares(dim=5, active=2)
    task = fam.sample(jax.random.PRNGKey(0))
    p = jnp.asarray([0.5, 0.2, 0.1, 0.1, 0.1])
    g = jax.grad(fam.loss)(p, task)
    make_gd = C.baselines("simplex_least_squares", fam)["projected GD"][0]
    tx = make_gd(0.3)
    u, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(p + u, fam.project(p - 0.3 * g), atol=1e-6)
    eg = C.exponentiated_gradient(0.7)
    u, _ = eg.update(g, eg.init(p), p)
    w = np.asarray(p) * np.exp(-0.7 * np.asarray(g))
    np.testing.assert_allclose(p + u, w / w.sum(), atol=1e-6)


def _fam(learned, baseline):
    def entry(rel):
        return {"final_rel_subopt_mean": float(np.mean(rel)), "_final_rel": np.asarray(rel)}

    return {"optimizers": {"projected GD": entry(baseline), "projected Adam": entry(np.ones_like(baseline)),
                           "learned DCO": entry(learned)}}


def test_verdict_is_paired_and_floored():
    rng = np.random.default_rng(0)
    base = np.exp(rng.normal(-4, 1, 50))
    assert C._verdict_beats(_fam(base * 0.5, base))[0]["verdict"] == "reproduced"
    assert C._verdict_beats(_fam(base * 2.0, base))[0]["verdict"] == "not reproduced"
    noisy = C._verdict_beats(_fam(base * np.exp(rng.normal(0.001, 0.01, 50)), base))[0]
    assert noisy["verdict"] == "inconclusive" and noisy["n_to_decide"] > 50
    test, best = C._verdict_beats(_fam(np.full(50, 1e-9), np.full(50, 1e-8)))  # both at round-off
    assert test["verdict"] == "inconclusive" and test["fraction_tasks_tied_at_floor"] == 1.0 and best == "projected GD"
    assert test["n_to_decide"] is None  # a mean difference of exactly 0: no sample size decides


def test_a_diverged_learned_run_counts_against_it():
    base = np.full(20, 1e-3)
    learned = np.full(20, 1e-4)
    learned[:12] = np.inf
    assert C._verdict_beats(_fam(learned, base))[0]["verdict"] == "not reproduced"


@pytest.mark.parametrize("factor, verdict", [(0.5, "reproduced"), (2.0, "not reproduced"), (1.0, "inconclusive")])
def test_claims_for_gives_each_verdict_from_synthetic_results(factor, verdict):
    rng = np.random.default_rng(1)
    base = np.exp(rng.normal(-4, 1, 40))
    learned = base * factor * np.exp(rng.normal(0, 0.01 if factor != 1.0 else 0.3, 40))
    if factor == 1.0:
        learned = base * np.exp(np.tile([0.3, -0.3], 20))  # mean log ratio exactly 0
    fam = _fam(learned, base)
    fam["optimizers"]["learned DCO"]["max_violation"] = 0.0
    claims = C.claims_for({"nonneg_least_squares": fam}, C.QUICK)
    by = {c.id: c for c in claims}
    assert by["every_iterate_feasible"].kind == "sanity" and by["every_iterate_feasible"].verdict == "holds"
    beats = by["beats_baselines_nonneg_least_squares"]
    assert beats.kind == "comparative" and beats.verdict == verdict == beats.test["verdict"]
    assert beats.test["units"] == 40
