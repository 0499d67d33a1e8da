"""The studies' learning-rate sweeps and evaluations over several processes.

A worker script runs the DCO study's baseline tuning (:func:`dco.experiments.tune_baselines`:
``meta.tune_learning_rate`` sweeps + ``meta.evaluate`` on task batches placed with
``distributed.shard_tasks``, curves brought back with ``distributed.to_host``) and the STAR
study's Adam sweep (:func:`star.tune_adam`, its own jitted step loop) as 2 processes x 1 CPU
device (gloo) and as 1 process x 1 device. Each task's randomness depends only on
``fold_in(key, global task index)``, so the layouts agree up to the order of the float32
mean over tasks (an all-reduce across processes instead of one sum): the tuned learning
rates must be equal and the per-task curves and sweep scores equal within rtol 1e-5
(what a wrong task-to-device mapping or key does is O(1e-2) and more).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_distributed import ROOT, finish, free_port

WORKER = """\
import json, sys
from learned_dco.meta import distributed

n, i, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if n > 1:
    distributed.initialize(f"localhost:{port}", n, i, init_timeout=120)
import jax
from learned_dco import tasks
from learned_dco.studies import star
from learned_dco.studies.dco import experiments as E

family = tasks.make_family("least_squares", num_samples=8, dim=4)
exp = E.Experiment("ls", family, num_train=8, num_test=8, eval_steps=4, grid=(1e-3, 1e-2, 1e-1, 0.5, 5.0))
k_train, k_test, k_tune, k_eval = jax.random.split(jax.random.PRNGKey(3), 4)
train = distributed.shard_tasks(tasks.sample_tasks(family, k_train, 8))
test = distributed.shard_tasks(tasks.sample_tasks(family, k_test, 8))
tuned, curves = E.tune_baselines(exp, train, test, k_tune, k_eval, log=lambda msg: None)
adam_lr, adam_scores = star.tune_adam(family, train, k_tune, num_steps=4, grid=(1e-3, 1e-1, 10.0))
local_rows = sum(s.data.shape[0] for s in jax.tree.leaves(test)[0].addressable_shards)
if distributed.is_primary():
    json.dump({"devices": jax.device_count(), "local_rows": local_rows, "tuned": tuned,
               "val": {k: c.val.tolist() for k, c in curves.items()},
               "adam_lr": adam_lr, "adam_scores": adam_scores}, open(out, "w"))
"""


def _run(tmp: Path, processes: int) -> dict:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    out = tmp / f"p{processes}.json"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}", LEARNED_DCO_COMPILE_CACHE="0",
               XLA_FLAGS="--xla_force_host_platform_device_count=1 " + os.environ["XLA_FLAGS"])
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(processes), str(i), port, str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
    for i, (code, _, err) in enumerate(finish(procs, timeout=240)):
        assert code == 0, f"process {i} of {processes}: exit {code}\n{err[-3000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_study_sweeps_on_two_processes_match_one(tmp_path):
    two, one = _run(tmp_path, 2), _run(tmp_path, 1)
    assert (two["devices"], two["local_rows"]) == (2, 4)  # really split: process 0 holds 4 of 8 tasks
    assert (one["devices"], one["local_rows"]) == (1, 8)
    assert two["tuned"] == one["tuned"]
    assert two["adam_lr"] == one["adam_lr"]
    np.testing.assert_allclose(two["adam_scores"], one["adam_scores"], rtol=1e-5)
    for name, val in one["val"].items():
        np.testing.assert_allclose(two["val"][name], val, rtol=1e-5, atol=1e-7)


def test_only_the_primary_writes_a_study(tmp_path, monkeypatch):
    """``write_study`` on a non-primary process returns the validated results, writes nothing."""
    from learned_dco.meta import distributed
    from learned_dco.studies import Claim, write_study

    claim = Claim("c", "a claim", 1.0, 1.0, "holds", "here", kind="sanity")
    kw = dict(study="s", paper="p", config={"quick": True, "seed": 0}, claims=[claim], seconds=1.0)
    monkeypatch.setattr(distributed, "is_primary", lambda: False)
    res = write_study(tmp_path / "other", **kw)
    assert res["claims"][0]["id"] == "c" and not (tmp_path / "other").exists()
    monkeypatch.setattr(distributed, "is_primary", lambda: True)
    write_study(tmp_path / "primary", **kw)
    assert sorted(p.name for p in (tmp_path / "primary").iterdir()) == ["report.md", "results.json"]
