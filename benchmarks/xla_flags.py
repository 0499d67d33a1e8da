"""XLA:CPU's fusion emitters on (XLA's default) and off, on what users run.

``--xla_cpu_use_fusion_emitters=false`` makes the test suite's programs compile about twice
as fast (tests/conftest.py). Whether the command line should set it depends on the workload,
so this measures it on each. XLA reads ``XLA_FLAGS`` once per process, so every measurement
is a fresh process, the two settings alternating (order swapped every round) ``--rounds``
times so a busy machine slows both alike. Both settings name the flag explicitly, so the
command line's own defaults (``learned_dco/app/xla.py``) do not interfere.

Workloads:

* ``pes_star`` / ``pes_blackbox`` -- ``MetaTrainer`` + ``PES`` on the 64-32-32-10 digits MLP
  (``benchmarks/pes_throughput.py``'s :func:`measure`, N = 8 tasks, T = 200, K = 50):
  ``seconds`` = the first two meta-steps (compilation), ``throughput`` = inner task-steps/s
  after them;
* ``train_dcom`` -- ``learned-dco train dcom_beverton_holt`` (DCOM, a QP per
  inner step; 8 meta-steps, no compilation cache): ``seconds`` = the first meta-step
  (``metrics.jsonl``), ``throughput`` = meta-steps/s over the others;
* ``reproduce_quick`` -- ``learned-dco reproduce dco --quick`` (the README's main command;
  the CLI adds XLA optimisation level 0 itself in both settings, as neither names it):
  ``seconds`` = the whole process.

Ratios: ``seconds`` on / off (above 1: faster with the emitters off) and ``throughput``
off / on. Writes benchmarks/results/xla_flags.json (``--out DIR`` elsewhere) with the device,
so it runs unchanged on a GPU (where this CPU-only flag should change nothing).

    python -m benchmarks.xla_flags [--rounds 3] [--workloads pes_star train_dcom]
    python -m benchmarks.xla_flags --smoke --out DIR   # train_dcom, 2 meta-steps, one round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_json  # noqa: E402

WORKLOADS = ("pes_star", "pes_blackbox", "train_dcom", "reproduce_quick")
FLAG = "xla_cpu_use_fusion_emitters"
SETTINGS = {"emitters_on": f"--{FLAG}=true", "emitters_off": f"--{FLAG}=false"}


def _flags(user: str, setting: str) -> str:
    """The user's ``XLA_FLAGS`` without ``FLAG``, then the setting's value."""
    return " ".join([*(f for f in user.split() if f.lstrip("-").split("=", 1)[0] != FLAG), SETTINGS[setting]])


def _run(cmd: list[str], flags: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags,
                              "LEARNED_DCO_COMPILE_CACHE": "0"})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return out, time.perf_counter() - start


def _pes(optimizer: str, flags: str, smoke: bool) -> dict:
    n, horizon, truncation, steps = (2, 20, 10, 2) if smoke else (8, 200, 50, 10)
    code = ("import json; from benchmarks.pes_throughput import measure; "
            f"print('RESULT', json.dumps(measure({optimizer!r}, {n}, {horizon}, {truncation}, 2, {steps})))")
    out, _ = _run([sys.executable, "-c", code], flags)
    res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
    return {"seconds": res["first_steps_s"], "throughput": res["task_steps_per_s"]}


def _train(flags: str, smoke: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        _run([sys.executable, "-m", "learned_dco.app.cli", "train", str(ROOT / "learned_dco/configs/dcom_beverton_holt.yaml"),
              "--out", str(run), "--no-progress", "--set", f"train.num_steps={2 if smoke else 8}",
              "--set", "train.checkpoint_every=0"], flags)
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rows if "seconds" in r]
    return {"seconds": seconds[0], "throughput": 1.0 / statistics.median(seconds[1:])}


def _reproduce(flags: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        _, wall = _run([sys.executable, "-m", "learned_dco.app.cli", "reproduce", "dco", "--quick",
                        "--out", str(Path(tmp) / "dco")], flags)
    return {"seconds": wall, "throughput": None}


def measure(workload: str, setting: str, smoke: bool) -> dict:
    user = os.environ.get("XLA_FLAGS", "")
    if workload == "reproduce_quick":
        return _reproduce(_flags(user, setting))
    if workload == "train_dcom":
        return _train(_flags(user, setting), smoke)
    return _pes(workload.split("_", 1)[1], _flags(user, setting), smoke)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="train_dcom only, 2 meta-steps, one round (no claims)")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.workloads, args.rounds = ["train_dcom"], 1
    runs = {w: {s: [] for s in SETTINGS} for w in args.workloads}
    for r in range(args.rounds):
        for w in args.workloads:
            for s in (list(SETTINGS) if r % 2 == 0 else list(SETTINGS)[::-1]):
                res = runs[w][s]
                res.append(measure(w, s, args.smoke))
                tp = res[-1]["throughput"]
                print(f"round {r} {w:15s} {s:12s} {res[-1]['seconds']:7.2f} s"
                      + (f"  throughput {tp:8.1f}/s" if tp is not None else ""), flush=True)
    summary = {}
    for w, by in runs.items():
        med = {s: {k: (statistics.median(x[k] for x in v) if v[0][k] is not None else None)
                   for k in ("seconds", "throughput")} for s, v in by.items()}
        on, off = med["emitters_on"], med["emitters_off"]
        summary[w] = {"median": med, "seconds_on_over_off": on["seconds"] / off["seconds"],
                      "throughput_off_over_on": (off["throughput"] / on["throughput"]
                                                 if on["throughput"] is not None else None)}
        tp = summary[w]["throughput_off_over_on"]
        print(f"{w:15s} seconds on/off {summary[w]['seconds_on_over_off']:.2f}x"
              + (f", throughput off/on {tp:.2f}x" if tp is not None else ""))
    name = "xla_flags_smoke" if args.smoke else "xla_flags"
    result = {"config": {"rounds": args.rounds, "smoke": args.smoke, "settings": SETTINGS,
                         "user_xla_flags": os.environ.get("XLA_FLAGS", "")},
              "summary": summary, "runs": runs}
    print(f"wrote {write_json(name, result, args.out)}")
    return result


if __name__ == "__main__":
    main()
