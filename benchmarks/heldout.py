"""Retired: the held-out benchmark is ``learned-dco bench`` (``learned_dco.bench``, docs/bench.md).

This module forwards to it: ``python -m benchmarks.heldout [OPTIMIZER ...] [--split ...]
[--quick] [--seeds N] [--out DIR]`` is ``learned-dco bench`` with the same arguments.
``--smoke`` (for tests/test_benchmarks_smoke.py) runs the benchmark's code path on two small
dev problems at tiny budgets, tuned Adam only, and writes ``heldout_smoke.{json,md}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import RESULTS


def smoke(out: Path) -> dict:
    from learned_dco import bench
    from learned_dco.bench import problems as P

    probs = [P.by_name("iris_softmax").with_steps(20), P.by_name("deep_linear_4").with_steps(20)]
    settings = bench.Settings(seeds=(0, 1), tuning_seeds=(9,), grid=bench.GRID[::4], long_factor=2, timing=False)
    result = bench.run(["prodigy"], problems=probs, settings=settings, cache_dir=None, baseline_names=["adam"])
    summary = bench.summarise(result, reps=200)
    bench.write(summary, out, stem="heldout_smoke")
    return summary


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else RESULTS
        smoke(out)
        return 0
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        print("options: --smoke, --out DIR, and every option of `learned-dco bench` (see learned-dco bench --help)")
        return 0
    from learned_dco.app.cli import main as cli

    return cli(["bench", *argv])


if __name__ == "__main__":
    sys.exit(main())
