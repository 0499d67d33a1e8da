"""Peak memory of one meta-step against the horizon T: full unroll vs truncated estimators.

For a small MLP task (smooth interpolation, DCO Sec. VI-D: a 1-10-10-1 tanh network on 500
points) meta-trained with DCOG on 8 fresh tasks per meta-step, we compile the trainer's
jitted meta-step for each estimator and horizon T and read XLA's buffer assignment
(``jax.jit(...).lower(...).compile().memory_analysis()``):

* ``xla_total_mb`` = arguments + outputs + temporaries - aliased bytes: what one meta-step
  needs resident at its peak (temporaries are where the stored backward-pass residuals live);
* ``temp_mb`` = the temporaries alone.

With ``--rss`` (default in full mode) each configuration also runs in its own process, takes
two meta-steps and reports the process's peak resident set size (``ru_maxrss``), next to a
baseline process that imports and builds everything but runs no meta-step.

Estimators: ``FullUnroll`` (backprop through all T steps: memory grows linearly in T),
``FullUnroll(remat=True)`` (each inner step under ``jax.checkpoint``: stores only the carry
per step, so it grows with a much smaller slope), ``TruncatedBPTT`` and ``PES`` with a fixed
truncation K = 10 (each meta-step unrolls K steps whatever T is: flat in T). The script
checks these expectations and prints the verdicts.

    python -m benchmarks.meta_memory [--quick] [--horizons 10 25 50 100 200 400] [--no-rss]

Compiling each meta-step takes 10-30 s of CPU here (the full run is ~10 minutes); ``--quick``
compiles four (full unroll and PES at T = 10 and 50).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import table, write_json

TRUNCATION = 10
NUM_TASKS = 8
ESTIMATORS = ("full", "full_remat", "truncated", "pes")
MB = 2.0**20


def _trainer(estimator: str, horizon: int):
    import learned_dco as ldco
    from learned_dco import meta, tasks

    family = tasks.SmoothInterpolation()  # 1-10-10-1 tanh MLP, 500 training points
    common = dict(horizon=horizon, num_tasks=NUM_TASKS, meta_loss="mean_train")
    est = {
        "full": lambda: meta.FullUnroll(**common),
        "full_remat": lambda: meta.FullUnroll(remat=True, **common),
        "truncated": lambda: meta.TruncatedBPTT(truncation=min(TRUNCATION, horizon), **common),
        "pes": lambda: meta.PES(truncation=min(TRUNCATION, horizon), **common),
    }[estimator]()
    lopt = ldco.DCOG(learning_rate=0.01, normalize=True)
    return meta.MetaTrainer(lopt, family, est, meta.rmsprop_pytorch(0.01))


def measure(estimator: str, horizon: int, run_steps: int = 0) -> dict:
    """XLA memory analysis of one meta-step (and peak RSS after ``run_steps`` steps)."""
    import jax

    trainer = _trainer(estimator, horizon)
    state = trainer.init(jax.random.PRNGKey(0))
    compiled = trainer._step.lower(state, trainer.pool).compile()
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    row = {
        "estimator": estimator, "T": horizon, "K": TRUNCATION if estimator in ("truncated", "pes") else horizon,
        "xla_total_mb": total / MB, "temp_mb": m.temp_size_in_bytes / MB,
        "argument_mb": m.argument_size_in_bytes / MB, "output_mb": m.output_size_in_bytes / MB,
    }
    for _ in range(run_steps):
        state, metrics = compiled(state, trainer.pool)
        jax.block_until_ready(state)
        row["meta_loss"] = float(metrics.meta_loss)
    if run_steps:
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return row


def _baseline_rss() -> float:
    """Peak RSS of a process that builds and initialises a trainer but runs no meta-step."""
    import jax

    trainer = _trainer("full", 10)
    jax.block_until_ready(trainer.init(jax.random.PRNGKey(0)))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _in_child(args: list[str]) -> dict:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.meta_memory", "--child", *args],
        capture_output=True, text=True, cwd=root, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _slope(rows, estimator) -> float:
    pts = sorted((r["T"], r["temp_mb"]) for r in rows if r["estimator"] == estimator)
    t, mb = np.array(pts, dtype=float).T
    return float(np.polyfit(t, mb, 1)[0]) if len(t) > 1 else float("nan")


def verdicts(rows: list[dict]) -> dict:
    """The expected shapes: truncated flat, full growing, remat growing more slowly."""
    out = {}
    present = {r["estimator"] for r in rows}
    for est in ("truncated", "pes"):
        if est in present:
            totals = [r["xla_total_mb"] for r in rows if r["estimator"] == est and r["T"] >= TRUNCATION]
            out[f"{est}_flat_in_T"] = bool(max(totals) <= 1.05 * min(totals))
    full = sorted((r["T"], r["xla_total_mb"]) for r in rows if r["estimator"] == "full")
    out["full_grows_with_T"] = bool(full[-1][1] > 1.5 * full[0][1])
    out["full_mb_per_step"] = _slope(rows, "full")
    out["full_mb_per_task_step"] = out["full_mb_per_step"] / NUM_TASKS
    if "full_remat" in present:
        out["full_remat_mb_per_step"] = _slope(rows, "full_remat")
        out["remat_grows_slower"] = bool(out["full_remat_mb_per_step"] < 0.5 * out["full_mb_per_step"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--horizons", type=int, nargs="+", default=[10, 25, 50, 100, 200, 400])
    ap.add_argument("--no-rss", action="store_true", help="skip the per-process peak-RSS runs")
    ap.add_argument("--quick", action="store_true", help="full unroll and PES at T = 10 and 50, XLA analysis only")
    ap.add_argument("--smoke", action="store_true",
                    help="full unroll and PES at T = 10 and 20, XLA analysis only: checks that it runs")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:  # one measurement in a fresh process: print it as a JSON line
        row = {"baseline_rss_mb": _baseline_rss()} if args.child[0] == "baseline" else measure(
            args.child[0], int(args.child[1]), run_steps=2
        )
        print(json.dumps(row))
        return

    horizons = [TRUNCATION, 2 * TRUNCATION] if args.smoke else [10, 50] if args.quick else args.horizons
    estimators = ("full", "pes") if args.quick or args.smoke else ESTIMATORS
    rss = not (args.no_rss or args.quick or args.smoke)
    rows = []
    baseline = _in_child(["baseline"])["baseline_rss_mb"] if rss else None
    for est in estimators:
        for horizon in horizons:
            row = _in_child([est, str(horizon)]) if rss else measure(est, horizon)
            if rss:
                row["rss_over_baseline_mb"] = row["peak_rss_mb"] - baseline
            rows.append(row)
            extra = f", peak RSS {row['peak_rss_mb']:.0f} MB" if rss else ""
            print(f"{est:10s} T={horizon:4d}: XLA {row['xla_total_mb']:8.2f} MB (temp {row['temp_mb']:8.2f}){extra}", flush=True)
    checks = verdicts(rows)
    cols = ["estimator", "T", "K", "xla_total_mb", "temp_mb", "argument_mb", "output_mb"]
    if rss:
        cols += ["peak_rss_mb", "rss_over_baseline_mb"]
    print()
    print(table(rows, cols))
    print()
    for k, v in checks.items():
        print(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}")
    payload = {
        "task": "smooth_interpolation (1-10-10-1 tanh MLP, 500 points)", "optimizer": "dcog (normalize)",
        "smoke": args.smoke, "num_tasks": NUM_TASKS, "truncation": TRUNCATION, "baseline_rss_mb": baseline, "rows": rows, "checks": checks,
    }
    path = write_json("meta_memory", payload, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
