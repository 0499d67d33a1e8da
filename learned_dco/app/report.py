r"""``learned-dco eval``: a trained optimizer against tuned optax baselines on held-out tasks.

Protocol (all keys from :func:`learned_dco.app.config.stream_key`):

1. **Held-out tasks**: ``eval.num_tasks`` fresh tasks from the ``"heldout"`` stream of the
   evaluation seed (``eval.seed``, default ``seed + 1``) -- never the training tasks.
2. **Baseline tuning**: each baseline's learning rate is picked by a vmapped grid sweep
   (:func:`learned_dco.meta.tune_learning_rate`: lowest mean final validation loss after
   ``eval.num_steps`` steps, diverged runs excluded) on the *training* tasks -- the fixed
   pool when the run has one, otherwise ``eval.num_tasks`` tasks from the ``"tuning"``
   stream of the training seed. Baselines thus see the same data the learned optimizer was
   meta-trained on, and neither is tuned on the held-out tasks.
3. **Rollouts**: the meta-trained optimizer, the same optimizer at its *initial*
   (untrained) meta-parameters, and every tuned baseline run ``eval.num_steps`` steps on the
   held-out tasks with one shared key (:func:`learned_dco.meta.rollout`), so all start from
   the same parameters and see the same minibatches.

Outputs in ``RUN_DIR/eval/``:

* ``curves.png`` -- mean validation loss over tasks against the step (log scale when all
  losses are positive), one line per optimizer, shaded band = interquartile range
  (25th-75th percentile over tasks), which stays positive on a log axis unlike mean ± std
  (needs matplotlib, the ``plots`` extra; left out with a warning without it);
* ``report.md`` -- a table: optimizer, tuned learning rate, mean loss at step 0, at the final
  step, the best mean loss (and its step), and how many tasks diverged;
* ``results.json`` -- ``steps``, ``curves`` (per optimizer: ``mean``, ``std``, ``median``,
  ``q25``, ``q75`` lists), ``tuned_lr``, ``grid``, ``tuning_scores``, ``summary`` (the
  table rows) and the protocol's settings. Non-finite numbers are written as
  ``"inf"``, ``"-inf"``, ``"nan"`` (:func:`learned_dco.io.to_json`).

A run meta-trained on a task *mixture* (``task: {name: mixture}``) is evaluated on one
member at a time (``member=i``): held-out and tuning tasks come from that member, the
results name it (``member``, ``task``). ``learned-dco eval`` evaluates every member, each
into ``OUT/member<i>-<name>/``. (Problems outside the mixture: ``learned-dco bench``.)

A task *diverged* when its validation loss became non-finite or ended above ten times its
loss at step 0; the report also counts tasks that ended *worse than they started* (a noise
floor can do that to a task that starts near its optimum). Curve statistics are over the
tasks whose whole curve is finite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from learned_dco import meta
from learned_dco.meta import distributed
from learned_dco.app import config as C
from learned_dco.app import runs
from learned_dco.io import atomic_write_bytes, atomic_write_json, atomic_write_text, environment

from learned_dco.tasks import sample_tasks

EVAL_DIR = "eval"
OUTPUTS = ("curves.png", "report.md", "results.json")  # what write() puts in the output directory
DIVERGED_FACTOR = 10.0  # a task diverged if its loss went non-finite or ended above 10x its start
RESULT_KEYS = (
    "run_dir", "meta_step", "optimizer", "task", "member", "num_tasks", "num_steps", "eval_seed", "tuning_tasks",
    "steps", "grid", "tuned_lr", "tuning_scores", "curves", "summary", "versions", "device",
)


def curve_stats(val: np.ndarray) -> dict[str, Any]:
    """Per-step statistics over tasks of a ``(num_tasks, num_steps + 1)`` loss array."""
    val = np.asarray(val, np.float64)
    finite_rows = np.all(np.isfinite(val), axis=1)
    final, first = val[:, -1], val[:, 0]
    diverged = ~finite_rows | (final > DIVERGED_FACTOR * first)
    worse = ~finite_rows | (final > first)
    ok = val[finite_rows]
    if ok.shape[0]:
        mean, std = ok.mean(0), ok.std(0)
        q25, median, q75 = np.percentile(ok, [25, 50, 75], axis=0)
    else:
        mean = std = q25 = median = q75 = np.full(val.shape[1], np.nan)
    return {
        "mean": mean, "std": std, "median": median, "q25": q25, "q75": q75,
        "initial": float(np.mean(first)), "diverged": int(diverged.sum()), "worse": int(worse.sum()),
        "finite_tasks": int(finite_rows.sum()),
    }


def evaluate(
    run_dir: str | Path,
    *,
    num_tasks: int | None = None,
    num_steps: int | None = None,
    seed: int | None = None,
    member: int | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Run the evaluation protocol (module docstring) and return the results dict
    (``member``: which member of a mixture run to evaluate on; required for those)."""
    trained = runs.load_trained(run_dir)
    cfg = trained.config
    task_cfg = member_config(cfg, member)
    ev = cfg.eval
    n = ev.num_tasks if num_tasks is None else num_tasks
    steps = ev.num_steps if num_steps is None else num_steps
    eval_seed = cfg.eval_seed if seed is None else seed
    for value, flag in ((n, "--num-tasks"), (steps, "--num-steps")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise C.ConfigError(f"{flag}: must be a positive integer, got {value!r}")
    built = runs.build(cfg)
    family = built.family if member is None else built.family.members[member]
    grid = tuple(ev.lr_grid) if ev.lr_grid is not None else meta.DEFAULT_GRID

    # task batches are sharded over every device of every process (meta/distributed.py)
    heldout = distributed.shard_tasks(sample_tasks(family, C.stream_key(eval_seed, "heldout"), n))
    if built.pool is not None:
        tuning = distributed.shard_tasks(built.pool)
        tuning_desc = f"the run's pool of {cfg.train.num_train_tasks} training tasks (seed {cfg.seed})"
    else:
        tuning = distributed.shard_tasks(sample_tasks(family, C.stream_key(cfg.seed, "tuning"), n))
        tuning_desc = f"{n} tasks from the training distribution (seed {cfg.seed}, tuning stream)"
        if member is not None:
            tuning_desc = f"{n} tasks of mixture member {member} (seed {cfg.seed}, tuning stream)"

    tuned = {}
    for name in ev.baselines:
        log(f"tuning {name} over {len(grid)} learning rates on {tuning_desc}")
        tuned[name] = meta.tune_learning_rate(name, family, tuning, C.stream_key(cfg.seed, "tuning"), steps, grid)

    key = C.stream_key(eval_seed, "rollout")
    # tasks and key are arguments, not closed-over constants baked into the compiled program
    learned = jax.jit(lambda m, tasks, k: meta.rollout(trained.lopt.opt_fn(m), family, tasks, k, steps).val)
    curves: dict[str, np.ndarray] = {}
    lr_of: dict[str, float | None] = {}
    label = cfg.optimizer.name
    log(f"rolling out {label} (meta-trained and initial) on {n} held-out tasks for {steps} steps")
    curves[f"{label} (meta-trained)"] = distributed.to_host(learned(trained.meta, heldout, key))
    curves[f"{label} (initial)"] = distributed.to_host(learned(runs.initial_meta(built), heldout, key))
    lr_of[f"{label} (meta-trained)"] = lr_of[f"{label} (initial)"] = None
    baseline = jax.jit(lambda lr, tasks, k, make: meta.rollout(make(lr), family, tasks, k, steps).val, static_argnums=3)
    for name, t in tuned.items():
        curves[name] = distributed.to_host(baseline(t.learning_rate, heldout, key, meta.BASELINES[name]))
        lr_of[name] = t.learning_rate

    stats = {name: curve_stats(v) for name, v in curves.items()}
    summary = []
    for name, s in stats.items():
        mean = s["mean"]
        best_step = int(np.nanargmin(mean)) if np.any(np.isfinite(mean)) else None
        summary.append({
            "optimizer": name,
            "learning_rate": lr_of[name],
            "loss_step0": s["initial"],
            "loss_final": float(mean[-1]),
            "loss_best": float(mean[best_step]) if best_step is not None else float("nan"),
            "best_step": best_step,
            "diverged": s["diverged"],
            "worse_than_start": s["worse"],
        })
    return {
        "run_dir": str(run_dir),
        "meta_step": trained.meta_step,
        "optimizer": cfg.optimizer.to_dict(),
        "task": task_cfg.to_dict(),
        "member": member,
        "num_tasks": n,
        "num_steps": steps,
        "eval_seed": eval_seed,
        "tuning_tasks": tuning_desc,
        "steps": list(range(steps + 1)),
        "grid": list(grid),
        "tuned_lr": {name: t.learning_rate for name, t in tuned.items()},
        "tuning_scores": {name: t.scores for name, t in tuned.items()},
        "curves": {
            name: {k: s[k] for k in ("mean", "std", "median", "q25", "q75")} for name, s in stats.items()
        },
        "summary": summary,
        **environment(),
    }


def member_config(cfg: C.RunConfig, member: int | None) -> C.ComponentConfig:
    """The task section evaluated: ``cfg.task``, or member ``member`` of a mixture run
    (a :class:`ConfigError` if ``member`` is missing for a mixture, given otherwise, or
    out of range)."""
    if not cfg.task.is_mixture:
        if member is not None:
            raise C.ConfigError(f"--member: only for a run meta-trained on a task mixture (this run's task is {cfg.task.name!r})")
        return cfg.task
    members = cfg.task.members
    if member is None:
        raise C.ConfigError(
            f"--member: this run was meta-trained on a mixture of {len(members)} task families; evaluate one "
            f"member at a time (0..{len(members) - 1}), or on held-out problems with `learned-dco bench`"
        )
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < len(members):
        raise C.ConfigError(f"--member: must be a member index in 0..{len(members) - 1}, got {member!r}")
    return members[member]


def member_dir(cfg: C.RunConfig, member: int) -> str:
    """``member<i>-<family name>``: where ``learned-dco eval`` writes a mixture member's results."""
    return f"member{member}-{cfg.task.members[member].name}"


def plot_curves(results: dict[str, Any], path: str | Path) -> Path:
    """Mean validation loss per optimizer with an interquartile band (PNG, Agg backend)."""
    from learned_dco import extras

    plt = extras.pyplot()

    steps = np.asarray(results["steps"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    positive = True
    for name, c in results["curves"].items():
        mean = np.asarray(c["mean"], np.float64)
        q25, q75 = np.asarray(c["q25"], np.float64), np.asarray(c["q75"], np.float64)
        style = "--" if name.endswith("(initial)") else "-"
        width = 2.4 if name.endswith("(meta-trained)") else 1.6
        (line,) = ax.plot(steps, mean, style, label=name, lw=width)
        ax.fill_between(steps, q25, q75, color=line.get_color(), alpha=0.18, lw=0)
        finite = np.concatenate([mean, q25])[np.isfinite(np.concatenate([mean, q25]))]
        positive &= bool(np.all(finite > 0))
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("inner step")
    ax.set_ylabel("validation loss (mean over tasks)")
    ax.set_title(f"{results['task']['name']}: {results['num_tasks']} held-out tasks (band: 25-75%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return str(x)


def markdown(results: dict[str, Any], figure: bool = True) -> str:
    """The evaluation report as markdown (linking ``curves.png`` when ``figure``)."""
    opt = ", ".join(f"{k}={v}" for k, v in results["optimizer"].items() if k != "name")
    lines = [
        f"# Evaluation of `{results['run_dir']}`",
        "",
        f"- learned optimizer: `{results['optimizer']['name']}` ({opt or 'defaults'}), "
        f"meta-step {results['meta_step']}",
        f"- task family: `{results['task']['name']}`"
        + (f" (member {results['member']} of the task mixture it was meta-trained on)"
           if results.get("member") is not None else "")
        + f"; {results['num_tasks']} held-out tasks "
        f"(seed {results['eval_seed']}), {results['num_steps']} inner steps",
        f"- baselines tuned on {results['tuning_tasks']}, grid of {len(results['grid'])} learning rates "
        f"from {min(results['grid']):.3g} to {max(results['grid']):.3g}",
        "",
        "| optimizer | tuned lr | loss at step 0 | final loss | best loss (step) | diverged | worse than start |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["summary"]:
        best = f"{_fmt(r['loss_best'])} ({r['best_step']})" if r["best_step"] is not None else "-"
        lines.append(
            f"| {r['optimizer']} | {_fmt(r['learning_rate'])} | {_fmt(r['loss_step0'])} | "
            f"{_fmt(r['loss_final'])} | {best} | {r['diverged']}/{results['num_tasks']} | "
            f"{r['worse_than_start']}/{results['num_tasks']} |"
        )
    lines += [
        "",
        "Losses are validation losses averaged over the held-out tasks whose curve stayed finite; "
        f"a task diverged when its loss became non-finite or ended above {DIVERGED_FACTOR:g}x its loss "
        "at step 0. `(initial)` is the learned optimizer at its untrained meta-parameters.",
        "",
    ]
    if figure:
        lines += ["![validation loss curves](curves.png)", ""]
    return "\n".join(lines)


def existing_outputs(out_dir: str | Path) -> list[Path]:
    """The files :func:`write` would replace in ``out_dir``."""
    return [Path(out_dir) / name for name in OUTPUTS if (Path(out_dir) / name).exists()]


def write(results: dict[str, Any], out_dir: str | Path,
          warn: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Write ``curves.png``, ``report.md`` and ``results.json`` into ``out_dir``. Without
    matplotlib (the ``plots`` extra) the figure is left out and ``warn`` says so in one line."""
    from learned_dco.extras import MissingExtra

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    try:
        paths["png"] = plot_curves(results, out_dir / "curves.png")
    except MissingExtra as e:
        (out_dir / "curves.png").unlink(missing_ok=True)  # an earlier evaluation's figure
        (warn or (lambda msg: None))(f"curves.png not written: {e}")
    paths["report"] = atomic_write_text(out_dir / "report.md", markdown(results, figure="png" in paths))
    paths["results"] = atomic_write_json(out_dir / "results.json", results)
    return paths
