"""MetaMD vs a dense DCOGD of the same MLP: time per inner step and per meta-gradient.

The MetaMD *study* (``learned-dco reproduce metamd``) records meta-parameter counts and
compiled memory; this benchmark adds interleaved median times (one inner step, and one
meta-gradient through K = 5 steps) for the widths where the dense B fits comfortably.

    python -m benchmarks.metamd_cost [--widths 16 32 64] [--smoke] [--out DIR]

Writes ``benchmarks/results/metamd_cost.json`` (or into ``--out DIR``). ``--smoke``: one
width of 8 and three timing rounds, to check the benchmark runs (no timing claims).
"""

from __future__ import annotations

import os

# OpenBLAS's threads (behind jax's CPU LAPACK calls: the Kronecker/Cholesky solves) spin
# against each other on a small shared CPU (a 64x64 triangular solve took ~12 ms instead of
# ~20 us), so this benchmark runs with one OpenBLAS thread (set before numpy loads it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import functools  # noqa: E402

import jax  # noqa: E402

import learned_dco as ldco  # noqa: E402
from benchmarks.common import interleaved_medians, table, write_json  # noqa: E402
from learned_dco import tasks  # noqa: E402
from learned_dco.studies.metamd import step_fns, cost  # noqa: E402


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64], help="hidden width of a 64-w-10 MLP")
    ap.add_argument("--smoke", action="store_true", help="width 8, three rounds: checks that it runs (no timing claims)")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    repeats, budget = (3, 2.0) if args.smoke else (15, 20.0)
    if args.smoke:
        args.widths = [8]
    rows = cost([[w] for w in args.widths])
    for w in args.widths:
        family = tasks.DigitsMLP(hidden=(w,))
        key = jax.random.PRNGKey(0)
        task = family.sample(key)
        params = family.init_params(key, task)
        calls = {}
        for name, lopt in (("metamd", ldco.MetaMD(learning_rate=0.1)), ("dcogd", ldco.DCOGD(learning_rate=0.1))):
            step, metagrad = step_fns(lopt, family, task, 5)
            meta = lopt.init(key, params)
            calls[f"{name}/step"] = functools.partial(step, meta, params, key)
            calls[f"{name}/meta_grad"] = functools.partial(metagrad, meta, params, key)
        timed = interleaved_medians(calls, repeats=repeats, budget_s=budget)
        for row in rows:
            if row["hidden"] == [w]:
                row["step_ms"] = 1e3 * timed[f"{row['optimizer']}/step"]
                row["meta_grad_ms"] = 1e3 * timed[f"{row['optimizer']}/meta_grad"]
                row["meta_grad_ratio_vs_metamd"] = timed[f"{row['optimizer']}/meta_grad"] / timed["metamd/meta_grad"]
    print(table(rows, ["hidden", "params", "optimizer", "meta_params", "meta_grad_temp_MB", "step_ms", "meta_grad_ms",
                       "meta_grad_ratio_vs_metamd"]))
    path = write_json("metamd_cost", {"smoke": args.smoke, "rows": rows}, args.out)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
