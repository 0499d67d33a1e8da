"""The ``learned-dco`` command line.

    learned-dco train CONFIG.yaml [--set KEY=VALUE ...] [--out DIR] [--no-progress]
    learned-dco train --resume RUN_DIR [--set train.num_steps=N]
    learned-dco eval RUN_DIR [--num-tasks N] [--num-steps T] [--seed S]
    learned-dco reproduce [--quick] [--out DIR] [--seed S]

Subcommands live in :data:`COMMANDS`, a mapping from name to a *registrar*: a function
that receives the ``argparse`` subparsers object, adds its parser (with help texts) and
sets ``handler`` -- a function of the parsed arguments returning an exit status. To add a
command, write its registrar in its own module and add one entry to :data:`COMMANDS`.
Handlers import what they need when they run.

Exit status: 0 on success, 2 for configuration and usage errors (the message names the
offending key), 130 when interrupted (the last checkpoint can be resumed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

Registrar = Callable[["argparse._SubParsersAction"], argparse.ArgumentParser]


# --------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------

TRAIN_HELP = """\
Meta-train a learned optimizer described by a YAML config (see configs/ and the README).

The run directory receives config.yaml (the validated config), metrics.jsonl (one JSON
line per meta-step), checkpoint.msgpack (every train.checkpoint_every steps and at the
end) and meta.msgpack (the trained meta-parameters; load them in Python with
learned_dco.experiment.load_trained(RUN_DIR)).

examples:
  learned-dco train configs/quick_demo.yaml
  learned-dco train configs/dcog_least_squares.yaml --set estimator.num_tasks=50 --set seed=3
  learned-dco train --resume runs/quick_demo-20250101-120000 --set train.num_steps=60
"""


def add_train(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="meta-train a learned optimizer from a YAML config",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="run config (optional with --resume)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value by its dotted key, VALUE parsed as YAML "
        "(e.g. --set estimator.horizon=10 --set eval.baselines=[sgd,adam]); repeatable",
    )
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<config name>-<date>-<time>)")
    p.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its checkpoint up to train.num_steps; the saved "
        "config is used (a CONFIG given too must match it except train.num_steps/checkpoint_every)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics still go to metrics.jsonl)")
    p.set_defaults(handler=run_train)
    return p


def default_run_dir(config_path: str | Path, root: str | Path = "runs") -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>`` (with a numeric suffix if taken)."""
    base = Path(root) / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def run_train(args: argparse.Namespace) -> int:
    from learned_dco import config as C
    from learned_dco import experiment

    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise C.ConfigError("--out: cannot be combined with --resume (the run continues in its own directory)")
        saved = experiment.saved_config(run_dir)
        cfg = C.load_config(args.config, args.overrides) if args.config else experiment.saved_config(
            run_dir, args.overrides
        )
        experiment.check_resumable(saved, cfg)
    else:
        if not args.config:
            raise C.ConfigError("train: give a CONFIG.yaml (or --resume RUN_DIR)")
        cfg = C.load_config(args.config, args.overrides)
        run_dir = Path(args.out) if args.out else default_run_dir(args.config)
        if experiment.has_run(run_dir):
            raise C.ConfigError(f"--out: {run_dir} already holds a run; pick another directory or --resume it")

    print(f"{'resuming' if args.resume else 'meta-training'} {cfg.optimizer.name} on {cfg.task.name} "
          f"with {cfg.estimator.name} in {run_dir}", flush=True)
    try:
        state = experiment.train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: learned-dco train --resume {run_dir}", file=sys.stderr)
        return 130
    print(
        f"done: {int(state.step)} meta-steps ({int(state.skipped)} skipped updates)\n"
        f"  config        {run_dir / 'config.yaml'}\n"
        f"  metrics       {run_dir / 'metrics.jsonl'}\n"
        f"  checkpoint    {run_dir / 'checkpoint.msgpack'}\n"
        f"  meta-params   {run_dir / 'meta.msgpack'}  (learned_dco.experiment.load_trained)\n"
        f"evaluate with: learned-dco eval {run_dir}"
    )
    return 0


# --------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------

EVAL_HELP = """\
Evaluate a trained learned optimizer on fresh held-out tasks next to optax baselines.

Each baseline's learning rate is tuned by a vmapped grid sweep on the training tasks (the
run's pool, or fresh training-distribution tasks without one); then the meta-trained
optimizer, its untrained initialisation and the tuned baselines run on the same held-out
tasks with the same keys. Writes into RUN_DIR/eval/ (or --out):
  curves.png    mean validation loss vs step, interquartile band, log scale
  report.md     table: tuned lr, loss at step 0, final, best, diverged tasks
  results.json  steps, per-optimizer curves (mean/std/median/q25/q75), tuned lrs, grid
Defaults come from the eval: section of the run's config.yaml.

example:
  learned-dco eval runs/quick_demo-20250101-120000 --num-tasks 200
"""


def add_eval(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="compare a trained optimizer with tuned optax baselines on held-out tasks",
        description=EVAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `learned-dco train`")
    p.add_argument("--num-tasks", type=int, metavar="N", help="held-out tasks (default: eval.num_tasks)")
    p.add_argument("--num-steps", type=int, metavar="T", help="inner steps per task (default: eval.num_steps)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the held-out tasks (default: eval.seed, else seed + 1)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/eval)")
    p.set_defaults(handler=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from learned_dco import report

    results = report.evaluate(
        args.run_dir, num_tasks=args.num_tasks, num_steps=args.num_steps, seed=args.seed,
        log=lambda msg: print(msg, flush=True),
    )
    out = Path(args.out) if args.out else Path(args.run_dir) / report.EVAL_DIR
    paths = report.write(results, out)
    print(report.markdown(results).split("\n\n![")[0])
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


# --------------------------------------------------------------------------------------
# reproduce
# --------------------------------------------------------------------------------------


def add_reproduce(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "reproduce",
        help="reproduce the DCO paper (Figures 1-3, Theorem 1) with tuned baselines",
        description="Run the DCO paper's experiments (least squares, Beverton-Holt, interpolation) "
        "and the Theorem 1 check; write figures, report.md and results.json to --out.",
    )
    p.add_argument("--quick", action="store_true", help="reduced sizes (under 3 minutes on a 2-core CPU)")
    p.add_argument("--out", default="results/reproduce", help="output directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(handler=run_reproduce)
    return p


def run_reproduce(args: argparse.Namespace) -> int:
    if args.quick:
        # The quick run is dominated by XLA compilation (many small programs, each run a
        # few times): compiling at backend optimisation level 0 halves its time here (275 s
        # -> 152 s on 2 cores) with the same numbers. Must precede the first JAX computation.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
    from learned_dco.reproduce import reproduce

    reproduce(quick=args.quick, out=args.out, seed=args.seed)
    return 0


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------

COMMANDS: dict[str, Registrar] = {
    "train": add_train,
    "eval": add_eval,
    "reproduce": add_reproduce,
}
"""Subcommand name -> registrar (see the module docstring)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learned-dco",
        description="Meta-train and evaluate learned optimizers (DCO and friends) in JAX.",
        epilog="Run `learned-dco COMMAND --help` for a command's options.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for registrar in COMMANDS.values():
        registrar(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from learned_dco.config import ConfigError

    try:
        return args.handler(args)
    except ConfigError as e:
        print(f"learned-dco {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
