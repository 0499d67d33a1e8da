"""Run configs: strict schema (keys and types named in errors), overrides, builders, learned_dco/configs/."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

import learned_dco as ldco
from learned_dco.app import config as C
from learned_dco import meta, tasks

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "learned_dco" / "configs").glob("*.yaml"))

BASE = {
    "seed": 3,
    "optimizer": {"name": "dcom", "learning_rate": 0.01, "momentum": 0.5},
    "task": {"name": "beverton_holt", "hidden": [4, 3], "r0_range": [1, 2]},
    "estimator": {"name": "truncated", "horizon": 6, "truncation": 2, "num_tasks": 4},
    "meta_optimizer": {"name": "adamw", "learning_rate": 0.001, "weight_decay": 0.1, "clip": 1.0},
    "train": {"num_steps": 5, "num_train_tasks": None, "checkpoint_every": 2},
    "eval": {"num_tasks": 7, "num_steps": 9, "baselines": ["sgd", "adam"], "lr_grid": [0.01, 0.1]},
}


def _with(**sections):
    """BASE with some sections replaced (a value of None removes the section)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for k, v in sections.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    return data


def _error(data) -> str:
    with pytest.raises(C.ConfigError) as info:
        C.from_dict(data)
    return str(info.value)


# --- parsing ---------------------------------------------------------------------------


def test_a_valid_config_parses_into_typed_frozen_dataclasses():
    cfg = C.from_dict(BASE)
    assert cfg.seed == 3
    assert cfg.optimizer == C.ComponentConfig("dcom", (("learning_rate", 0.01), ("momentum", 0.5)))
    # lists became tuples, ints given for floats became floats
    assert cfg.task.kwargs == {"hidden": (4, 3), "r0_range": (1.0, 2.0)}
    assert all(type(v) is float for v in cfg.task.kwargs["r0_range"])
    assert cfg.eval.baselines == ("sgd", "adam") and cfg.eval.lr_grid == (0.01, 0.1)
    assert cfg.train.num_train_tasks is None
    hash(cfg)  # hashable all the way down
    with pytest.raises(AttributeError):
        cfg.seed = 1  # frozen


def test_defaults_fill_missing_sections():
    cfg = C.from_dict({"optimizer": {"name": "dcog"}, "task": {"name": "quadratic"}})
    assert cfg.estimator == C.ComponentConfig("full")
    assert cfg.meta_optimizer == C.MetaOptimizerConfig("rmsprop", 0.01, None, None)
    assert cfg.train == C.TrainConfig(20, 100, 0)
    assert cfg.eval.baselines == ("sgd", "adam", "rmsprop") and cfg.eval.lr_grid is None
    assert cfg.seed == 0 and cfg.eval_seed == 1


@pytest.mark.parametrize(
    "data, message",
    [
        (_with(sedd=1), "sedd: unknown key (known: optimizer, task, estimator, meta_optimizer, train, eval, seed)"),
        (_with(train={"num_stepz": 3}), "train.num_stepz: unknown key (known: num_steps, num_train_tasks, checkpoint_every)"),
        (_with(eval={"baseline": ["sgd"]}), "eval.baseline: unknown key"),
        (_with(meta_optimizer={"name": "adam", "momentum": 0.9}), "meta_optimizer.momentum: unknown key"),
        (_with(optimizer={"name": "dcom", "lerning_rate": 0.1}), "optimizer.lerning_rate: unknown key for learned optimizer 'dcom' (known: name, learning_rate,"),
        (_with(task={"name": "beverton_holt", "dim": 3}), "task.dim: unknown key for task family 'beverton_holt'"),
        (_with(estimator={"name": "full", "truncation": 2}), "estimator.truncation: unknown key for estimator 'full' (known: name, horizon, num_tasks, meta_loss, remat, init_seed)"),
    ],
)
def test_unknown_keys_are_named(data, message):
    assert message in _error(data)


@pytest.mark.parametrize(
    "data, message",
    [
        (_with(estimator={"name": "pes", "horizon": "ten"}), "estimator.horizon: expected int, got str 'ten'"),
        (_with(estimator={"name": "pes", "horizon": 10.0}), "estimator.horizon: expected int, got float 10.0"),
        (_with(estimator={"name": "pes", "horizon": True}), "estimator.horizon: expected int, got bool True"),
        (_with(optimizer={"name": "dcog", "normalize": 1}), "optimizer.normalize: expected bool, got int 1"),
        (_with(optimizer={"name": "dcog", "normalize": "yes please"}), "optimizer.normalize: expected bool, got str"),
        (_with(optimizer={"name": "dcog", "learning_rate": "fast"}), "optimizer.learning_rate: expected float, got str 'fast'"),
        (_with(optimizer={"name": "dcog", "learning_rate": None}), "optimizer.learning_rate: expected float, got null"),
        (_with(optimizer={"name": "dcog", "maxiter": 2.5}), "optimizer.maxiter: expected int, got float 2.5"),
        (_with(optimizer={"name": "dcog", "solver": 3}), "optimizer.solver: expected str or QPSolver, got int 3"),
        (_with(task={"name": "beverton_holt", "hidden": [5, "five"]}), "task.hidden[1]: expected int, got str 'five'"),
        (_with(task={"name": "beverton_holt", "hidden": 5}), "task.hidden: expected list of int, got int 5"),
        (_with(task={"name": "beverton_holt", "k_range": [1.0, 2.0, 3.0]}), "task.k_range: expected list of 2 (float, float), got 3 items"),
        (_with(task={"name": "noisy_quadratic", "hessian": [[1.0, 0.0], [0.0, "x"]]}), "task.hessian[1][1]: expected float, got str 'x'"),
        (_with(train={"num_train_tasks": "all"}), "train.num_train_tasks: expected int, got str 'all'"),
        (_with(eval={"lr_grid": [0.1, None]}), "eval.lr_grid[1]: expected float, got null"),
        (_with(eval={"baselines": "sgd"}), "eval.baselines: expected list of str, got str 'sgd'"),
        (_with(seed="0"), "seed: expected int, got str '0'"),
        (_with(train=[1, 2]), "train: expected a mapping, got list [1, 2]"),
        (_with(optimizer="dcog"), "optimizer: expected a mapping, got str 'dcog'"),
    ],
)
def test_wrong_types_are_named(data, message):
    assert message in _error(data)


@pytest.mark.parametrize(
    "data, message",
    [
        (_with(optimizer={"name": "dcx"}), "optimizer.name: unknown learned optimizer 'dcx' (known: dcog, dcogd, dcom"),
        (_with(task={"name": "mnist"}), "task.name: unknown task family 'mnist' (known: least_squares,"),
        (_with(estimator={"name": "reinforce"}), "estimator.name: unknown estimator 'reinforce' (known: full, truncated, es, pes)"),
        (_with(meta_optimizer={"name": "lion"}), "meta_optimizer.name: unknown meta-optimizer 'lion' (known: rmsprop, adam, adamw, sgd)"),
        (_with(eval={"baselines": ["sgd", "lbfgs"]}), "eval.baselines[1]: unknown baseline 'lbfgs' (known: sgd, momentum, adam, rmsprop)"),
        (_with(optimizer={"learning_rate": 0.1}), "optimizer.name: missing required key"),
        (_with(task=None), "task: missing required key"),
    ],
)
def test_unknown_names_list_the_known_ones(data, message):
    assert message in _error(data)


@pytest.mark.parametrize(
    "data, message",
    [
        # the target classes' own value checks, reported at the field
        (_with(optimizer={"name": "dcog", "learning_rate": -1.0}), "optimizer.learning_rate: DCOG.learning_rate must be > 0"),
        (_with(estimator={"name": "pes", "horizon": 4, "truncation": 8}), "estimator.truncation: PES.truncation (8) must be <= horizon (4)"),
        (_with(task={"name": "beverton_holt", "activation": "swish"}), "task.activation: BevertonHolt.activation must be one of"),
        # checks of the config's own sections
        (_with(train={"num_steps": 0}), "train.num_steps: must be > 0, got 0"),
        (_with(eval={"lr_grid": [0.1, -0.5]}), "eval.lr_grid[1]: must be > 0, got -0.5"),
        (_with(eval={"lr_grid": []}), "eval.lr_grid: must be non-empty"),
        (_with(eval={"baselines": ["sgd", "sgd"]}), "eval.baselines: duplicate names"),
        (_with(meta_optimizer={"name": "adam", "weight_decay": 0.1}), "meta_optimizer.weight_decay: only used by adamw"),
        (_with(meta_optimizer={"name": "sgd", "clip": 0.0}), "meta_optimizer.clip: must be > 0"),
        # across sections: a full unroll cannot draw more distinct tasks than the pool holds
        (
            _with(estimator={"name": "full", "num_tasks": 8}, train={"num_train_tasks": 5}),
            "estimator.num_tasks: a full unroll draws 8 distinct tasks per meta-step from the pool, but train.num_train_tasks is 5",
        ),
    ],
)
def test_invalid_values_are_named(data, message):
    assert message in _error(data)


def test_float_fields_accept_ints_and_yaml_exponents():
    text = "optimizer: {name: dcog, learning_rate: 1e-3, tol: 1}\ntask: {name: quadratic, shift: -2}\n"
    data = C.parse_yaml(text)
    assert data["optimizer"]["learning_rate"] == 1e-3  # plain PyYAML would give the str '1e-3'
    assert yaml.safe_load(text)["optimizer"]["learning_rate"] == "1e-3"
    cfg = C.from_dict(data)
    assert cfg.optimizer.kwargs == {"learning_rate": 0.001, "tol": 1.0}
    assert type(cfg.optimizer.kwargs["tol"]) is float and type(cfg.task.kwargs["shift"]) is float


def test_coerce_handles_annotation_forms():
    from typing import Literal

    assert C.coerce([1, 2], tuple[float, ...], "x") == (1.0, 2.0)
    assert C.coerce([], tuple[int, ...], "x") == ()
    assert C.coerce(None, float | None, "x") is None
    assert C.coerce(3, int | str, "x") == 3 and C.coerce("a", int | str, "x") == "a"
    assert C.coerce("b", Literal["a", "b"], "x") == "b"
    with pytest.raises(C.ConfigError, match=r"^x: expected one of 'a', 'b', got str 'c'$"):
        C.coerce("c", Literal["a", "b"], "x")
    with pytest.raises(C.ConfigError, match=r"^x: expected int or str, got float 1.5$"):
        C.coerce(1.5, int | str, "x")
    with pytest.raises(C.ConfigError, match=r"^y\[0\]\[1\]: expected int, got bool True$"):
        C.coerce([[1, True]], tuple[tuple[int, ...], ...], "y")


# --- overrides, files, round trip -----------------------------------------------------


def test_overrides_parse_yaml_values_and_are_validated(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = C.load_config(
        path,
        [
            "estimator.horizon=10",
            "optimizer.normalize=true",
            "optimizer.learning_rate=3e-4",
            "eval.baselines=[rmsprop]",
            "train.num_train_tasks=null",
            "task.hidden=[7]",
            "seed=11",
        ],
    )
    assert cfg.estimator.kwargs["horizon"] == 10 and cfg.seed == 11
    assert cfg.optimizer.kwargs == {"learning_rate": 3e-4, "momentum": 0.5, "normalize": True}
    assert cfg.eval.baselines == ("rmsprop",) and cfg.task.kwargs["hidden"] == (7,)
    # a whole new section from overrides alone
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text("optimizer: {name: dcog}\n")
    assert C.load_config(minimal, ["task.name=lasso", "task.dim=4"]).task == C.ComponentConfig("lasso", (("dim", 4),))

    for override, message in [
        ("estimator.horizon=ten", "estimator.horizon: expected int, got str 'ten'"),
        ("optimizer.lerning_rate=0.1", "optimizer.lerning_rate: unknown key"),
        ("estimator.name=adam", "estimator.name: unknown estimator 'adam'"),
        ("horizon", "--set 'horizon': expected KEY=VALUE"),
        ("estimator..horizon=3", "malformed key"),
        ("seed.value=3", "seed: holds int 3, cannot set seed.value"),
        ("eval.lr_grid=[0.1, 0.2", "--set eval.lr_grid: invalid YAML"),
    ]:
        with pytest.raises(C.ConfigError) as info:
            C.load_config(path, [override])
        assert message in str(info.value), (override, str(info.value))


def test_load_config_reports_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):  # an OSError: the CLI gives it its own exit status
        C.load_config(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"seed: 0 # caf\xe9\n")
    with pytest.raises(C.ConfigError, match="not UTF-8"):
        C.load_config(tmp_path / "latin1.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: {name: dcog\n")
    with pytest.raises(C.ConfigError, match="invalid YAML"):
        C.load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(C.ConfigError, match="expected a mapping at the top level"):
        C.load_config(bad)


def test_saved_config_round_trips(tmp_path):
    cfg = C.from_dict(BASE)
    path = cfg.save(tmp_path / "config.yaml")
    # the saved config is the resolved one: every default written out
    assert C.load_config(path) == cfg.resolved() != cfg
    assert yaml.safe_load(path.read_text()) == cfg.resolved().to_dict()  # plain YAML, lists not tuples
    saved = yaml.safe_load(path.read_text())
    for section, cls in (("optimizer", ldco.DCOM), ("task", tasks.BevertonHolt), ("estimator", meta.TruncatedBPTT)):
        import dataclasses

        assert set(saved[section]) == {"name"} | {f.name for f in dataclasses.fields(cls) if f.init}, section
    assert C.load_config(path).fingerprint() == cfg.fingerprint()
    assert cfg.to_dict()["task"] == {"name": "beverton_holt", "hidden": [4, 3], "r0_range": [1.0, 2.0]}
    changed = C.load_config(path, ["train.num_steps=50", "task.hidden=[4]"])
    assert C.diff(cfg, changed) == ["task.hidden", "train.num_steps"]


# --- builders -------------------------------------------------------------------------


def test_builders_construct_the_registered_classes():
    cfg = C.from_dict(BASE)
    assert C.build_optimizer(cfg) == ldco.DCOM(learning_rate=0.01, momentum=0.5)
    assert C.build_family(cfg) == tasks.BevertonHolt(hidden=(4, 3), r0_range=(1.0, 2.0))
    assert C.build_estimator(cfg) == meta.TruncatedBPTT(horizon=6, truncation=2, num_tasks=4)


def _updates(tx, grads, steps=3):
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    out = []
    for g in grads[:steps]:
        u, state = tx.update({"w": g}, state, params)
        params = optax.apply_updates(params, u)
        out.append(params["w"])
    return np.stack(out)


@pytest.mark.parametrize(
    "section, reference",
    [
        ({"name": "rmsprop", "learning_rate": 0.01}, lambda: meta.rmsprop_pytorch(0.01)),
        ({"name": "adam", "learning_rate": 0.02}, lambda: optax.adam(0.02)),
        ({"name": "adamw", "learning_rate": 0.02, "weight_decay": 0.3}, lambda: optax.adamw(0.02, weight_decay=0.3)),
        ({"name": "adamw", "learning_rate": 0.02}, lambda: optax.adamw(0.02, weight_decay=1e-4)),
        ({"name": "sgd", "learning_rate": 0.5}, lambda: optax.sgd(0.5)),
        (
            {"name": "sgd", "learning_rate": 0.5, "clip": 1.0},
            lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5)),
        ),
    ],
)
def test_meta_optimizer_matches_optax(section, reference):
    cfg = C.from_dict(_with(meta_optimizer=section))
    grads = [jnp.array([3.0, -4.0, 0.5]), jnp.array([0.1, 0.2, -0.3]), jnp.array([-2.0, 1.0, 1.0])]
    np.testing.assert_allclose(_updates(C.build_meta_optimizer(cfg), grads), _updates(reference(), grads), rtol=1e-6)


def test_clipping_bounds_the_step():
    cfg = C.from_dict(_with(meta_optimizer={"name": "sgd", "learning_rate": 1.0, "clip": 0.5}))
    step = _updates(C.build_meta_optimizer(cfg), [jnp.array([30.0, -40.0, 0.0])], steps=1)[0] - 1.0
    np.testing.assert_allclose(step, [-0.3, 0.4, 0.0], rtol=1e-6)  # -0.5 * g / ||g||


def test_stream_keys_are_distinct_and_deterministic():
    keys = {s: tuple(np.asarray(jax.random.key_data(C.stream_key(0, s))).tolist()) for s in C.STREAMS}
    assert len(set(keys.values())) == len(C.STREAMS)
    assert np.array_equal(C.stream_key(4, "pool"), C.stream_key(4, "pool"))
    assert not np.array_equal(C.stream_key(4, "pool"), C.stream_key(5, "pool"))


# --- the shipped configs --------------------------------------------------------------


def test_configs_directory_is_populated():
    names = {p.name for p in CONFIGS}
    assert {"quick_demo.yaml", "dcog_least_squares.yaml", "dcom_beverton_holt.yaml", "pes_noisy_quadratic.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_parses_and_builds(path):
    cfg = C.load_config(path)
    raw = C.parse_yaml(path.read_text())  # independent route: the classes built by hand
    assert C.build_optimizer(cfg) == ldco.LEARNED_OPTIMIZERS[raw["optimizer"]["name"]](**_kwargs(raw["optimizer"]))
    if raw["task"]["name"] == "mixture":
        members = tuple(tasks.FAMILIES[m["name"]](**_kwargs(m)) for m in raw["task"]["members"])
        assert C.build_family(cfg) == tasks.Mixture(members, raw["task"].get("weights"), tuple(raw["task"]["horizons"]))
    else:
        assert C.build_family(cfg) == tasks.FAMILIES[raw["task"]["name"]](**_kwargs(raw["task"]))
    assert C.build_estimator(cfg) == meta.ESTIMATORS[raw["estimator"]["name"]](**_kwargs(raw["estimator"]))
    assert isinstance(C.build_meta_optimizer(cfg), optax.GradientTransformation)
    assert C.from_dict(C.parse_yaml(cfg.to_yaml())) == cfg


def _kwargs(section: dict) -> dict:
    """A YAML section as constructor keyword arguments (lists as tuples, name dropped)."""
    tup = lambda v: tuple(tup(x) for x in v) if isinstance(v, list) else v
    return {k: tup(v) for k, v in section.items() if k != "name"}


# --- resolved configs, fingerprints, bad values, memory ---------------------------------


def test_fingerprint_tracks_the_trajectory_not_the_length():
    cfg = C.from_dict(BASE)
    same = C.from_dict(_with(train={**BASE["train"], "num_steps": 99, "checkpoint_every": 7},
                             eval={"num_tasks": 3}))
    assert same.fingerprint() == cfg.fingerprint()
    # a default written out explicitly is the same config
    explicit = C.from_dict(_with(estimator={**BASE["estimator"], "remat": False}))
    assert explicit.fingerprint() == cfg.fingerprint()
    for changed in (_with(seed=4), _with(estimator={**BASE["estimator"], "truncation": 3}),
                    _with(meta_optimizer={**BASE["meta_optimizer"], "clip": 2.0})):
        assert C.from_dict(changed).fingerprint() != cfg.fingerprint()


def test_defaults_lists_every_default_in_force():
    d = C.defaults(C.from_dict(BASE))
    assert d["train.num_steps"] == 20 and d["meta_optimizer.name"] == "rmsprop" and d["seed"] == 0
    assert d["estimator.stagger"] == meta.TruncatedBPTT.__dataclass_fields__["stagger"].default
    assert d["optimizer.momentum"] == ldco.DCOM.__dataclass_fields__["momentum"].default


@pytest.mark.parametrize("key,value,message", [
    ("optimizer.learning_rate", ".nan", "optimizer.learning_rate: must be a finite number, got nan"),
    ("meta_optimizer.learning_rate", ".inf", "meta_optimizer.learning_rate: must be a finite number, got inf"),
    ("eval.lr_grid", "[0.1, -.inf]", "eval.lr_grid[1]: must be a finite number"),
    ("train.num_steps", "10000000000", "train.num_steps: out of range: 10000000000 does not fit in a 32-bit"),
    ("task.num_train", "1000000000000", "task.num_train: out of range"),
    ("seed", "-1", "seed: must be >= 0"),
    ("meta_optimizer.clip", "1e400", "meta_optimizer.clip: must be a finite number"),
])
def test_non_finite_and_out_of_range_values_are_named(tmp_path, key, value, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(C.ConfigError) as info:
        C.load_config(path, [f"{key}={value}"])
    assert message in str(info.value)


def test_sizes_beyond_memory_are_refused_before_allocation():
    # the shifted least-squares family builds its data matrix when constructed: refused before
    data = {"optimizer": {"name": "dcogd"}, "task": {"name": "shifted_least_squares", "num_samples": 2_000_000_000,
                                                     "dim": 100}}
    with pytest.raises(C.ResourceError, match=r"task.num_samples: 2000000000 samples x 100 dimensions is a 1.5 TiB"):
        C.from_dict(data)
    # other sizes: an estimate from jax.eval_shape (no allocation) against a limit
    cfg = C.from_dict({**BASE, "task": {"name": "least_squares", "num_samples": 1000, "dim": 100},
                       "train": {"num_train_tasks": 1000}})
    est = C.estimate_memory(cfg)
    one_task = 4 * (1000 * 100 + 1000 + 1000 * 100 + 1000)  # float32 X, y for train and validation
    assert est["task"] >= 4 * 1000 * 100 and est["pool"] == 1000 * est["task"]
    assert est["task"] <= one_task
    with pytest.raises(C.ResourceError, match=r"needs about .* MiB .*largest term pool: train.num_train_tasks=1000"):
        C.check_memory(cfg, limit=100 * 2**20)
    assert C.check_memory(cfg, limit=2**40) == est


# --- property: random corruptions always give a named ConfigError -----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(), st.text(max_size=3)), max_size=3),
)
_VALUES = st.recursive(_LEAVES, lambda inner: st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=5)
_BASE_TEXT = yaml.safe_dump(BASE, sort_keys=False)


def _paths(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))


_ALL_PATHS = list(_paths(BASE))


def _set(tree, path, value):
    import copy

    out = copy.deepcopy(tree)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def _only_config_errors(load):
    try:
        load()
    except C.ConfigError as e:
        message = str(e)
        assert message and "Traceback" not in message
        assert ":" in message  # "<key or file>: <what is wrong>"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_ALL_PATHS), _VALUES)
def test_random_values_anywhere_give_a_config_error(path, value):
    """Replace any key's value by a random YAML value: the loader accepts it or raises a
    ConfigError whose message starts with the dotted key -- never another exception."""
    data = _set(BASE, path, value)
    try:
        C.from_dict(data)
    except C.ConfigError as e:
        top = path[0]
        assert str(e).split(":")[0].split(".")[0].split("[")[0] in {top, "config", "estimator", "task"}, (path, str(e))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_byte_corruptions_give_a_config_error(tmp_path_factory, data):
    """Delete, insert or replace bytes of a valid YAML file (including invalid UTF-8)."""
    raw = bytearray(_BASE_TEXT.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "delete":
            del raw[i : i + data.draw(st.integers(1, 20))]
        else:
            chunk = data.draw(st.binary(min_size=1, max_size=6) | st.sampled_from(
                [b":", b"{", b"]", b"- ", b"\t", b"!!python/object:os.system", b".nan", b"1e999", b"&a *a", b"\xff"]))
            raw[i : i + (len(chunk) if op == "replace" else 0)] = chunk
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_bytes(bytes(raw))
    _only_config_errors(lambda: C.load_config(path))
