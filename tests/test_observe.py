"""Observability: TensorBoard event files beside metrics.jsonl, `learned-dco plot`, and the
compilation cache's size limit and `learned-dco cache`."""

from __future__ import annotations

import builtins
import json
import warnings
import struct
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from learned_dco.app import cache, cli, observe

TINY = {
    "seed": 0,
    "optimizer": {"name": "dcog", "learning_rate": 0.02},
    "task": {"name": "least_squares", "num_samples": 8, "dim": 4, "init_scale": 1.0},
    "estimator": {"name": "full", "horizon": 2, "num_tasks": 2, "meta_loss": "final_val"},
    "meta_optimizer": {"name": "adam", "learning_rate": 0.05},
    "train": {"num_steps": 3, "num_train_tasks": 4, "checkpoint_every": 0},
}
LIMIT = 40 * 1024  # small enough that the tiny run's programs exceed it


# --- TFRecord framing, read independently of tensorboardX's writer ---------------------------

def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path) -> list[bytes]:
    """The payloads of a TFRecord file (length, masked CRC-32C of the length, data, masked CRC of
    the data), checking both checksums."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == _masked(header)
        payload = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == _masked(payload)
        out.append(payload)
        pos += 16 + length
    return out


@pytest.fixture(scope="module")
def restore_jax_cache():
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    for n, v in saved.items():
        jax.config.update(n, v)
    cc.reset_cache()


@pytest.fixture(scope="module")
def run(tmp_path_factory, restore_jax_cache):
    """`learned-dco train tiny.yaml --tensorboard` with its own small, size-limited cache."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    root = tmp_path_factory.mktemp("observe")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cc.reset_cache()
    warnings.filterwarnings("ignore", "Cache value for key", UserWarning)  # a program over the limit is not stored
    argv = ["train", str(root / "tiny.yaml"), "--out", str(root / "run"), "--no-progress", "--tensorboard",
            "--compile-cache", str(root / "cache"), "--compile-cache-max-size", str(LIMIT)]
    assert cli.main(argv) == 0
    return root


def test_tensorboard_events_equal_metrics_jsonl(run):
    from tensorboardX.proto import event_pb2

    files = list((run / "run" / observe.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(files) == 1
    got = {}
    for payload in read_records(files[0]):
        event = event_pb2.Event.FromString(payload)
        for v in event.summary.value:
            got[(v.tag, event.step)] = v.simple_value
    records = [json.loads(line) for line in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == TINY["train"]["num_steps"]
    for r in records:
        for name in ("meta_loss", "train_loss", "grad_norm", "nonfinite_tasks", "skipped"):
            np.testing.assert_allclose(got[(f"meta/{name}", r["step"])], float(r[name]), rtol=1e-6)


def test_compile_cache_respects_its_size_limit(run):
    assert jax.config.jax_compilation_cache_max_size == cache.split(LIMIT)[0]
    xla = [p for p in (run / "cache").iterdir() if p.name.endswith("-cache")]
    assert xla, "the run stored no programs"
    assert sum(p.stat().st_size for p in xla) <= cache.split(LIMIT)[0]


def test_missing_tensorboardx_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import raises ImportError
    code = cli.main(["train", "nonexistent.yaml", "--tensorboard", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_MISSING_EXTRA and "\n" not in err
    assert "tensorboardX" in err and "learned-dco[tensorboard]" in err
    assert not (tmp_path / "r").exists()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_one_panel_per_curve_and_the_evaluation(run, capsys):
    out = run / "plot.png"
    assert cli.main(["plot", str(run / "run"), "--out", str(out)]) == 0
    width, _ = _png_size(out)
    assert width == round(4.2 * 3 * 110)  # meta-loss, training loss, gradient norm
    (run / "run" / "eval").mkdir()
    (run / "run" / "eval" / "results.json").write_text(json.dumps(
        {"steps": [0, 1, 2], "curves": {"learned": {"mean": [1.0, 0.5, 0.2]}, "adam": {"mean": [1.0, 0.7, 0.4]}}}))
    assert cli.main(["plot", str(run / "run")]) == 0
    assert _png_size(run / "run" / observe.PLOT_FILE)[0] == round(4.2 * 4 * 110)


def test_plot_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert cli.main(["plot", str(tmp_path)]) == cli.EXIT_CHECKPOINT
    assert "metrics.jsonl: missing" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "meta_loss": 1.0}) + "\n")
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    for mod in [m for m in sys.modules if m.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, mod)
    assert cli.main(["plot", str(tmp_path)]) == cli.EXIT_MISSING_EXTRA
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "learned-dco[plots]" in err


def test_cache_info_and_clear(tmp_path, capsys):
    d = tmp_path / "c"
    (d / cache.STEPS_SUBDIR).mkdir(parents=True)
    (d / "jit_f-0123-cache").write_bytes(b"x" * 1000)
    (d / "jit_f-0123-atime").write_bytes(b"x" * 8)
    (d / cache.STEPS_SUBDIR / "abc.jaxexport").write_bytes(b"x" * 500)
    (d / "notes.txt").write_text("mine")  # not an entry: kept
    assert cli.main(["cache", "--compile-cache", str(d), "--compile-cache-max-size", "1G"]) == 0
    out = capsys.readouterr().out
    assert str(d) in out and "entries   2" in out and "(1508 bytes)" in out and "1.0 GiB" in out
    assert cli.main(["cache", "--compile-cache", str(d), "--clear", "--info"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 entries" in out and "entries   0" in out
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]


def test_sizes_parse_and_bad_sizes_are_named(monkeypatch, capsys):
    assert cache.parse_size("500M") == 500 * 1024**2 and cache.parse_size("1.5GiB") == 3 * 1024**3 // 2
    assert cache.parse_size("123") == 123 and cache.parse_size("unlimited") == cache.UNLIMITED
    assert cache.split(1000) == (800, 200) and cache.steps_budget(800) == 200
    monkeypatch.setenv(cache.MAX_SIZE_ENV, "3G")
    assert cache.max_size() == 3 * 1024**3 and cache.max_size("1M") == 1024**2
    assert cli.main(["cache", "--compile-cache-max-size", "lots"]) == cli.EXIT_CONFIG
    assert "--compile-cache-max-size: expected a size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be > 0"):
        cache.parse_size("0")


def test_prune_keeps_the_most_recently_used(tmp_path):
    import os

    for i, name in enumerate("abcd"):
        (tmp_path / name).write_bytes(b"x" * 100)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    os.utime(tmp_path / "a", (2000, 2000))  # read recently
    removed = cache.prune(tmp_path, 250)
    assert sorted(p.name for p in removed) == ["b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "d"]


def test_a_cache_written_without_a_limit_keeps_working_with_one(tmp_path):
    """Entries written with no size limit have no access stamp; JAX's size-limited cache reads
    every entry's stamp when it evicts, so without the stamps every later write fails."""
    from jax._src import lru_cache

    d = tmp_path / "c"
    d.mkdir()
    for i in range(3):
        (d / f"old{i}-cache").write_bytes(b"x" * 400)  # as JAX writes them with no limit
    cli.enable_compile_cache(d, max_size=cache.parse_size("1M"))
    assert all((d / f"old{i}-atime").exists() for i in range(3))
    lru = lru_cache.LRUCache(str(d), max_size=1000)
    lru.put("new", b"y" * 500)  # evicts the oldest entries, reading their stamps
    assert sorted(p.name for p in d.glob("*-cache")) == ["new-cache", "old2-cache"]
