"""Every benchmark runs at tiny size (``python -m benchmarks.NAME --smoke``), so none can rot.

Each benchmark must accept ``--smoke`` (a few steps, smallest sizes, no timing claims; it
must finish in well under a minute on 2 CPU cores) and ``--out DIR`` (where its JSON goes,
so the smoke run never overwrites ``benchmarks/results``). The run must exit 0 and write at
least one JSON file into DIR. Compilation dominates, so these are ``slow``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(
    p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in {"__init__", "common"}
)


def test_benchmarks_hold_speed_and_memory_only():
    """The paper studies live in learned_dco.studies; benchmarks/ holds measurements."""
    assert {"heldout", "meta_floor", "qp_step", "lopt_update"} <= set(BENCHMARKS)
    assert not {"star", "star_nqm", "metamd", "ml2o", "stepsize_l2l", "dco_oracle"} & set(BENCHMARKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke(name, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=os.environ.get("XLA_FLAGS", "--xla_backend_optimization_level=0"))
    usage = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0, usage.stderr[-2000:]
    for flag in ("--smoke", "--out"):
        assert flag in usage.stdout, f"benchmarks/{name}.py must accept {flag} (see this module's docstring)"
    run = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--smoke", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"benchmarks.{name} --smoke failed:\n{run.stderr[-3000:]}"
    written = list(tmp_path.glob("*.json"))
    assert written, f"benchmarks.{name} --smoke wrote no JSON into --out"
    for path in written:
        json.loads(path.read_text())


def test_lopt_update_difference_reports_a_nan_in_any_tensor():
    """The fused-vs-materialised difference is ``nan`` when any tensor holds one (Python's
    ``max`` keeps a ``nan`` only when it comes first), 0 for tensors that are zero on both
    paths (not 0/0), and max |a - b| / max |b| otherwise."""
    import numpy as np

    from benchmarks.lopt_update import _max_rel_diff

    ref = [np.ones(3), np.zeros(2)]
    assert _max_rel_diff([np.ones(3), np.zeros(2)], ref) == 0.0
    assert _max_rel_diff([np.array([1.0, 1.0, 1.5]), np.zeros(2)], ref) == 0.5
    assert np.isnan(_max_rel_diff([np.ones(3), np.array([0.0, np.nan])], ref))
    assert np.isnan(_max_rel_diff([np.ones(3), np.zeros(2)], [np.ones(3), np.array([np.inf, 0.0])]))
