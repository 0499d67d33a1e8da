"""Fault injection: ``kill -9`` the CLI at random moments, resume until done, and compare
``meta.msgpack`` byte for byte (and the metrics) with an uninterrupted run.

The kill times are drawn uniformly over the length of an uninterrupted run (process start
included), so kills land in start-up, compilation, meta-steps, metrics appends and
checkpoint writes alike. Every restart runs ``learned-dco train --resume`` once the run
directory holds a config (a fresh start before that), sharing one compilation cache so a
restart costs start-up only.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "seed": 0,
    "optimizer": {"name": "dcog", "learning_rate": 0.02},
    "task": {"name": "least_squares", "num_samples": 8, "dim": 4, "init_scale": 1.0},
    "estimator": {"name": "truncated", "horizon": 4, "truncation": 2, "num_tasks": 2, "meta_loss": "mean_train"},
    "meta_optimizer": {"name": "adam", "learning_rate": 0.05},
    "train": {"num_steps": 150, "num_train_tasks": 5, "checkpoint_every": 7},
}


def _cli(args, cache: Path) -> list[str]:
    return [sys.executable, "-m", "learned_dco.app.cli", *map(str, args), "--no-progress", "--compile-cache", str(cache)]


def _env(tmp: Path) -> dict:
    return {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp),
            "XLA_FLAGS": os.environ["XLA_FLAGS"], "JAX_PLATFORMS": "cpu"}


def _metrics(run: Path) -> list[tuple]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["meta_loss"], r["grad_norm"]) for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run (which also fills the shared compilation cache)."""
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    cache = tmp / "cache"
    t0 = time.perf_counter()
    subprocess.run(_cli(["train", tmp / "c.yaml", "--out", tmp / "ref"], cache), env=_env(tmp), check=True,
                   capture_output=True, timeout=600)
    # Kill times are drawn over the length of a cached run: start-up plus the training
    # (the reference also compiled, which a cached run skips; about half of its length).
    seconds = 0.6 * (time.perf_counter() - t0)
    print(f"reference run: {seconds / 0.6:.1f} s")
    return tmp, cache, seconds


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _killed_until_done(tmp: Path, cache: Path, run: Path, seconds: float, rng: random.Random, max_kills: int):
    """Restart until a run finishes; up to ``max_kills`` attempts are killed with SIGKILL,
    the first a random 1-40 meta-steps into training plus a random delay within a step, later
    ones either at a uniform time in the run's length (start-up, compilation...) or a random
    1-40 meta-steps into training plus a random delay within a step (appends, checkpoints)."""
    kills, moments = 0, []
    while True:
        resume = (run / "config.yaml").exists()
        args = ["train", "--resume", run] if resume else ["train", tmp / "c.yaml", "--out", run]
        proc = subprocess.Popen(_cli(args, cache), env=_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < max_kills:
            if kills and rng.random() < 0.3:  # the first kill always lands in training
                deadline, target = time.perf_counter() + rng.uniform(0.0, seconds), None
            else:
                deadline, target = None, _lines(run / "metrics.jsonl") + rng.randint(1, 40)
            while proc.poll() is None:
                if (deadline is not None and time.perf_counter() >= deadline) or (
                    target is not None and _lines(run / "metrics.jsonl") >= target
                ):
                    if target is not None:
                        time.sleep(rng.uniform(0.0, 0.05))
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
            proc.wait()
            if proc.returncode == -signal.SIGKILL:
                kills += 1
                moments.append(f"after {_lines(run / 'metrics.jsonl')} metrics lines")
                continue
        else:
            proc.wait(timeout=600)
        err = proc.stderr.read().decode()
        assert proc.returncode == 0, err
        print(f"{kills} kills: {moments}")
        return kills


def _trial(reference, tmp_name: str, seed: int, max_kills: int) -> int:
    tmp, cache, seconds = reference
    rng = random.Random(seed)
    run = tmp / tmp_name
    kills = _killed_until_done(tmp, cache, run, seconds, rng, max_kills)
    ref = tmp / "ref"
    assert (run / "meta.msgpack").read_bytes() == (ref / "meta.msgpack").read_bytes()
    assert _metrics(run) == _metrics(ref)
    assert [s for s, *_ in _metrics(run)] == list(range(CONFIG["train"]["num_steps"]))
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left
    return kills


@pytest.mark.integration
def test_kill_9_at_random_moments_then_resume_gives_the_same_bytes(reference):
    kills = _trial(reference, "trial-quick", seed=1, max_kills=2)
    assert kills >= 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 8))
def test_kill_9_many_trials(reference, seed):
    _trial(reference, f"trial-{seed}", seed=seed, max_kills=8)
