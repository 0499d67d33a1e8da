"""Every study through one shared results schema, at the smallest sizes (seconds each).

The schema test runs each entry of ``STUDIES`` at a tiny size and validates its
``results.json`` with :func:`learned_dco.studies.validate_results`; the claims asserted here
are the ones these sizes are documented to show (docs/studies/*.md, "what the tests show").
The DCO study's larger least-squares test is tests/test_study_dco.py.
"""

import json
import math

import pytest

from learned_dco import tasks
from learned_dco.studies import SANITY_VERDICTS, STUDIES, VERDICTS, Claim, validate_results
from learned_dco.studies.dco.experiments import GRID, Experiment

TINY = {
    "dco": dict(experiments=[Experiment("least_squares", tasks.LeastSquares(num_samples=12, dim=6), num_train=6,
                                        num_test=4, meta_epochs=3, eval_steps=4, grid=GRID[::10], qp_check="eqqp",
                                        direct_check=True)],
                theorem1=dict(dim=4, n_tasks=8, num_samples=16, n_test=4)),
    "star": dict(config=dict(horizon=6, meta_steps=2, num_tasks=2, mlp_hidden=(4,), conv_channels=(2, 2, 2), mlp_tasks=3,
                             batch_size=8, conv_tasks=2, tune_tasks=1, eval_every=3, stability_horizons=10,
                             stability_eval_every=3, workers=2, nqm_seeds=200, nqm_alphas=12, adam_grid=(1e-3, 1e-2))),
    "metamd": dict(size=dict(ls_meta_steps=3, ls_tasks=4, widths=[[4], [8]])),
    "l2l": dict(size=dict(dim=20, n=10, tasks=2, steps=30, horizons=(10, 40), grad_horizons=(10, 100, 1000))),
    "ml2o": dict(size=dict(meta_steps=2, horizon=4, eval_steps=6, tasks=2, num_test=4, families=["quadratic"])),
}


def _run(name, out):
    import importlib

    module = importlib.import_module(STUDIES[name].module)
    return module.run(out, quick=True, seed=0, log=lambda *_: None, **TINY[name])


# star and ml2o compile ~20 programs each even at these sizes (about 1.5 CPU-minutes together on
# 2 cores): their schema/claims runs are in the slow set; every other study's run is an integration test.
SLOW = {"star", "ml2o"}


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow if n in SLOW else pytest.mark.integration)
                                        for n in sorted(TINY)])
def study(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return request.param, out, _run(request.param, out)


def test_registry_matches_the_interface():
    assert {"dco", "star", "metamd", "l2l", "ml2o"} <= set(STUDIES)
    for name, s in STUDIES.items():
        assert s.name == name and s.paper and s.description and "\n" not in s.description
        assert callable(s.run)


def test_results_json_schema(study):
    name, out, results = study
    on_disk = json.loads((out / "results.json").read_text())
    validate_results(on_disk)
    assert on_disk["study"] == name and on_disk["config"]["quick"] is True and on_disk["seconds"] > 0
    assert on_disk["claims"] == results["claims"]
    report = (out / "report.md").read_text()
    table_start = report.index("| claim | kind | paper | measured | verdict | test (estimate [CI], units) | evidence |")
    assert report.index("\n## ") > table_start  # the report opens with the claims table
    for claim in on_disk["claims"]:
        assert f"`{claim['id']}`" in report
        assert claim["verdict"] in (SANITY_VERDICTS if claim["kind"] == "sanity" else VERDICTS)
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert not list(out.glob("*.tmp"))


def test_claims_shown_at_the_test_size(study):
    name, _, results = study
    verdict = {c["id"]: c["verdict"] for c in results["claims"]}
    kind = {c["id"]: c["kind"] for c in results["claims"]}
    if name == "dco":
        assert verdict["theorem1"] == "reproduced" and kind["theorem1"] == "bound"
        assert verdict["least_squares_qp_backend"] == "holds" and kind["least_squares_qp_backend"] == "sanity"
        assert {"least_squares_reset", "least_squares_carry"} <= set(verdict)
    elif name == "star":
        assert verdict["fig2a_variance"] == "reproduced"
        assert verdict["paper_scale"] == "not testable here"
        # the stability claim pairs the MLP tasks run on to 10 H x 6 = 60 steps; the 10 H loss
        # comparisons are the same runs read at 60 steps (their curves are its prefix)
        stability = next(c for c in results["claims"] if c["id"] == "stability_past_H")
        assert kind["stability_past_H"] == "comparative" and stability["test"]["units"] == 3
        st, mlp = results["stability"], results["evaluation"]["digits_mlp"]
        assert st["steps"] == 60 and st["curve_steps"][-1] == 60 and mlp["steps"][-1] == 60
        for name_, o in st["optimizers"].items():
            assert mlp["optimizers"][name_]["curve"] == o["curve"][: len(mlp["steps"])]
    elif name == "metamd":
        assert verdict["kronecker_scales"] == "holds" and kind["kronecker_scales"] == "sanity"
        assert verdict["digits_mlp"] == "not testable here"
    elif name == "l2l":
        for cid in ("last_iterate_vanish_explode", "log_objective_bounded", "naive_backprop_fails"):
            assert verdict[cid] == "reproduced" and kind[cid] == "bound", cid
    elif name == "ml2o":
        assert set(verdict) == {"ml2o_beats_transfer", "ml2o_beats_vanilla", "adaptation_helps", "paper_setup"}


def _valid():
    return {"study": "x", "paper": "p", "config": {"quick": True}, "versions": {}, "device": {}, "seconds": 1.0,
            "claims": [Claim("a", "c", 1.0, 2.0, "inconclusive", "fig", kind="comparative",
                             test=_paired_record()).to_dict()]}


def _paired_record():
    from learned_dco.studies import stats

    return stats.paired_test([1.0, 2.0, 3.0], [1.1, 1.9, 3.05], statistic="x", unit="task")


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("device"), "missing key 'device'"),
    (lambda r: r["claims"][0].update(verdict="sort of"), "got 'sort of'"),
    (lambda r: r["claims"][0].pop("evidence"), "exactly the keys"),
    (lambda r: r["claims"].append(dict(r["claims"][0])), "duplicate claim id"),
    (lambda r: r.update(claims=[]), "'claims' is empty"),
    (lambda r: r["claims"][0].update(measured=math.nan), "JSON"),
    (lambda r: r["claims"][0].update(kind="anecdote"), "kind must be one of"),
    (lambda r: r["claims"][0].update(test=None), "needs its test record"),
    (lambda r: r["claims"][0]["test"].pop("n_to_decide"), "n_to_decide"),
    (lambda r: r["claims"][0]["test"].pop("se"), "lacks"),
    (lambda r: r["claims"][0].update(verdict="reproduced"), "differs from its test"),
    (lambda r: r["claims"][0].update(kind="sanity"), "sanity claim's verdict"),
])
def test_validator_names_the_problem(mutate, message):
    validate_results(_valid())
    bad = _valid()
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        validate_results(bad)


def test_writer_refuses_to_overwrite_schema_keys(tmp_path):
    from learned_dco.studies import write_study

    claim = Claim("a", "c", 1, 2, "holds", "fig", kind="sanity")
    with pytest.raises(ValueError, match="overwrite"):
        write_study(tmp_path, study="x", paper="p", config={"quick": True}, claims=[claim], seconds=1.0,
                    extra={"config": {}})
    results = write_study(tmp_path, study="x", paper="p", config={"quick": True}, claims=[claim], seconds=1.0,
                          extra={"curve": [1.0, math.inf]})
    assert json.loads((tmp_path / "results.json").read_text()) == results and results["curve"] == [1.0, "inf"]


def test_claim_rejects_an_unknown_verdict():
    with pytest.raises(ValueError, match="verdict must be one of"):
        Claim("a", "c", 1, 2, "mostly", "fig", kind="comparative")
    with pytest.raises(ValueError, match="kind must be one of"):
        Claim("a", "c", 1, 2, "reproduced", "fig")


@pytest.mark.slow
def test_l2l_quick_mode_reproduces_its_documented_claims(tmp_path):
    """The quick mode's sizes (d = 200, n = 100, t = 40, 8 tasks, 300 Adam steps on log eta):
    every claim but the paper-size one reproduces (docs/studies/l2l.md)."""
    results = STUDIES["l2l"].run(tmp_path, quick=True, seed=0)
    verdict = {c["id"]: c["verdict"] for c in results["claims"]}
    assert verdict == {"last_iterate_vanish_explode": "reproduced", "log_objective_bounded": "reproduced",
                       "naive_backprop_fails": "reproduced", "eta_scaling": "reproduced", "tbt_vs_tbv": "reproduced",
                       "paper_size": "not testable here"}


@pytest.mark.slow
def test_dco_quick_least_squares(tmp_path):
    """The quick mode's least-squares experiment (50/50 tasks) with both protocols, eqqp and
    the direct parameterisation (docs/studies/dco.md)."""
    from learned_dco.studies import dco
    from learned_dco.studies.dco.experiments import paper_experiments

    results = dco.run(tmp_path, quick=True, seed=0, experiments=paper_experiments(True)[:1], log=lambda *_: None)
    verdict = {c["id"]: c["verdict"] for c in results["claims"]}
    assert verdict["least_squares_reset"] == "not reproduced"
    assert verdict["least_squares_carry"] in ("partly", "reproduced")
    assert verdict["least_squares_qp_backend"] == "holds"
    assert verdict["theorem1"] == "reproduced"
