"""The ``learned-dco`` command line: train -> eval end to end, resume, errors, shipped configs."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from flax import serialization

from learned_dco.app import cli, runs, stepcache
from learned_dco.app import config as C
from learned_dco.meta import load_meta
from learned_dco.tasks import sample_tasks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "learned_dco" / "configs").glob("*.yaml"))

TINY = {
    "seed": 0,
    "optimizer": {"name": "dcog", "learning_rate": 0.02},
    "task": {"name": "least_squares", "num_samples": 8, "dim": 4, "init_scale": 1.0},
    "estimator": {"name": "truncated", "horizon": 4, "truncation": 2, "num_tasks": 2, "meta_loss": "mean_train"},
    "meta_optimizer": {"name": "adam", "learning_rate": 0.05},
    "train": {"num_steps": 4, "num_train_tasks": 5, "checkpoint_every": 2},
    "eval": {"num_tasks": 5, "num_steps": 6, "baselines": ["sgd", "adam", "rmsprop"], "lr_grid": [0.003, 0.01, 0.03]},
}


@pytest.fixture(scope="module", autouse=True)
def _module_cache(module_compilation_cache):
    """The resume tests rebuild the same trainer several times (as separate processes
    would); with a module-wide cache each rebuild loads the identical meta-step."""


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def trained_run(tiny_config, tmp_path_factory) -> Path:
    """``learned-dco train tiny.yaml --out RUN`` then ``learned-dco eval RUN`` (shared)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert cli.main(["train", str(tiny_config), "--out", str(run), "--no-progress"]) == 0
    # the flags override the config's eval section (num_tasks 5, num_steps 6, seed + 1)
    assert cli.main(["eval", str(run), "--num-tasks", "3", "--num-steps", "4", "--seed", "7"]) == 0
    return run


def _main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- help --------------------------------------------------------------------------------


def test_help_texts(capsys):
    for argv, needles in [
        ([], ["train", "eval", "reproduce", "configs", "COMMAND --help", "exit status", "130"]),
        (["configs"], ["--show", "learned-dco train NAME"]),
        (["train"], ["CONFIG", "shipped config", "learned-dco configs", "train quick_demo", "--set", "--resume", "--out", "metrics.jsonl", "meta.msgpack", "load_trained"]),
        (["eval"], ["RUN_DIR", "--num-tasks", "--num-steps", "--seed", "curves.png", "report.md", "results.json",
                    "--overwrite", "--debug", "--no-compile-cache"]),
        (["reproduce"], ["STUDY", "--list", "--quick", "--out", "--seed", "--overwrite", "exit status"]),
    ]:
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        for needle in needles:
            assert needle in text, (argv, needle)


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "learned_dco.app.cli", "--help"], capture_output=True, text=True, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert out.returncode == 0 and "learned-dco" in out.stdout


def test_commands_are_a_registry_of_subparsers():
    assert {"train", "eval", "reproduce", "configs", "plot", "cache"} <= set(cli.COMMANDS)
    parser = cli.build_parser()
    args = parser.parse_args(["eval", "somewhere", "--num-tasks", "5"])
    assert args.handler is cli.run_eval and args.num_tasks == 5 and args.num_steps is None
    args = parser.parse_args(["reproduce", "--quick", "--out", "elsewhere"])
    assert args.handler is cli.run_reproduce and args.quick and args.out == "elsewhere" and args.seed == 0
    assert args.study == "dco" and not args.list
    args = parser.parse_args(["reproduce", "star", "--list", "--debug", "--no-compile-cache"])
    assert args.study == "star" and args.list and args.debug and args.compile_cache is False


# --- train -> eval ------------------------------------------------------------------------


def test_train_writes_the_run_directory(trained_run, tiny_config):
    assert C.load_config(trained_run / "config.yaml") == C.load_config(tiny_config).resolved()
    lines = [json.loads(ln) for ln in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3]
    assert {"meta_loss", "train_loss", "grad_norm", "nonfinite_tasks", "skipped", "seconds"} <= set(lines[0])
    assert all(np.isfinite(r["meta_loss"]) for r in lines)
    info = json.loads((trained_run / "meta.json").read_text())
    assert info["meta_step"] == 4 and info["optimizer"] == C.load_config(tiny_config).resolved().optimizer.to_dict()
    assert info["optimizer"]["learning_rate"] == TINY["optimizer"]["learning_rate"]
    run_info = json.loads((trained_run / "run.json").read_text())
    assert run_info["fingerprint"] == C.load_config(tiny_config).fingerprint()
    assert run_info["versions"]["jax"] == jax.__version__ and run_info["device"]["backend"] == jax.default_backend()


def test_saved_meta_params_drive_opt_fn_in_another_program(trained_run):
    """meta.msgpack loads into lopt.opt_fn; the update is DCOG's closed form theta - g / lam^2."""
    import learned_dco as ldco

    lopt = ldco.DCOG(learning_rate=0.02)
    params = jnp.zeros(4)
    meta = load_meta(trained_run / "meta.msgpack", template=lopt.init(jax.random.PRNGKey(0), params))
    assert not np.allclose(meta["log_lam"], lopt.init(jax.random.PRNGKey(0), params)["log_lam"])  # it trained
    tx = lopt.opt_fn(meta)
    g = jnp.array([1.0, -2.0, 0.5, 3.0])
    updates, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(updates, -g / np.exp(2 * np.asarray(meta["log_lam"])), rtol=1e-5)
    # the same through runs.load_trained
    trained = runs.load_trained(trained_run)
    assert trained.lopt == lopt and trained.meta_step == 4
    np.testing.assert_array_equal(trained.meta["log_lam"], meta["log_lam"])


def test_eval_writes_plot_report_and_results(trained_run):
    out = trained_run / "eval"
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"steps", "curves", "tuned_lr", "grid", "tuning_scores", "summary", "num_tasks", "eval_seed"}
    # --num-tasks 3 --num-steps 4 --seed 7 overrode the config's 5, 6 and seed + 1
    assert results["num_tasks"] == 3 and results["eval_seed"] == 7
    assert results["steps"] == [0, 1, 2, 3, 4] and results["grid"] == [0.003, 0.01, 0.03]
    names = ["dcog (meta-trained)", "dcog (initial)", "sgd", "adam", "rmsprop"]
    assert list(results["curves"]) == names
    for name in names:
        assert set(results["curves"][name]) == {"mean", "std", "median", "q25", "q75"}
        assert len(results["curves"][name]["mean"]) == 5
    # every optimizer starts from the same parameters on the same held-out tasks
    assert len({round(results["curves"][n]["mean"][0], 4) for n in names}) == 1
    # each tuned learning rate is the argmin of its sweep scores
    for b in ("sgd", "adam", "rmsprop"):
        scores = np.array([np.inf if s is None else s for s in results["tuning_scores"][b]])
        assert results["tuned_lr"][b] == results["grid"][int(np.argmin(scores))]
    report = (out / "report.md").read_text()
    assert "| optimizer | tuned lr | loss at step 0 | final loss | best loss (step) | diverged |" in report
    for name in names:
        assert f"| {name} |" in report
    assert "![validation loss curves](curves.png)" in report


def test_eval_curves_match_a_python_loop_on_held_out_tasks(trained_run):
    """The meta-trained curve, recomputed by hand from the documented protocol: held-out tasks
    from the eval seed's stream (none of them a training task), starts from fold_in(key, i)."""
    results = json.loads((trained_run / "eval" / "results.json").read_text())
    trained = runs.load_trained(trained_run)
    cfg, family = trained.config, trained.family
    assert results["eval_seed"] == 7
    heldout = sample_tasks(family, C.stream_key(7, "heldout"), 3)
    pool = sample_tasks(family, C.stream_key(cfg.seed, "pool"), 5)
    for i in range(3):
        assert not np.any([np.allclose(heldout.X[i], pool.X[j]) for j in range(5)])
    key = C.stream_key(7, "rollout")
    curves = []
    for i in range(3):
        task = jax.tree.map(lambda x: x[i], heldout)
        k_init, _ = jax.random.split(jax.random.fold_in(key, i))
        params = family.init_params(k_init, task)
        tx = trained.lopt.opt_fn(trained.meta)
        state, losses = tx.init(params), [family.val_loss(params, task)]
        for _ in range(4):
            updates, state = tx.update(jax.grad(family.loss)(params, task), state, params)
            params = optax.apply_updates(params, updates)
            losses.append(family.val_loss(params, task))
        curves.append(np.array(losses))
    np.testing.assert_allclose(results["curves"]["dcog (meta-trained)"]["mean"], np.mean(curves, 0), rtol=1e-4)
    np.testing.assert_allclose(results["curves"]["dcog (meta-trained)"]["std"], np.std(curves, 0), rtol=1e-3, atol=1e-4)


# --- resume ---------------------------------------------------------------------------------


def _artifacts(run: Path) -> tuple[bytes, bytes, list]:
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return (run / "meta.msgpack").read_bytes(), (run / "checkpoint.msgpack").read_bytes(), [
        (r["step"], r["meta_loss"], r["grad_norm"]) for r in lines
    ]


def test_resume_through_the_cli_equals_an_uninterrupted_run(trained_run, tiny_config, tmp_path, capsys, monkeypatch):
    reference = _artifacts(trained_run)  # 4 uninterrupted meta-steps

    # (a) a run stopped at 2 steps, extended to 4 with --resume
    short = tmp_path / "short"
    assert _main(["train", tiny_config, "--out", short, "--set", "train.num_steps=2", "--no-progress"], capsys)[0] == 0
    code, out, _ = _main(["train", "--resume", short, "--set", "train.num_steps=4", "--no-progress"], capsys)
    assert code == 0 and "resuming" in out
    assert _artifacts(short) == reference
    assert C.load_config(short / "config.yaml").train.num_steps == 4

    # (b) a run killed during its 4th meta-step resumes from the step-2 checkpoint
    killed = tmp_path / "killed"
    real_cached_step, calls = stepcache.cached_step, []

    def dying_cached_step(*args):  # the CLI steps through the stored meta-step (a cache is on here)
        step = real_cached_step(*args)

        def dying(state):
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
            return step(state)

        return dying

    monkeypatch.setattr(stepcache, "cached_step", dying_cached_step)
    code, _, err = _main(["train", tiny_config, "--out", killed, "--no-progress"], capsys)
    assert code == 130 and f"learned-dco train --resume {killed}" in err and len(calls) == 4
    monkeypatch.setattr(stepcache, "cached_step", real_cached_step)
    assert not (killed / "meta.msgpack").exists()
    assert int(serialization.msgpack_restore((killed / "checkpoint.msgpack").read_bytes())["state"]["step"]) == 2
    # the saved config is used; giving the same CONFIG again is allowed too
    assert _main(["train", tiny_config, "--resume", killed, "--no-progress"], capsys)[0] == 0
    assert _artifacts(killed) == reference


# --- errors ---------------------------------------------------------------------------------


def test_errors_name_the_problem(trained_run, tiny_config, tmp_path, capsys):
    cases = [
        (["train", tiny_config, "--set", "estimator.horizon=ten", "--out", tmp_path / "a"], 2, "estimator.horizon: expected int, got str 'ten'"),
        (["train", tiny_config, "--set", "optimizer.lerning_rate=1", "--out", tmp_path / "a"], 2, "optimizer.lerning_rate: unknown key"),
        (["train", tiny_config, "--set", "optimizer.learning_rate=.nan", "--out", tmp_path / "a"], 2, "optimizer.learning_rate: must be a finite number"),
        (["train", tmp_path / "nope.yaml"], 3, "nope.yaml: no such config file"),
        (["train"], 2, "give a CONFIG (a YAML file or a shipped config's name; or --resume RUN_DIR)"),
        (["train", tiny_config, "--out", trained_run], 6, "already holds a run"),
        (["train", "--resume", trained_run, "--set", "estimator.truncation=1"], 2, "estimator.truncation: differs from the saved config"),
        (["train", "--resume", trained_run, "--set", "train.num_steps=2"], 2, "train.num_steps: the checkpoint is already at step 4 > 2"),
        (["train", "--resume", tmp_path], 5, "no saved config"),
        (["eval", tmp_path, "--out", tmp_path / "ev"], 5, "no saved config"),
        (["eval", trained_run, "--num-tasks", "0", "--out", tmp_path / "ev"], 2, "--num-tasks: must be a positive integer"),
        (["eval", trained_run], 6, "already holds results (curves.png); pass --overwrite"),
        (["reproduce", "nosuchstudy"], 2, "unknown study 'nosuchstudy'"),
    ]
    for argv, status, message in cases:
        code, _, err = _main(argv, capsys)
        assert code == status, (argv, code, err)
        assert message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err  # one line
    assert not (tmp_path / "a").exists()  # nothing written for a bad config


def test_default_run_dir_is_unique(tmp_path):
    first = cli.default_run_dir("learned_dco/configs/quick_demo.yaml", tmp_path)
    assert first.parent == tmp_path and first.name.startswith("quick_demo-")
    first.mkdir()
    second = cli.default_run_dir("learned_dco/configs/quick_demo.yaml", tmp_path)
    assert second != first and not second.exists()


# --- the shipped configs train --------------------------------------------------------------


def _shrink(cfg: C.RunConfig) -> list[str]:
    """Overrides that keep a config's structure but make two meta-steps cheap."""
    sets = ["train.num_steps=2", "train.checkpoint_every=1", "estimator.num_tasks=2"]
    if cfg.train.num_train_tasks is not None:
        sets.append("train.num_train_tasks=3")
    if "hidden" in {f.name for f in dataclasses.fields(C.build_family(cfg))}:
        sets.append("task.hidden=[2]")  # the DCO step's compile time grows with the layers
    est = C.build_estimator(cfg)
    if hasattr(est, "truncation") and cfg.estimator.name != "full":
        sets += ["estimator.horizon=4", "estimator.truncation=2"]
    else:
        sets.append("estimator.horizon=1")
    return sets


@pytest.mark.integration
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_trains(path, tmp_path, capsys):
    sets = _shrink(C.load_config(path))
    argv = ["train", path, "--out", tmp_path / "run", "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(r["meta_loss"]) for r in lines)
    trained = runs.load_trained(tmp_path / "run")
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(trained.meta))


# --- failures: one line, a distinct status, --debug for the traceback -------------------------


def test_eval_without_matplotlib_writes_the_tables_and_says_so_in_one_line(trained_run, tmp_path, monkeypatch, capsys):
    """matplotlib is the ``plots`` extra: without it ``eval`` writes report.md and
    results.json, leaves the figure (and the report's link to it) out, and warns once."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "curves.png").write_bytes(b"an earlier evaluation's figure")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    code, _, err = _main(["eval", trained_run, "--num-tasks", 3, "--num-steps", 4, "--seed", 7, "--out", out,
                          "--overwrite"], capsys)
    assert code == 0, err
    assert err.strip().splitlines() == [
        "learned-dco eval: warning: curves.png not written: figures need matplotlib, which is not installed: "
        "pip install 'learned-dco[plots]'"]
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.json"]
    assert "curves.png" not in (out / "report.md").read_text()
    reference = json.loads((trained_run / "eval" / "results.json").read_text())
    assert json.loads((out / "results.json").read_text())["summary"] == reference["summary"]


def test_eval_overwrite_replaces_results_atomically(trained_run, capsys):
    before = json.loads((trained_run / "eval" / "results.json").read_text())
    code, _, err = _main(["eval", trained_run, "--num-tasks", 3, "--num-steps", 4, "--seed", 7, "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((trained_run / "eval" / "results.json").read_text()) == before
    assert not [p for p in (trained_run / "eval").iterdir() if p.name.startswith(".")]  # no temp files


def test_unexpected_exceptions_are_reported_as_bugs(tiny_config, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero somewhere deep")

    monkeypatch.setattr(runs, "train", broken)
    code, _, err = _main(["train", tiny_config, "--out", tmp_path / "r", "--no-progress"], capsys)
    assert code == cli.EXIT_BUG == 1
    assert "internal error ZeroDivisionError: division by zero somewhere deep" in err and "bug" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = _main(["train", tiny_config, "--out", tmp_path / "r", "--no-progress", "--debug"], capsys)
    assert code == 1 and "Traceback (most recent call last)" in err and "def broken" not in err
    assert err.strip().splitlines()[-1].startswith("learned-dco train: error: internal error ZeroDivisionError")


@pytest.mark.parametrize("error,status,message", [
    (PermissionError(13, "Permission denied", "/x/config.yaml"), 3, "/x/config.yaml: Permission denied"),
    (OSError(28, "No space left on device", "/x/config.yaml"), 4, "/x/config.yaml: No space left on device (disk full"),
    (KeyboardInterrupt(), 130, "learned-dco train: interrupted; continue with: learned-dco train --resume"),
])
def test_file_system_failures_have_their_own_status(tiny_config, tmp_path, capsys, monkeypatch, error, status, message):
    def fail(self, path):
        raise error

    monkeypatch.setattr(C.RunConfig, "save", fail)
    code, _, err = _main(["train", tiny_config, "--out", tmp_path / "r", "--no-progress"], capsys)
    assert code == status and message in err, err


def test_sizes_beyond_memory_exit_7_before_allocating(tiny_config, tmp_path, capsys):
    code, _, err = _main(["train", tiny_config, "--out", tmp_path / "r", "--set", "task.num_samples=2000000000",
                          "--set", "task.dim=1000"], capsys)
    assert code == cli.EXIT_MEMORY == 7
    assert "task.num_samples: 2000000000 samples x 1000 dimensions is a 14.6 TiB data matrix" in err
    assert not (tmp_path / "r").exists()


def test_reproduce_lists_studies_and_refuses_to_overwrite(tmp_path, capsys):
    code, out, _ = _main(["reproduce", "--list"], capsys)
    assert code == 0 and out.startswith("dco ") and "DCO" in out
    (tmp_path / "results.json").write_text("{}")
    code, _, err = _main(["reproduce", "--out", tmp_path, "--quick"], capsys)
    assert code == 6 and "already holds results (results.json); pass --overwrite" in err
    assert (tmp_path / "results.json").read_text() == "{}"


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_resume_survives_torn_metrics_and_a_torn_checkpoint(trained_run, tiny_config, tmp_path, capsys):
    """A crash mid-append leaves half a metrics line; a crash (or full disk) mid-checkpoint a
    truncated file: resume warns, drops the torn line, falls back to the previous checkpoint,
    and ends where an uninterrupted run ends."""
    reference = _artifacts(trained_run)
    run = tmp_path / "run"
    assert _main(["train", tiny_config, "--out", run, "--set", "train.num_steps=3", "--set",
                  "train.checkpoint_every=1", "--no-progress"], capsys)[0] == 0
    assert (run / "checkpoint.prev.msgpack").exists()  # step 2 kept next to step 3
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"meta_loss": 0.1, "ste')  # torn
    data = (run / "checkpoint.msgpack").read_bytes()
    (run / "checkpoint.msgpack").write_bytes(data[: len(data) // 2])  # torn
    code, _, err = _main(["train", "--resume", run, "--set", "train.num_steps=4", "--no-progress"], capsys)
    assert code == 0, err
    assert "warning:" in err and "ignoring a torn last line" in err
    assert "unreadable" in err and "falling back to the previous checkpoint checkpoint.prev.msgpack" in err
    assert _artifacts(run)[0] == reference[0]  # meta.msgpack byte for byte
    assert [s for s, *_ in _artifacts(run)[2]] == [0, 1, 2, 3]


def test_bad_checkpoints_exit_5_naming_the_problem(trained_run, tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path / "run")
    for name in ("checkpoint.msgpack", "checkpoint.prev.msgpack"):
        if (run / name).exists():
            (run / name).write_bytes(b"\x85garbage")
    code, _, err = _main(["train", "--resume", run, "--set", "train.num_steps=5", "--no-progress"], capsys)
    assert code == 5 and "unreadable" in err and "truncated or corrupt" in err, err
    # a checkpoint from another config: the fingerprint check refuses it
    other = _copy_run(trained_run, tmp_path / "other")
    cfg = C.load_config(other / "config.yaml", ["seed=1"])
    cfg.save(other / "config.yaml")
    code, _, err = _main(["train", "--resume", other, "--set", "train.num_steps=5", "--no-progress"], capsys)
    assert code == 5 and "written under a different config (fingerprint" in err, err


def test_resuming_warns_about_changed_defaults(trained_run, tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    info["defaults"]["optimizer.normalize"] = "something else"  # as if created under other defaults
    (run / "run.json").write_text(json.dumps(info))
    code, _, err = _main(["train", "--resume", run, "--set", "train.num_steps=4", "--no-progress"], capsys)
    assert code == 0, err
    assert "warning: optimizer.normalize: default changed from 'something else'" in err
    assert "the run keeps 'something else' as written in config.yaml" in err


def test_compile_cache_directory_and_switches(tmp_path, monkeypatch):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "x.yaml"])
    monkeypatch.delenv(cli.CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv(cli.COMPILE_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.compile_cache_dir(args) == tmp_path / "learned_dco" / "jax"
    monkeypatch.setenv(cli.CACHE_DIR_ENV, str(tmp_path / "c"))
    assert cli.compile_cache_dir(args) == tmp_path / "c"
    assert cli.compile_cache_dir(parser.parse_args(["train", "x.yaml", "--compile-cache", "d"])) == Path("d")
    assert cli.compile_cache_dir(parser.parse_args(["train", "x.yaml", "--no-compile-cache"])) is None
    monkeypatch.setenv(cli.COMPILE_CACHE_ENV, "0")
    assert cli.compile_cache_dir(args) is None


@pytest.mark.integration
def test_the_cli_fills_the_compile_cache_by_default(tiny_config, tmp_path):
    """A fresh process with only LEARNED_DCO_CACHE_DIR set writes compiled programs there."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "LEARNED_DCO_CACHE_DIR": str(tmp_path / "cache"),
           "XLA_FLAGS": os.environ["XLA_FLAGS"], "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "learned_dco.app.cli", "train", str(tiny_config), "--out", str(tmp_path / "r"),
           "--no-progress", "--set", "train.num_steps=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "cache").iterdir())) >= 2
    cmd[cmd.index("--out") + 1] = str(tmp_path / "r2")
    out = subprocess.run(cmd + ["--no-compile-cache"], capture_output=True, text=True,
                         env={**env, "LEARNED_DCO_CACHE_DIR": str(tmp_path / "cache2")}, timeout=300)
    assert out.returncode == 0 and not (tmp_path / "cache2").exists()
