"""Benchmark meta-training runs (finished or still running) on ``learned-dco bench``'s dev split.

Each ``NAME=RUN_DIR`` becomes a bench candidate: the run's optimizer with the meta-parameters
of its latest checkpoint (``meta.msgpack`` when the run has finished), told each problem's
budget, beside its untrained starting point. Design choices are made on ``--split dev`` only.

    python benchmarks/pretrain_candidates.py controller=runs/pretrain_prodigy_controller \\
        dcom_untrained=init:dcom_controller [--split dev] [--quick] [--out results/pretrain-dev]

(``init:NAME``: the registered optimizer NAME at its untrained starting point.)

Writes bench.json / bench.md / bench_profile.png to ``--out`` and a ``candidates.json`` naming
the meta-step of each candidate's weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from learned_dco.app.runs import load_trained
from learned_dco.bench import baselines as B

TEMPLATE = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}
"""Parameters to initialise a model-agnostic optimizer's meta-parameters with."""


def run_meta(run_dir: str | Path):
    """(learned optimizer, meta-parameters, meta-step) of a run directory: ``meta.msgpack`` if
    the run has finished, else its latest checkpoint's meta-parameters."""
    if str(run_dir).startswith("init:"):
        from learned_dco.optimizers import make_optimizer

        lopt = make_optimizer(str(run_dir)[len("init:"):])
        return lopt, lopt.init(jax.random.PRNGKey(0), TEMPLATE), 0
    trained = load_trained(run_dir, latest=True)
    return trained.lopt, trained.meta, trained.meta_step


def candidate(name: str, lopt, meta, with_start: bool = True) -> B.Candidate:
    """A bench candidate: ``lopt`` with ``meta`` told each problem's budget (with its untrained start)."""
    def make(steps):
        return dataclasses.replace(lopt, num_steps=int(steps)).opt_fn(meta)

    return B.Candidate(name, make, fingerprint=None, start=B.learned_start(name, lopt) if with_start else None)


def main(argv=None) -> int:
    from learned_dco import bench
    from learned_dco.bench import report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    ap.add_argument("--split", default="dev", choices=("dev", "test"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="results/pretrain-dev")
    ap.add_argument("--baselines", default=None,
                    help="comma-separated baseline rows to run (default: all; adam, the reference, is always run)")
    ap.add_argument("--no-starts", action="store_true",
                    help="no untrained-start rows (for designs whose start is a baseline row, e.g. prodigy)")
    ap.add_argument("--no-timing", action="store_true", help="skip the step-time measurement")
    args = ap.parse_args(argv)
    cands, steps = [], {}
    for spec in args.runs:
        name, _, run_dir = spec.partition("=")
        lopt, meta, step = run_meta(run_dir)
        cands.append(candidate(name, lopt, meta, with_start=not (args.no_starts or run_dir.startswith("init:"))))
        steps[name] = {"run_dir": run_dir, "meta_step": step}
    settings = bench.Settings.quick() if args.quick else bench.Settings()
    if args.no_timing:
        settings = dataclasses.replace(settings, timing=False)
    names = None if args.baselines is None else ["adam", *args.baselines.split(",")]
    result = bench.run(cands, split=args.split, settings=settings, baseline_names=names)
    summary = report.summarise(result)
    out = Path(args.out)
    report.write(summary, out)
    (out / "candidates.json").write_text(json.dumps(steps, indent=2) + "\n")
    print(report.markdown(summary).split("\n\n")[0:3])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
