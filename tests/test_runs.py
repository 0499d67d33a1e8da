"""Run directories and the I/O loop (learned_dco.app.runs), checkpoints and the atomic writer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_dco as ldco
from learned_dco import meta, tasks
from learned_dco.app import runs
from learned_dco.io import atomic_write_bytes, atomic_write_json, atomic_write_text, environment, remove_temporaries
from learned_dco.meta import checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAMILY = tasks.LeastSquares(num_samples=12, dim=6, init_scale=1.0)


def _trainer(estimator, pool=None, **kw):
    return meta.MetaTrainer(ldco.DCOM(learning_rate=0.01), FAMILY, estimator, pool=pool, **kw)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --- the loop around MetaTrainer.step (run, resume, restore) ---------------------------------


def test_resume_equals_uninterrupted_run(tmp_path):
    est = meta.TruncatedBPTT(horizon=6, truncation=2, num_tasks=4)
    key = jax.random.PRNGKey(0)
    full = runs.run(_trainer(est), _trainer(est).init(key), 7, run_dir=tmp_path / "full", progress=False)

    first = _trainer(est)
    runs.run(first, first.init(key), 4, run_dir=tmp_path / "cut", checkpoint_every=2, progress=False)
    # A new process would build a new trainer and restore from the run directory.
    second = _trainer(est)
    restored = runs.restore(second, tmp_path / "cut", key)
    assert int(restored.step) == 4
    resumed = runs.run(second, restored, 7, run_dir=tmp_path / "cut", progress=False)
    assert _same(resumed, full)
    lines = [json.loads(ln) for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(7))
    full_lines = [json.loads(ln) for ln in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["meta_loss"] for r in lines] == [r["meta_loss"] for r in full_lines]


def test_checkpoint_write_is_atomic_and_keeps_the_previous_generation(tmp_path):
    """A failed write leaves the previous checkpoint readable; each save keeps one generation."""
    est = meta.FullUnroll(horizon=2, num_tasks=2)
    trainer = _trainer(est)
    state = runs.run(trainer, trainer.init(jax.random.PRNGKey(0)), 2, run_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.msgpack").read_bytes()

    class Boom(Exception):
        pass

    def explode(*_):
        raise Boom

    with pytest.raises(Boom):
        runs.run(trainer, state, 4, run_dir=tmp_path, checkpoint_every=1, progress=False, on_step=explode)
    assert (tmp_path / "checkpoint.msgpack").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    runs.run(trainer, state, 3, run_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.prev.msgpack").read_bytes() == before


def test_saved_meta_params_load_into_opt_fn(tmp_path):
    lopt = ldco.DCOM(learning_rate=0.01)
    trainer = meta.MetaTrainer(lopt, FAMILY, meta.FullUnroll(horizon=2, num_tasks=2))
    state = runs.run(trainer, trainer.init(jax.random.PRNGKey(0)), 2, run_dir=tmp_path, progress=False)
    checkpoint.save_meta(tmp_path / "meta.msgpack", state.meta)
    # "Another program": only the optimizer class, a model and the file.
    params = jnp.zeros(FAMILY.dim)
    loaded = meta.load_meta(tmp_path / "meta.msgpack", template=lopt.init(jax.random.PRNGKey(9), params))
    assert _same(loaded, state.meta)
    tx = lopt.opt_fn(loaded)
    updates, _ = tx.update(jnp.ones(FAMILY.dim), tx.init(params), params)
    assert updates.shape == (FAMILY.dim,)
    raw = meta.load_meta(tmp_path / "meta.msgpack")  # no template: nested dicts of arrays
    np.testing.assert_array_equal(raw["log_lam"], state.meta["log_lam"])


# --- checkpoints: fingerprint, structure, shapes, dtypes, generations --------------------------


TREE = {"a": jnp.arange(3.0), "b": (jnp.zeros((2, 2), jnp.int32), jnp.ones(()))}


def test_restore_names_the_first_mismatch(tmp_path):
    path = checkpoint.save(tmp_path / "c.msgpack", TREE, fingerprint="f" * 64)
    back = checkpoint.restore(path, TREE, fingerprint="f" * 64)
    assert _same(back, TREE)
    # a (3,) array restored into a (5,) template: refused, naming the leaf
    with pytest.raises(checkpoint.CheckpointError, match=r"\['a'\]: shape \(3,\) in the checkpoint, \(5,\) expected"):
        checkpoint.restore(path, {**TREE, "a": jnp.zeros(5)})
    with pytest.raises(checkpoint.CheckpointError, match=r"\['b'\]\[0\]: dtype int32 in the checkpoint, float32 expected"):
        checkpoint.restore(path, {**TREE, "b": (jnp.zeros((2, 2)), jnp.ones(()))})
    with pytest.raises(checkpoint.CheckpointError, match="structure differs"):
        checkpoint.restore(path, {"a": TREE["a"], "c": TREE["b"]})
    with pytest.raises(checkpoint.CheckpointError, match="written under a different config"):
        checkpoint.restore(path, TREE, fingerprint="0" * 64)
    spec = dict((name, (shape, dtype)) for name, shape, dtype in checkpoint.spec(TREE))
    assert spec == {"['a']": ([3], "float32"), "['b'][0]": ([2, 2], "int32"), "['b'][1]": ([], "float32")}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_restore_latest_falls_back_to_the_previous_generation(tmp_path, damage):
    path = tmp_path / "checkpoint.msgpack"
    old = {"a": jnp.arange(3.0)}
    checkpoint.save_generation(path, old, "f")
    checkpoint.save_generation(path, {"a": jnp.arange(3.0) + 10}, "f")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 40)
    else:
        path.unlink()
    said = []
    back = checkpoint.restore_latest(path, old, "f", warn=said.append)
    assert _same(back, old) and len(said) == 1 and "previous checkpoint checkpoint.prev.msgpack" in said[0]


def test_restore_latest_does_not_hide_a_mismatch(tmp_path):
    path = tmp_path / "checkpoint.msgpack"
    checkpoint.save_generation(path, {"a": jnp.arange(3.0)}, "f")
    checkpoint.save_generation(path, {"a": jnp.arange(3.0)}, "f")
    with pytest.raises(checkpoint.CheckpointError, match="shape"):
        checkpoint.restore_latest(path, {"a": jnp.zeros(5)}, "f", warn=lambda m: None)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.restore_latest(tmp_path / "none.msgpack", {"a": jnp.zeros(5)})


def test_format_1_checkpoints_still_restore(tmp_path):
    from flax import serialization

    (tmp_path / "old.msgpack").write_bytes(serialization.to_bytes(jax.device_get(TREE)))
    assert _same(checkpoint.restore(tmp_path / "old.msgpack", TREE, fingerprint="f"), TREE)


# --- metrics -------------------------------------------------------------------------------------


def test_recover_metrics_drops_a_torn_last_line_and_later_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": k, "meta_loss": 1.0 / (k + 1)}) for k in range(5)]
    path.write_text("\n".join(lines) + "\n" + lines[0][:9])
    said = []
    assert runs.recover_metrics(path, 3, said.append) == 3
    assert path.read_text() == "\n".join(lines[:3]) + "\n"
    assert len(said) == 1 and "torn last line (line 6" in said[0]
    path.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    with pytest.raises(runs.RunError, match="line 2 is not a metrics record"):
        runs.recover_metrics(path, 3, said.append)


# --- io ------------------------------------------------------------------------------------------


def test_atomic_writers(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "a.txt", "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2.5, None]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2.5, None]}
    with pytest.raises(TypeError):  # not JSON data; the old file stays
        atomic_write_json(tmp_path / "a.json", {"x": object()})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2.5, None]}
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.json", "sub"]  # no temporary left


def test_a_killed_writer_leaves_the_old_file(tmp_path):
    """kill -9 of a process in the middle of atomic_write_bytes: the old content survives whole."""
    target = tmp_path / "f.bin"
    target.write_bytes(b"old" * 1000)
    code = (
        "import os, signal, learned_dco.io as io\n"
        "real = os.replace\n"
        "def die(*a):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.replace = die\n"
        f"io.atomic_write_bytes({str(target)!r}, b'new' * 100000)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == -9
    assert target.read_bytes() == b"old" * 1000
    # the killed writer's temporary file is left behind; remove_temporaries cleans it up
    (tmp_path / ".keep.tmp-notapid").write_text("not ours")
    leftover = [p.name for p in tmp_path.iterdir() if p.name.startswith(".f.bin.tmp-")]
    assert len(leftover) == 1
    assert [p.name for p in remove_temporaries(tmp_path)] == leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.tmp-notapid", "f.bin"]


def test_environment_records_versions_and_device():
    env = environment()
    assert env["versions"]["jax"] == jax.__version__ and env["versions"]["python"].count(".") == 2
    assert env["device"]["backend"] == jax.default_backend() and env["device"]["count"] == len(jax.devices())
    json.dumps(env)
