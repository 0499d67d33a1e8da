"""The ``learned-dco`` command line.

    learned-dco train CONFIG [--set KEY=VALUE ...] [--out DIR] [--no-progress]   (a YAML path or a shipped config's name)
    learned-dco train --resume RUN_DIR [--set train.num_steps=N]
    learned-dco eval RUN_DIR [--num-tasks N] [--num-steps T] [--seed S] [--member I] [--out DIR] [--overwrite]
    learned-dco reproduce [STUDY] [--list] [--quick] [--out DIR] [--seed S] [--overwrite]
    learned-dco configs                    the shipped configs, each with a one-line description
    learned-dco bench [OPTIMIZER ...] [--split dev|test|all] [--quick] [--seeds N] [--out DIR] [--list]
    (train, eval and reproduce also take --coordinator/--num-processes/--process-id or --distributed)
    learned-dco plot RUN_DIR [--out FILE.png]
    learned-dco cache [--info] [--clear]
    (train also takes --tensorboard)
    (every command also takes --debug, --no-compile-cache, --compile-cache DIR and --compile-cache-max-size SIZE)

Subcommands live in :data:`COMMANDS`, a mapping from name to a *registrar*: a function
that receives the ``argparse`` subparsers object, adds its parser (with help texts and
the :func:`common_options` parent) and sets ``handler`` -- a function of the parsed
arguments returning an exit status. To add a command, write its registrar and add one
entry to :data:`COMMANDS`. Handlers import what they need when they run, so ``--help``
stays fast.

Every expected failure is one line on stderr and a distinct exit status
(:data:`EXIT_CODES`); ``--debug`` adds the traceback; anything else is reported as a bug.

The persistent XLA compilation cache is on by default (:func:`compile_cache_dir`), so the
second run of a config skips most compilation; ``reproduce --quick`` compiles with cheaper
XLA settings unless ``XLA_FLAGS`` names them (:mod:`learned_dco.app.xla`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from learned_dco.app.exits import (  # noqa: F401 -- the exit statuses are part of the CLI's API
    BUG_REPORT,
    EXIT_BUG,
    EXIT_CHECKPOINT,
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_DISK_FULL,
    EXIT_EXISTS,
    EXIT_FILE,
    EXIT_INTERRUPTED,
    EXIT_MEMORY,
    EXIT_MISSING_EXTRA,
    EXIT_OK,
    EXIT_PEER,
    OutputExists,
    classify,
)

Registrar = Callable[["argparse._SubParsersAction"], argparse.ArgumentParser]

COMPILE_CACHE_ENV = "LEARNED_DCO_COMPILE_CACHE"  # "0"/"off"/"false": no persistent compilation cache
CACHE_DIR_ENV = "LEARNED_DCO_CACHE_DIR"  # the cache directory (default below)


def _exit_epilog() -> str:
    lines = ["exit status:"] + [f"  {code:>3}  {text}" for code, text in EXIT_CODES.items()]
    lines += [
        "",
        "compilation cache: compiled XLA programs are kept in $LEARNED_DCO_CACHE_DIR",
        "(default $XDG_CACHE_HOME/learned_dco/jax, i.e. ~/.cache/learned_dco/jax) so a second run of a",
        "config starts at once; --no-compile-cache or LEARNED_DCO_COMPILE_CACHE=0 turns it off. It is kept",
        "under --compile-cache-max-size or $LEARNED_DCO_CACHE_MAX_SIZE (default 2G; least recently used",
        "entries go first); `learned-dco cache --info/--clear` shows or empties it.",
    ]
    return "\n".join(lines)


def common_options() -> argparse.ArgumentParser:
    """Options every command takes (an argparse parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error")
    g.add_argument("--no-compile-cache", dest="compile_cache", action="store_false", default=argparse.SUPPRESS,
                   help=f"do not use the persistent compilation cache (also: {COMPILE_CACHE_ENV}=0)")
    g.add_argument("--compile-cache", dest="cache_dir", metavar="DIR", default=argparse.SUPPRESS,
                   help=f"compilation cache directory (default: ${CACHE_DIR_ENV} or ~/.cache/learned_dco/jax)")
    g.add_argument("--compile-cache-max-size", dest="cache_max_size", metavar="SIZE", default=argparse.SUPPRESS,
                   help="size limit of the compilation cache, e.g. 500M, 2G, unlimited "
                   "(default: $LEARNED_DCO_CACHE_MAX_SIZE or 2G); least recently used entries are evicted")
    return p


def _add_parser(subparsers, name: str, **kw) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name, parents=[common_options()], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_exit_epilog(), **kw,
    )


# --------------------------------------------------------------------------------------
# the compilation cache
# --------------------------------------------------------------------------------------


def compile_cache_dir(args: argparse.Namespace | None = None) -> Path | None:
    """The persistent compilation cache directory in force, or ``None`` when it is off
    (``--no-compile-cache`` or ``LEARNED_DCO_COMPILE_CACHE=0``)."""
    if args is not None and getattr(args, "compile_cache", True) is False:
        return None
    if os.environ.get(COMPILE_CACHE_ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    if args is not None and getattr(args, "cache_dir", None):
        return Path(args.cache_dir)
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "learned_dco" / "jax"


def enable_compile_cache(path: Path, max_size: int | None = None) -> None:
    """Point JAX's persistent compilation cache at ``path`` and cache every program (the
    CLI's programs are many and small; JAX's default skips those compiling under 1 s),
    keeping it under ``max_size`` bytes (default :func:`learned_dco.app.cache.max_size`;
    :mod:`learned_dco.app.cache` splits it between XLA's entries and the stored steps)."""
    import jax

    from learned_dco.app import cache

    limit = cache.max_size() if max_size is None else max_size
    path.mkdir(parents=True, exist_ok=True)
    if limit != cache.UNLIMITED and importlib.util.find_spec("filelock") is None:  # JAX's eviction needs it
        print("learned-dco: warning: the compilation cache has no size limit: install filelock "
              "(a dependency of learned-dco)", file=sys.stderr)
        limit = cache.UNLIMITED
    if limit != cache.UNLIMITED:
        cache.stamp_unstamped(path)  # entries from runs without a limit: JAX's eviction needs their stamps
    jax.config.update("jax_compilation_cache_max_size", cache.split(limit)[0])
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# --------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------

TRAIN_HELP = """\
Meta-train a learned optimizer described by a YAML config: a file, or the name of a config
shipped with the package (`learned-dco configs` lists them).

The run directory receives config.yaml (the resolved config: every default written out),
run.json (config fingerprint, defaults, versions, device), metrics.jsonl (one JSON line per
meta-step, appended as it goes), checkpoint.msgpack (every train.checkpoint_every steps and
at the end; the previous one is kept as checkpoint.prev.msgpack) and meta.msgpack (the
trained meta-parameters; load them in Python with
learned_dco.app.runs.load_trained(RUN_DIR)); with --tensorboard also tensorboard/
(event files: `tensorboard --logdir RUN_DIR`); `learned-dco plot RUN_DIR` draws the curves.
After a crash or kill, --resume continues from the newest readable checkpoint and ends with
the same meta.msgpack as an uninterrupted run.

examples:
  learned-dco train quick_demo
  learned-dco train dcog_least_squares --set estimator.num_tasks=50 --set seed=3
  learned-dco train my_config.yaml
  learned-dco train --resume runs/quick_demo-20250101-120000 --set train.num_steps=60
"""


def add_train(subparsers) -> argparse.ArgumentParser:
    p = _add_parser(subparsers, "train", help="meta-train a learned optimizer from a YAML config",
                    description=TRAIN_HELP)
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="run config: a YAML file or a shipped config's name (optional with --resume)")
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
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to RUN_DIR/tensorboard (needs learned-dco[tensorboard])")
    from learned_dco.app import launch

    launch.add_options(p)
    p.set_defaults(handler=run_train)
    return p


def default_run_dir(config_path: str | Path, root: str | Path = "runs") -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>`` (with a numeric suffix if taken)."""
    base = Path(root) / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def _warn(command: str) -> Callable[[str], None]:
    return lambda msg: print(f"learned-dco {command}: warning: {msg}", file=sys.stderr, flush=True)


def run_train(args: argparse.Namespace) -> int:
    from learned_dco.app import config as C
    from learned_dco.app import runs, shipped
    from learned_dco.meta import distributed

    if getattr(args, "tensorboard", False):
        from learned_dco.app import observe

        observe.require_tensorboard()  # before any work
    if args.config:
        args.config = shipped.resolve(args.config)
    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise C.ConfigError("--out: cannot be combined with --resume (the run continues in its own directory)")
        saved = runs.saved_config(run_dir)
        cfg = C.load_config(args.config, args.overrides) if args.config else runs.saved_config(run_dir, args.overrides)
        runs.check_resumable(saved, cfg)
    else:
        if not args.config:
            raise C.ConfigError("train: give a CONFIG (a YAML file or a shipped config's name; or --resume RUN_DIR)")
        cfg = C.load_config(args.config, args.overrides)
        # several processes: process 0 names the directory and checks it (the others may have no view of it)
        run_dir = Path(distributed.from_primary(lambda: str(Path(args.out) if args.out else default_run_dir(args.config))))
        if distributed.from_primary(lambda: runs.has_run(run_dir)):
            raise OutputExists(f"--out: {run_dir} already holds a run; pick another directory or --resume it")

    say = print if distributed.is_primary() else (lambda *a, **k: None)
    task = (f"a mixture of {', '.join(m.name for m in cfg.task.members)}" if cfg.task.is_mixture
            else cfg.task.name)
    say(f"{'resuming' if args.resume else 'meta-training'} {cfg.optimizer.name} on {task} "
        f"with {cfg.estimator.name} in {run_dir}", flush=True)
    try:
        state = runs.train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress,
                           warn=_warn("train"), tensorboard=getattr(args, "tensorboard", False))
    except KeyboardInterrupt:
        print(f"\nlearned-dco train: interrupted; continue with: learned-dco train --resume {run_dir}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    say(
        f"done: {int(state.step)} meta-steps ({int(state.skipped)} skipped updates)\n"
        f"  config        {run_dir / runs.CONFIG_FILE}\n"
        f"  metrics       {run_dir / runs.METRICS}\n"
        f"  checkpoint    {run_dir / runs.CHECKPOINT}\n"
        f"  meta-params   {run_dir / runs.META}  (learned_dco.app.runs.load_trained)\n"
        f"evaluate with: learned-dco eval {run_dir}"
    )
    return EXIT_OK


# --------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------

EVAL_HELP = """\
Evaluate a trained learned optimizer on fresh held-out tasks next to optax baselines.

Each baseline's learning rate is tuned by a vmapped grid sweep on the training tasks (the
run's pool, or fresh training-distribution tasks without one); then the meta-trained
optimizer, its untrained initialisation and the tuned baselines run on the same held-out
tasks with the same keys. Writes into RUN_DIR/eval/ (or --out; existing results there are
replaced only with --overwrite):
  curves.png    mean validation loss vs step, interquartile band, log scale (needs learned-dco[plots])
  report.md     table: tuned lr, loss at step 0, final, best, diverged tasks
  results.json  steps, per-optimizer curves (mean/std/median/q25/q75), tuned lrs, grid, versions, device
Defaults come from the eval: section of the run's config.yaml.

A run meta-trained on a task mixture (task: {name: mixture}) is evaluated on each member in
turn (or only on --member I), each into OUT/member<I>-<family>/; for problems outside the
mixture use `learned-dco bench`.

example:
  learned-dco eval runs/quick_demo-20250101-120000 --num-tasks 200
"""


def add_eval(subparsers) -> argparse.ArgumentParser:
    p = _add_parser(subparsers, "eval", help="compare a trained optimizer with tuned optax baselines on held-out tasks",
                    description=EVAL_HELP)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `learned-dco train`")
    p.add_argument("--num-tasks", type=int, metavar="N", help="held-out tasks (default: eval.num_tasks)")
    p.add_argument("--num-steps", type=int, metavar="T", help="inner steps per task (default: eval.num_steps)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the held-out tasks (default: eval.seed, else seed + 1)")
    p.add_argument("--member", type=int, metavar="I",
                   help="a task-mixture run: evaluate on member I only (default: every member in turn)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/eval)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in the output directory")
    from learned_dco.app import launch

    launch.add_options(p)
    p.set_defaults(handler=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from learned_dco.app import report, runs
    from learned_dco.meta import distributed

    out = Path(args.out) if args.out else Path(args.run_dir) / report.EVAL_DIR
    member = getattr(args, "member", None)
    cfg = runs.saved_config(args.run_dir)
    if member is not None or not cfg.task.is_mixture:
        report.member_config(cfg, member)  # --member: given for a mixture run only, and in range
    if cfg.task.is_mixture:  # one evaluation per member, each in its own directory
        members = range(len(cfg.task.members)) if member is None else [member]
        targets = [(i, out / report.member_dir(cfg, i)) for i in members]
    else:
        targets = [(None, out)]
    for _, target in targets:
        existing = distributed.from_primary(lambda: [p.name for p in report.existing_outputs(target)])
        if existing and not args.overwrite:
            raise OutputExists(f"--out: {target} already holds results ({existing[0]}); pass --overwrite or another --out")
    for i, target in targets:
        results = report.evaluate(
            args.run_dir, num_tasks=args.num_tasks, num_steps=args.num_steps, seed=args.seed, member=i,
            log=lambda msg: print(msg, flush=True) if distributed.is_primary() else None,
        )
        if not distributed.is_primary():
            continue  # process 0 writes the results
        paths = report.write(results, target, warn=_warn("eval"))
        print(report.markdown(results).split("\n\n![")[0])
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


# --------------------------------------------------------------------------------------
# reproduce
# --------------------------------------------------------------------------------------

REPRODUCE_HELP = """\
Reproduce a seed paper's claims: run a study, write report.md (opening with the claims
table: paper value, measured value, verdict), results.json and figures to --out.

  learned-dco reproduce --list           what each study reproduces
  learned-dco reproduce                  the DCO study (default STUDY: dco)
  learned-dco reproduce star --quick     reduced sizes
"""


def studies() -> dict:
    """``learned_dco.studies.STUDIES`` (name -> Study with .name, .paper, .description, .run)."""
    from learned_dco.studies import STUDIES

    return STUDIES


STUDY_OUTPUTS = ("report.md", "results.json")


def add_reproduce(subparsers) -> argparse.ArgumentParser:
    p = _add_parser(subparsers, "reproduce", help="reproduce a seed paper (default: the DCO paper) with verdicts",
                    description=REPRODUCE_HELP)
    p.add_argument("study", nargs="?", default="dco", metavar="STUDY", help="which study (default: %(default)s; see --list)")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.add_argument("--quick", action="store_true", help="reduced sizes (minutes on a 2-core CPU)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: results/STUDY)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    from learned_dco.app import launch

    launch.add_options(p)
    p.set_defaults(handler=run_reproduce)
    return p


def run_reproduce(args: argparse.Namespace) -> int:
    from learned_dco.app.config import ConfigError

    table = studies()
    if args.list:
        width = max(map(len, table))
        for name, study in table.items():
            print(f"{name:<{width}}  {study.description}\n{'':<{width}}  ({study.paper})")
        return EXIT_OK
    if args.study not in table:
        raise ConfigError(f"reproduce: unknown study {args.study!r} (known: {', '.join(table)}; see --list)")
    if args.seed < 0:
        raise ConfigError(f"--seed: must be >= 0, got {args.seed}")
    from learned_dco import extras

    extras.pyplot()  # the studies' figures: fail now, not after the study has run
    from learned_dco.meta import distributed

    out = Path(args.out) if args.out else Path("results") / args.study
    # several processes: process 0 alone writes, so its view of --out decides
    existing = distributed.from_primary(lambda: [n for n in STUDY_OUTPUTS if (out / n).exists()])
    if existing and not args.overwrite:
        raise OutputExists(f"--out: {out} already holds results ({existing[0]}); pass --overwrite or another --out")
    if args.quick:
        # Quick runs are dominated by XLA compilation (many small programs, each run a few
        # times): compile them cheaply (learned_dco/app/xla.py; the user's XLA_FLAGS win).
        # Must precede the first JAX computation.
        from learned_dco.app import xla

        xla.apply_defaults(xla.QUICK_DEFAULTS)
    table[args.study].run(out, quick=args.quick, seed=args.seed)  # writes (and prints) on process 0 only
    if distributed.is_primary():
        print(f"wrote {out / 'report.md'} and {out / 'results.json'}")
    return EXIT_OK


# --------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------

CONFIGS_HELP = """\
List the run configs shipped with the package, each with its one-line description. Train one
by name (`learned-dco train NAME`); print one to copy and edit with --show NAME.
"""


def add_configs(subparsers) -> argparse.ArgumentParser:
    p = _add_parser(subparsers, "configs", help="list the shipped configs (train one by name)",
                    description=CONFIGS_HELP)
    p.add_argument("--show", metavar="NAME", help="print the shipped config NAME (YAML)")
    p.set_defaults(handler=run_configs)
    return p


def run_configs(args: argparse.Namespace) -> int:
    from learned_dco.app import shipped

    if args.show:
        print(shipped.resolve_name(args.show).read_text(encoding="utf-8"), end="")
        return EXIT_OK
    table = shipped.shipped()
    width = max(map(len, table))
    for name, path in table.items():
        print(f"{name:<{width}}  {shipped.describe(path)}")
    print(f"\n(in {shipped.config_dir()}; train one with `learned-dco train NAME`)")
    return EXIT_OK


# --------------------------------------------------------------------------------------
# plot, cache
# --------------------------------------------------------------------------------------

PLOT_HELP = """\
Plot a run's meta-training curves from RUN_DIR/metrics.jsonl as one PNG: meta-loss, inner
training loss and meta-gradient norm per meta-step, plus the held-out evaluation curves when
`learned-dco eval` has written RUN_DIR/eval/results.json. Needs matplotlib
(pip install 'learned-dco[plots]'). Works on a run still in progress.

example:
  learned-dco plot runs/quick_demo-20250101-120000      # writes RUN_DIR/meta_training.png
"""


def add_plot(subparsers) -> argparse.ArgumentParser:
    p = _add_parser(subparsers, "plot", help="plot a run's meta-training curves (PNG)", description=PLOT_HELP)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `learned-dco train`")
    p.add_argument("--out", metavar="FILE.png", help="output file (default: RUN_DIR/meta_training.png)")
    p.set_defaults(handler=run_plot, compile_cache=False)  # draws no JAX program
    return p


def run_plot(args: argparse.Namespace) -> int:
    from learned_dco.app import observe

    print(f"wrote {observe.plot_run(args.run_dir, args.out)}")
    return EXIT_OK


CACHE_HELP = """\
Show or empty the persistent compilation cache (XLA's compiled programs and the stored
meta-steps; see `learned-dco train --help`). Without options: --info.

  learned-dco cache                 location, entries, size and size limit
  learned-dco cache --clear         delete the entries (other files in the directory are kept)
  learned-dco cache --compile-cache DIR --clear
"""


def add_cache(subparsers) -> argparse.ArgumentParser:
    p = _add_parser(subparsers, "cache", help="show (--info) or empty (--clear) the compilation cache",
                    description=CACHE_HELP)
    p.add_argument("--info", action="store_true", help="print location, size and limit (the default)")
    p.add_argument("--clear", action="store_true", help="delete the cache's entries")
    p.set_defaults(handler=run_cache)
    return p


def run_cache(args: argparse.Namespace) -> int:
    from learned_dco.app import cache
    from learned_dco.app.config import ConfigError

    if getattr(args, "compile_cache", True) is False:
        raise ConfigError("cache: --no-compile-cache leaves no cache to show or clear")
    where = compile_cache_dir(argparse.Namespace(cache_dir=getattr(args, "cache_dir", None)))
    try:
        limit = cache.max_size(getattr(args, "cache_max_size", None))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.clear:
        count, total = cache.clear(where)
        print(f"cleared {where}: removed {count} entries ({cache.human(total)})")
    if args.info or not args.clear:
        count, total = cache.size(where)
        print(f"location  {where}{'' if where.is_dir() else '  (not created yet)'}\n"
              f"entries   {count}\nsize      {cache.human(total)} ({total} bytes)\nlimit     {cache.human(limit)}")
    return EXIT_OK


# --------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------

BENCH_HELP = """\
Benchmark optimizers on held-out problems (learned_dco.bench; docs/bench.md).

Each OPTIMIZER is a shipped pretrained name (learned_dco.pretrained), an untuned baseline
name, or module:factory (any optax factory; called as factory(num_steps=T) when it takes
num_steps, else factory()). Every table also holds tuned Adam (constant and cosine decay),
AdamW and SGD+momentum (rates picked on separate tuning seeds), the untuned baselines
(Adam 1e-3, Prodigy with and without linear decay, DoG, D-Adapt AdamW, Schedule-Free
AdamW) and each learned optimizer's untrained starting point. Baseline rows are cached
(LEARNED_DCO_BENCH_CACHE, default ~/.cache/learned_dco/bench).

Splits: dev (make design and meta-training choices here) and test (run once per shipped
optimizer; choose nothing on it). Writes bench.json, bench.md and bench_profile.png to --out
and prints the aggregate table with 95% intervals.

examples:
  learned-dco bench --list
  learned-dco bench learned_prodigy --quick
  learned-dco bench learned_prodigy --split dev --out results/bench-dev
  learned-dco bench mypkg.opt:make_optimizer --seeds 5
"""


def add_bench(subparsers) -> argparse.ArgumentParser:
    p = _add_parser(subparsers, "bench", help="benchmark optimizers on held-out problems (dev/test split, seeds, intervals)",
                    description=BENCH_HELP)
    p.add_argument("optimizers", nargs="*", metavar="OPTIMIZER", help="optimizers to benchmark (see above)")
    p.add_argument("--split", choices=("dev", "test", "all"), default="dev", help="problem split (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="budgets / 5, a 5-point grid, one tuning seed (about a minute)")
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds per problem (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: results/bench-SPLIT[-quick])")
    p.add_argument("--list", action="store_true", help="list the problems and optimizers and exit")
    p.add_argument("--baseline-cache", metavar="DIR", help="baseline cache directory (default: $LEARNED_DCO_BENCH_CACHE "
                   "or ~/.cache/learned_dco/bench)")
    p.add_argument("--no-baseline-cache", action="store_true", help="recompute the baseline rows, cache nothing")
    p.set_defaults(handler=run_bench)
    return p


def run_bench(args: argparse.Namespace) -> int:
    from learned_dco.app.config import ConfigError
    from learned_dco.validation import ValidationError

    if args.quick:
        from learned_dco.app import xla

        xla.apply_defaults(xla.QUICK_DEFAULTS)
    from learned_dco import bench, pretrained

    if args.list:
        print(bench.report.table([p.describe() for p in bench.problem_set("all")],
                                 ["name", "split", "model", "data", "loss", "steps", "batch", "control"]))
        print(f"\npretrained: {', '.join(pretrained.list()) or '-'}")
        print(f"untuned baselines: {', '.join(bench.UNTUNED)}")
        print(f"tuned baselines (always rows): {', '.join(bench.TUNED)}")
        return EXIT_OK
    if args.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {args.seeds}")
    try:
        cands = [bench.resolve(name) for name in args.optimizers]
        make = bench.Settings.quick if args.quick else bench.Settings
        settings = make(seeds=tuple(range(args.seeds)))
        cache = None if args.no_baseline_cache else (args.baseline_cache or ...)
        result = bench.run(cands, split=args.split, settings=settings, cache_dir=cache,
                           progress=lambda line: print(line, flush=True))
    except ValidationError as err:
        raise ConfigError(str(err)) from None
    summary = bench.summarise(result)
    out = Path(args.out) if args.out else Path("results") / f"bench-{args.split}{'-quick' if args.quick else ''}"
    paths = bench.write(summary, out)
    print()
    print(bench.aggregate_table(summary))
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {result['seconds']:.0f} s")
    return EXIT_OK


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------

COMMANDS: dict[str, Registrar] = {
    "train": add_train,
    "eval": add_eval,
    "reproduce": add_reproduce,
    "configs": add_configs,
    "plot": add_plot,
    "cache": add_cache,
    "bench": add_bench,
}
"""Subcommand name -> registrar (see the module docstring)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learned-dco",
        description="Meta-train and evaluate learned optimizers (DCO and friends) in JAX; reproduce the seed papers.",
        epilog="Run `learned-dco COMMAND --help` for a command's options.\n\n" + _exit_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for registrar in COMMANDS.values():
        registrar(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None
    try:
        cache = compile_cache_dir(args) if args.command != "cache" else None  # `cache` only inspects it
        if cache is not None and (getattr(args, "cache_dir", None) or not _cache_already_set()):
            from learned_dco.app import cache as cache_limits
            from learned_dco.app.config import ConfigError

            try:
                limit = cache_limits.max_size(getattr(args, "cache_max_size", None))
            except ValueError as e:
                raise ConfigError(str(e)) from None
            enable_compile_cache(cache, limit)
        from learned_dco.app import launch

        with launch.session(args, args.command) as job:  # no-op unless multi-process options were given
            return job.exit_status(args.handler(args))
    except BaseException as e:  # noqa: BLE001 -- every failure becomes one line and a status
        if isinstance(e, SystemExit):
            raise
        code, message = classify(e)
        if debug or code == EXIT_BUG and os.environ.get("LEARNED_DCO_DEBUG"):
            traceback.print_exc()
        print(f"learned-dco {args.command}: {'error' if code != EXIT_INTERRUPTED else 'stopped'}: {message}",
              file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _cache_already_set() -> bool:
    """Whether a cache directory was chosen before (JAX_COMPILATION_CACHE_DIR, a caller)."""
    import jax

    return bool(jax.config.jax_compilation_cache_dir)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
