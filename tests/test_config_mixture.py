"""Run configs with ``task: {name: mixture, ...}`` : parsing, errors, resolution,
builders, cross-checks, memory and the app's handling of a mixture run."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import yaml

from learned_dco import tasks
from learned_dco.app import cli, report, runs
from learned_dco.app import config as C
from learned_dco.meta import checkpoint

MIXTURE_YAML = """
seed: 2
optimizer: {name: star}
task:
  name: mixture
  horizons: [300, 1000, 100]
  weights: null
  members:
    - {name: softmax_regression, data: digits}
    - {name: mlp_classifier, data: synthetic, hidden: [32, 32], activation: relu}
    - {name: quadratic}
estimator: {name: full, num_tasks: 4}
train: {num_steps: 3, num_train_tasks: null}
"""

MEMBERS = (
    tasks.SoftmaxRegression(data="digits"),
    tasks.MLPClassifier(data="synthetic", hidden=(32, 32), activation="relu"),
    tasks.Quadratic(),
)


def _data(**task):
    data = yaml.safe_load(MIXTURE_YAML)
    data["task"].update(task)
    return data


def _error(data) -> str:
    with pytest.raises(C.ConfigError) as info:
        C.from_dict(data)
    return str(info.value)


# --- parsing and errors -----------------------------------------------------------------


def test_a_mixture_section_parses_members_as_task_sections():
    cfg = C.from_dict(_data(weights=[1, 2, 0]))
    assert cfg.task.is_mixture and cfg.task.name == "mixture"
    kw = cfg.task.kwargs
    assert set(kw) == {"members", "horizons", "weights"}
    assert kw["horizons"] == (300, 1000, 100)
    assert kw["weights"] == (1.0, 2.0, 0.0) and all(type(w) is float for w in kw["weights"])
    assert [m.name for m in kw["members"]] == ["softmax_regression", "mlp_classifier", "quadratic"]
    assert kw["members"][1].kwargs == {"data": "synthetic", "hidden": (32, 32), "activation": "relu"}
    hash(cfg)
    assert C.from_dict(_data()).task.kwargs["weights"] is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"members": [{"name": "quadratic"}, {"name": "mlp_classifier", "hidden": ["x"]}]},
         "task.members[1].hidden[0]: expected int, got str 'x'"),
        ({"members": [{"name": "quadratic"}, {"name": "mlp_classifier", "hiden": [4]}]},
         "task.members[1].hiden: unknown key for task family 'mlp_classifier'"),
        ({"members": [{"name": "quadratic"}, {"name": "mlp_classifer"}]},
         "task.members[1].name: unknown task family 'mlp_classifer'"),
        ({"members": [{"name": "mixture", "members": [], "horizons": [1]}]},
         "task.members[0].name: a mixture cannot be a member of a mixture"),
        ({"members": [{"name": "quadratic", "dim": 0}]}, "task.members[0]"),
        ({"members": []}, "task.members: expected a non-empty list"),
        ({"member": []}, "task.member: unknown key for a task mixture (known: name, members, horizons, weights)"),
        ({"horizons": [100, 0]}, "task.horizons[1]: must be > 0, got 0"),
        ({"horizons": [100, 1.5]}, "task.horizons[1]: expected int, got float 1.5"),
        ({"horizons": []}, "task.horizons: must hold at least one inner horizon"),
        ({"weights": [1, 1]}, "task.weights: expected one weight per member (3), got 2"),
        ({"weights": [1, -1, 1]}, "task.weights[1]: must be >= 0, got -1.0"),
        ({"weights": [0, 0, 0]}, "task.weights: must have a positive sum"),
    ],
)
def test_bad_mixture_sections_name_the_dotted_key(change, message):
    assert message in _error(_data(**change))


def test_a_mixture_needs_members_and_horizons():
    data = _data()
    del data["task"]["horizons"]
    assert "task.horizons: missing required key" in _error(data)
    assert "known task familys: " in _error({**data, "task": {}}) and "mixture" in _error({**data, "task": {}})


def test_mixture_cross_checks_pool_and_estimator():
    data = _data()
    data["train"]["num_train_tasks"] = 10
    assert _error(data).startswith("train.num_train_tasks: a task mixture samples fresh tasks")
    for name in ("truncated", "pes"):
        data = _data()
        data["estimator"] = {"name": name, "horizon": 10, "truncation": 5}
        assert _error(data).startswith("estimator.name: a task mixture is meta-trained with full or es"), name
    data = _data()
    data["estimator"] = {"name": "es", "horizon": 10, "truncation": 5}
    assert C.from_dict(data).estimator.name == "es"


# --- resolution, round trip, overrides --------------------------------------------------


def test_resolved_mixture_writes_every_member_default_and_round_trips(tmp_path):
    cfg = C.from_dict(_data())
    path = cfg.save(tmp_path / "config.yaml")
    saved = yaml.safe_load(path.read_text())["task"]
    assert saved["name"] == "mixture" and saved["weights"] is None and saved["horizons"] == [300, 1000, 100]
    for raw, family in zip(saved["members"], MEMBERS):
        assert set(raw) == {"name"} | {f.name for f in dataclasses.fields(family) if f.init}
        assert tasks.make_family(raw.pop("name"), **raw) == family  # the defaults written out are the family's
    back = C.load_config(path)
    assert back == cfg.resolved() != cfg
    assert back.resolved() == back and back.fingerprint() == cfg.fingerprint()
    defaults = C.defaults(cfg)
    assert defaults["task.members[1].hidden"] == [32] and defaults["task.members[2].dim"] == tasks.Quadratic().dim
    assert "task.weights" in defaults

    changed = C.load_config(path, ["task.horizons=[50]", "task.members[1].hidden=[64]", "train.num_steps=9"])
    assert changed.task.kwargs["horizons"] == (50,) and changed.task.kwargs["members"][1].kwargs["hidden"] == (64,)
    assert C.diff(cfg, changed) == ["task.horizons", "task.members[1].hidden", "train.num_steps"]
    assert changed.fingerprint() != cfg.fingerprint()
    for override, message in [
        ("task.members[3].dim=2", "task.members[3]: index out of range (the list has 3 items)"),
        ("task.horizons[0].x=2", "task.horizons[0]: holds int 300, cannot set task.horizons[0].x"),
        ("task.members[0].name=mixture", "task.members[0].name: a mixture cannot be a member"),
        ("task.members[x].dim=2", "malformed key"),
    ]:
        with pytest.raises(C.ConfigError) as info:
            C.load_config(path, [override])
        assert message in str(info.value), (override, str(info.value))


# --- builders and memory ----------------------------------------------------------------


def test_build_family_returns_the_mixture_of_the_members():
    family = C.build_family(C.from_dict(_data(weights=[3, 1, 0])))
    assert isinstance(family, tasks.Mixture)
    assert family.members == MEMBERS
    assert family.horizons == (300, 1000, 100) and family.weights == (3.0, 1.0, 0.0)
    np.testing.assert_allclose(family.probabilities, [0.75, 0.25, 0.0])
    assert C.task_families(family) == MEMBERS and C.task_families(MEMBERS[2]) == (MEMBERS[2],)


def _single(member: dict, horizon: int) -> C.RunConfig:
    data = _data()
    data["task"] = member
    data["estimator"] = {"name": "full", "num_tasks": 4, "horizon": horizon}
    return C.from_dict(data)


def test_memory_estimate_is_the_worst_member_at_the_largest_horizon():
    # the big MLP (member 1, in the middle) is the worst; horizons are unsorted
    data = _data(members=[{"name": "quadratic", "dim": 3},
                          {"name": "mlp_classifier", "data": "synthetic", "hidden": [256, 256]},
                          {"name": "softmax_regression", "data": "synthetic", "num_examples": 256}])
    cfg = C.from_dict(data)
    est = C.estimate_memory(cfg)
    # reference: each member alone, as an ordinary config with a full unroll of the largest horizon
    singles = [C.estimate_memory(_single(m, 1000)) for m in data["task"]["members"]]
    totals = [s["pool"] + s["meta_step"] + s["eval"] for s in singles]
    assert int(np.argmax(totals)) == 1
    assert est == {**singles[1], "member": 1}
    assert est["meta_step"] == 4 * (est["task"] + est["params"] * (1000 + 2))
    total = est["meta_step"] + est["eval"]
    with pytest.raises(C.ResourceError, match=r"worst member task.members\[1\] \(mlp_classifier\) at horizon 1000"):
        C.check_memory(cfg, limit=int(total))
    assert C.check_memory(cfg, limit=2 * total) == est


# --- the app on a mixture run ------------------------------------------------------------


def test_example_params_and_initial_meta_use_the_first_member():
    cfg = C.from_dict(_data())
    built = runs.build(cfg)
    key = jax.random.PRNGKey(4)
    got = runs.example_params(built.family, key)
    want = runs.example_params(MEMBERS[0], key)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    meta = runs.initial_meta(built)
    assert jax.tree.structure(meta) == jax.tree.structure(built.lopt.init(key, want))


def _fake_run(tmp_path, data):
    """A run directory holding a config and untrained meta-parameters (no meta-training)."""
    cfg = C.from_dict(data)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg.save(run_dir / runs.CONFIG_FILE)
    checkpoint.save_meta(run_dir / runs.META, runs.initial_meta(runs.build(cfg)), {"meta_step": 0})
    return cfg, run_dir


def test_load_trained_and_member_selection_on_a_mixture_run(tmp_path):
    cfg, run_dir = _fake_run(tmp_path, _data())
    trained = runs.load_trained(run_dir)
    assert isinstance(trained.family, tasks.Mixture) and trained.family.members == MEMBERS
    assert report.member_config(trained.config, 2).name == "quadratic"
    assert report.member_dir(trained.config, 1) == "member1-mlp_classifier"
    with pytest.raises(C.ConfigError, match=r"--member: this run was meta-trained on a mixture of 3 task families"):
        report.member_config(trained.config, None)
    with pytest.raises(C.ConfigError, match=r"--member: must be a member index in 0..2, got 3"):
        report.member_config(trained.config, 3)
    plain = C.from_dict({"optimizer": {"name": "star"}, "task": {"name": "quadratic"}})
    assert report.member_config(plain, None) == plain.task
    with pytest.raises(C.ConfigError, match="--member: only for a run meta-trained on a task mixture"):
        report.member_config(plain, 0)


def test_eval_command_evaluates_each_member_of_a_mixture_run(tmp_path, capsys):
    data = _data(members=[{"name": "quadratic", "dim": 3}, {"name": "quadratic", "dim": 5}], horizons=[4])
    data["optimizer"] = {"name": "hyperparam"}
    data["eval"] = {"num_tasks": 2, "num_steps": 3, "baselines": ["sgd"], "lr_grid": [0.01, 0.1]}
    cfg, run_dir = _fake_run(tmp_path, data)
    assert cli.main(["eval", str(run_dir), "--no-compile-cache", "--member", "5"]) == cli.EXIT_CONFIG
    assert "--member: must be a member index in 0..1, got 5" in capsys.readouterr().err
    assert cli.main(["eval", str(run_dir), "--no-compile-cache"]) == cli.EXIT_OK
    for i, dim in enumerate((3, 5)):
        results = json.loads((run_dir / "eval" / f"member{i}-quadratic" / "results.json").read_text())
        assert results["member"] == i and (results["task"]["name"], results["task"]["dim"]) == ("quadratic", dim)
        assert list(results["curves"]) == ["hyperparam (meta-trained)", "hyperparam (initial)", "sgd"]
        # step 0 is the member's own initial loss: the members' curves differ
        assert len(results["curves"]["sgd"]["mean"]) == 4
    firsts = [json.loads((run_dir / "eval" / f"member{i}-quadratic" / "results.json").read_text())
              ["curves"]["sgd"]["mean"][0] for i in (0, 1)]
    assert firsts[0] != firsts[1]
