"""The CLI's persistent compilation cache: a second run of the same config against the first.

For each config, three fresh ``learned-dco train`` processes run in turn, ``--repeats``
rounds interleaved:

* ``off``   -- ``--no-compile-cache`` (what every run paid before the cache),
* ``cold``  -- the cache on, in an empty directory (the first run: traces, exports the
  meta-step, compiles and writes),
* ``warm``  -- the same config again with that cache (the second run: loads the stored
  meta-step, ``learned_dco/app/stepcache.py``, and its compiled program).

Reported per config: the first meta-step's seconds (``metrics.jsonl`` step 0: its
``seconds`` include compiling the meta-step) and the wall time of the whole process, as
medians, with the ratios ``off / warm`` and ``cold / warm``. Writes
benchmarks/results/compile_cache.json.

    python benchmarks/compile_cache.py            # quick_demo + dcom_beverton_holt, 2 rounds
    python -m benchmarks.compile_cache --smoke --out DIR   # quick_demo, 1 round, 1 meta-step

``--smoke`` checks that the benchmark runs (one config, one round, one meta-step); its
ratios are not claims. ``--out DIR`` writes the JSON there instead of benchmarks/results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

CONFIGS = {
    "quick_demo": ("learned_dco/configs/quick_demo.yaml", ["train.num_steps=3", "train.checkpoint_every=0"]),
    "dcom_beverton_holt": ("learned_dco/configs/dcom_beverton_holt.yaml", [
        "train.num_steps=3", "train.checkpoint_every=0", "estimator.num_tasks=4", "train.num_train_tasks=8"]),
}


def one_run(config: str, sets: list[str], workdir: Path, cache: Path | None) -> dict:
    out = Path(tempfile.mkdtemp(dir=workdir))
    shutil.rmtree(out)
    cmd = [sys.executable, "-m", "learned_dco.app.cli", "train", str(ROOT / config), "--out", str(out), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    cmd += ["--compile-cache", str(cache)] if cache is not None else ["--no-compile-cache"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LEARNED_DCO_COMPILE_CACHE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return {"first_step_s": first["seconds"], "wall_s": wall}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--smoke", action="store_true", help="quick_demo, one round, one meta-step (no timing claims)")
    parser.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = parser.parse_args(argv)
    configs = dict(CONFIGS)
    if args.smoke:
        args.repeats, args.configs = 1, ["quick_demo"]
        configs["quick_demo"] = (CONFIGS["quick_demo"][0], ["train.num_steps=1", "train.checkpoint_every=0"])
    out_dir = Path(args.out) if args.out else RESULTS
    sys.path.insert(0, str(ROOT))
    from learned_dco.io import atomic_write_json, environment

    results = {"configs": {}, **environment(), "repeats": args.repeats, "smoke": args.smoke,
               "xla_flags": os.environ.get("XLA_FLAGS", "")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.configs:
            config, sets = configs[name]
            runs = {"off": [], "cold": [], "warm": []}
            for r in range(args.repeats):
                cache = tmp / f"cache-{name}-{r}"
                runs["off"].append(one_run(config, sets, tmp, None))
                runs["cold"].append(one_run(config, sets, tmp, cache))
                runs["warm"].append(one_run(config, sets, tmp, cache))
            med = {k: {m: statistics.median(x[m] for x in v) for m in ("first_step_s", "wall_s")} for k, v in runs.items()}
            results["configs"][name] = {
                "runs": runs, "median": med,
                "first_step_off_over_warm": med["off"]["first_step_s"] / med["warm"]["first_step_s"],
                "first_step_cold_over_warm": med["cold"]["first_step_s"] / med["warm"]["first_step_s"],
                "wall_off_over_warm": med["off"]["wall_s"] / med["warm"]["wall_s"],
            }
    print(f"{'config':<20} {'first step off':>15} {'cold':>8} {'warm':>8} {'off/warm':>9} "
          f"{'wall off':>9} {'warm':>7} {'off/warm':>9}")
    for name, r in results["configs"].items():
        m = r["median"]
        print(f"{name:<20} {m['off']['first_step_s']:>14.2f}s {m['cold']['first_step_s']:>7.2f}s "
              f"{m['warm']['first_step_s']:>7.2f}s {r['first_step_off_over_warm']:>8.1f}x "
              f"{m['off']['wall_s']:>8.1f}s {m['warm']['wall_s']:>6.1f}s {r['wall_off_over_warm']:>8.1f}x")
    atomic_write_json(out_dir / "compile_cache.json", results)
    print(f"wrote {out_dir / 'compile_cache.json'}")
    return results


if __name__ == "__main__":
    main()
