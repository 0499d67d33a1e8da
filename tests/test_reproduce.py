"""``learned-dco reproduce`` at a reduced size: outputs, Theorem 1, and the measured claims.

The least-squares experiment runs at the quick setting's sizes except for fewer tasks; the
claims checked are the ones the reproduction supports (see README, "Reproducing the DCO
paper"): T = 1 meta-training lowers the meta-loss and wins the first step; a DCO rule
meta-trained on the evaluation horizon beats the best tuned baseline at step 30.
"""

import json

import jax
import numpy as np
import pytest

from learned_dco import tasks
from learned_dco.reproduce import Experiment, reproduce, run_experiment
from learned_dco.reproduce.experiments import BASELINE_NAMES, DCO_NAMES, GRID
from learned_dco.reproduce.theorem1 import fit_rate

NAMES = set(DCO_NAMES) | set(BASELINE_NAMES)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    exp = Experiment("least_squares", tasks.LeastSquares(), num_train=30, num_test=30, grid=GRID[::2],
                     extension_horizon=30)
    results = reproduce(quick=True, out=out, seed=0, experiments=[exp], log=lambda *_: None)
    return out, results


def test_results_json_schema(outputs):
    out, results = outputs
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiments"].keys() == results["experiments"].keys() == {"least_squares"}
    ls = on_disk["experiments"]["least_squares"]
    assert ls["steps"] == list(range(31))
    assert set(ls["curves"]) == NAMES
    for curve in ls["curves"].values():
        assert len(curve["mean"]) == len(curve["std"]) == 31
    assert set(ls["tuned_lr"]) == set(BASELINE_NAMES)
    th = on_disk["theorem1"]
    assert {"p", "n_tasks", "gap", "rate", "rel_error_B"} <= set(th)
    assert (th["p"], th["n_tasks"]) == (20, 40)
    assert {"config", "versions", "seconds"} <= set(on_disk)
    for name in ["figure1_least_squares.png", "theorem1.png", "report.md"]:
        assert (out / name).stat().st_size > 1000


def test_theorem1_linear_convergence_to_the_one_step_optimum(outputs):
    th = outputs[1]["theorem1"]
    gap = np.asarray(th["gap"])
    assert gap[-1] < 1e-6 * gap[0]
    assert th["rel_error_B"] < 1e-3
    # Geometric: the fitted rate is below 1 and no slower than the theoretical contraction.
    assert 0 < th["rate"] < 1 and th["rate"] <= th["rate_bound"] * (1 + 1e-3)
    # Every stretch of 10% of the run shrinks the gap (until round-off).
    live = gap[gap > 1e-10 * gap[0]]
    chunks = np.array_split(live, 10)
    assert all(c[-1] < c[0] for c in chunks if c.size > 1)


def test_fit_rate_recovers_a_known_geometric_sequence():
    k = np.arange(200)
    assert abs(fit_rate(3.0 * 0.97**k) - 0.97) < 1e-12
    assert abs(fit_rate(np.r_[5.0 * 0.9 ** k[:150], np.full(50, 1e-300)]) - 0.9) < 1e-9


def test_least_squares_claims(outputs):
    ls = outputs[1]["experiments"]["least_squares"]
    finals = ls["final"]
    best = min(finals[n] for n in BASELINE_NAMES)
    assert ls["best_baseline"] in BASELINE_NAMES and finals[ls["best_baseline"]] == best
    for name in DCO_NAMES:
        # T = 1 meta-training does what it optimises: the training meta-loss falls ...
        assert ls["meta_loss"][name][-1] < ls["meta_loss"][name][0]
        assert ls["dco_wins"][name] == (finals[name] <= best)
    # ... and DCOG/DCOM take a better first step than every tuned baseline.
    for name in ("dcog", "dcom"):
        assert ls["curves"][name]["mean"][1] < min(ls["curves"][b]["mean"][1] for b in BASELINE_NAMES)
    # Meta-trained on the evaluation horizon, DCOM beats the best tuned baseline at step 30.
    assert ls["extension"]["optimizers"]["dcom"]["final"] <= best


def test_report_states_every_verdict_plainly(outputs):
    out, results = outputs
    report = (out / "report.md").read_text()
    ls = results["experiments"]["least_squares"]
    for name, wins in ls["dco_wins"].items():
        label = {"dcog": "DCOG", "dcogd": "DCOGD", "dcom": "DCOM"}[name]
        verb = "beats or matches" if wins else "does NOT beat"
        assert f"- {label} (paper protocol) {verb} the best tuned baseline" in report


def test_same_seed_same_numbers():
    exp = Experiment("least_squares", tasks.LeastSquares(num_samples=12, dim=6), num_train=6, num_test=4,
                     meta_epochs=2, eval_steps=3, grid=GRID[::10])
    a = run_experiment(exp, jax.random.PRNGKey(7), log=lambda *_: None)
    b = run_experiment(exp, jax.random.PRNGKey(7), log=lambda *_: None)
    assert a["curves"] == b["curves"] and a["tuned_lr"] == b["tuned_lr"] and a["meta_loss"] == b["meta_loss"]
