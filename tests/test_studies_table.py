"""README.md's studies table is the one generated from the stored results (tools/studies_table.py)."""

import json

import pytest

from tools import studies_table as T


def test_readme_table_equals_the_generated_one():
    assert T.readme_table(T.README.read_text()) == T.table(), \
        "README.md's studies table is stale: run `python -m tools.studies_table --write`"


def test_every_stored_result_is_linked_and_every_claim_appears():
    table = T.table()
    for study, (source, page, _) in T.STORED.items():
        results = json.loads((T.ROOT / source).read_text())
        row = next(r for r in table.splitlines() if r.startswith(f"| `{study}` |"))
        assert f"]({source})" in row and f"]({page})" in row and f"{results['seconds']:.0f} s" in row
        for claim in results["claims"]:
            assert f"`{claim['id']}`" in row and claim["verdict"] in row


def test_a_row_shows_the_interval_and_the_units_that_would_decide():
    from learned_dco.studies import stats

    test = stats.paired_test([1.0, 2.0, 3.0, 4.0], [1.1, 1.8, 3.2, 3.9], statistic="x", unit="task")
    claim = {"id": "c", "verdict": test["verdict"], "kind": "comparative", "test": test}
    sanity = {"id": "s", "verdict": "holds", "kind": "sanity", "test": None}
    row = T.row("x", {"claims": [claim, sanity], "config": {"quick": True, "seed": 0}, "seconds": 12.0},
                "docs/x.json", "docs/x.md", "P")
    lo, hi = test["ci"]
    assert f"`c` **inconclusive** ({test['estimate']:.3g} [{lo:.3g}, {hi:.3g}], n=4; ~{test['n_to_decide']} would decide)" in row
    assert "sanity: `s` holds" in row and "quick, seed 0, 12 s" in row


def test_missing_markers_are_a_named_error():
    with pytest.raises(ValueError, match="markers"):
        T.readme_table("# README without the table")


def test_every_stored_result_follows_the_schema():
    from learned_dco.studies import validate_results

    for study, (source, _, _) in T.STORED.items():
        validate_results(json.loads((T.ROOT / source).read_text()))


@pytest.mark.parametrize("study", ["dco", "star", "metamd", "l2l", "ml2o"])
def test_stored_verdicts_are_the_rules_applied_to_the_stored_per_task_values(study):
    """A stored verdict that the current rules would not give from the same stored data is stale."""
    import importlib

    results = json.loads((T.ROOT / T.STORED[study][0]).read_text())
    if study == "dco":
        from learned_dco.studies.dco.report import FIGURES

        figures = {n: FIGURES[n][0] for n in results["experiments"]} | {"theorem1": "theorem1.png"}
        claims = importlib.import_module("learned_dco.studies.dco").claims_for(results, figures)
    elif study == "star":
        claims = importlib.import_module("learned_dco.studies.star").claims_for(results, results["nqm"])
    else:
        claims = importlib.import_module(f"learned_dco.studies.{study}").claims_for(results)
    assert [c.to_dict() for c in claims] == results["claims"]
