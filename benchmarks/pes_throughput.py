"""PES meta-training throughput of STAR (or Blackbox) on the digits MLP, this tree against
another revision of the library, in alternating processes.

What a user running PES meta-training gets by default: ``MetaTrainer`` + ``PES`` with the
learned optimizer's default options, 64-32-32-10 digits MLP (batch 64), horizon T = 200,
truncation K = 50, N tasks, sigma 0.01, Adam meta-optimizer. One process builds the
trainer, compiles and runs ``--warmup`` meta-steps, then times ``--steps`` meta-steps and
prints inner task-steps per second (N * K per meta-step, both antithetic trajectories
counted once).

``--against REV`` checks REV out into a temporary ``git worktree`` and runs the same
measurement there (the API used is common to both), ``--rounds`` times, alternating
``current`` and ``REV`` processes so a busy machine slows both alike; medians and the ratio
current / REV are printed and written as JSON (``benchmarks/results/pes_throughput.json``).

    python -m benchmarks.pes_throughput --against 7812b3d --tasks 8 --rounds 3
    python -m benchmarks.pes_throughput --smoke --out DIR      # this tree only, tiny

The recorded comparison (``benchmarks/results/pes_throughput.json``) is against 7812b3d.
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
RESULTS = ROOT / "benchmarks" / "results"


def measure(optimizer: str, num_tasks: int, horizon: int, truncation: int, warmup: int, steps: int) -> dict:
    """Task-steps per second of the library importable from ``sys.path`` (run in a child)."""
    import jax
    import optax

    import learned_dco as ldco
    from learned_dco import meta, tasks

    lopt = {"star": ldco.STAR, "blackbox": ldco.Blackbox}[optimizer]()
    family = tasks.DigitsMLP(hidden=(32, 32), batch_size=64)
    est = meta.PES(horizon=horizon, truncation=truncation, num_tasks=num_tasks, sigma=0.01)
    trainer = meta.MetaTrainer(lopt, family, est, meta_optimizer=optax.adam(1e-3))
    t0 = time.perf_counter()
    state = trainer.init(jax.random.PRNGKey(0))
    for _ in range(warmup):
        state, metrics = trainer.step(state)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.step(state)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    return {"task_steps_per_s": num_tasks * truncation * steps / seconds, "seconds": seconds,
            "first_steps_s": compile_s, "jax": jax.__version__}


def _child(tree: Path, args) -> dict:
    # run_path: this file's measure() with the library of `tree` (an older tree may have its
    # own benchmarks/ package without this module)
    code = (f"import json, runpy; measure = runpy.run_path({str(Path(__file__).resolve())!r})['measure']; "
            f"print('RESULT', json.dumps(measure({args.optimizer!r}, {args.n}, {args.horizon}, {args.truncation}, "
            f"{args.warmup}, {args.steps})))")
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the library from `tree`
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree, timeout=3600)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default=None, help="git revision to compare with (default: this tree only)")
    ap.add_argument("--optimizer", default="star", choices=["star", "blackbox"])
    ap.add_argument("--tasks", dest="n", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--truncation", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="this tree, N = 2, T = 20, K = 10, one round")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.against, args.n, args.horizon, args.truncation, args.warmup, args.steps, args.rounds = None, 2, 20, 10, 1, 2, 1
    trees = {"current": ROOT}
    tmp = None
    if args.against:
        tmp = Path(tempfile.mkdtemp(prefix="pes-ref-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp / "ref"), args.against],
                       check=True, capture_output=True)
        trees[args.against] = tmp / "ref"
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    try:
        for r in range(args.rounds):
            for name, tree in trees.items():
                res = _child(tree, args)
                runs[name].append(res)
                print(f"round {r} {name}: {res['task_steps_per_s']:.0f} task-steps/s (first {args.warmup} steps {res['first_steps_s']:.1f} s)", flush=True)
    finally:
        if tmp is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "ref")], capture_output=True)
    med = {k: statistics.median(x["task_steps_per_s"] for x in v) for k, v in runs.items()}
    result = {"benchmark": "pes_throughput", "config": {k: v for k, v in vars(args).items() if k != "out"},
              "median_task_steps_per_s": med, "runs": runs}
    if args.against:
        result["ratio_current_over_ref"] = med["current"] / med[args.against]
        print(f"median task-steps/s: current {med['current']:.0f}, {args.against} {med[args.against]:.0f}, "
              f"ratio {result['ratio_current_over_ref']:.2f}")
    from learned_dco.io import atomic_write_json

    out = Path(args.out) if args.out else RESULTS
    path = atomic_write_json(out / ("pes_throughput_smoke.json" if args.smoke else "pes_throughput.json"), result,
                             indent=2)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
