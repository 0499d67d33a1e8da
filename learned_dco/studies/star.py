"""STAR study (Harrison, Metz & Sohl-Dickstein, NeurIPS 2022): stability past the horizon.

Sec. 5.3 / Fig. 3-4 scaled to CPU, Fig. 2a, and the nominal-term ablation:

1. Meta-train ``Blackbox``, ``Hyperparam``, ``STAR`` and STAR *without* its nominal term
   (``nominal_step=0``, the ablation) on ``DigitsMLP`` tasks for an inner horizon ``H``
   with the paper's recipe (App. B): ``PES(truncation=50, sigma=0.01,
   meta_loss="mean_train")``, outer AdamW with gradient clipping 1.0
   (``star_meta_optimizer``; weight decay x outer lr on STAR's blackbox weights only).
2. Apply each trained optimizer to ``mlp_tasks`` fresh ``DigitsMLP`` tasks for
   ``stability_horizons`` x H steps (the paper applies its optimizers for up to two orders
   of magnitude more steps than they were meta-trained for, Sec. 5.3), and for ``10 H``
   steps to ``conv_tasks`` ``DigitsConvNet`` tasks (never seen in meta-training), next to
   Adam with its learning rate tuned over a half-decade grid on separate tasks of the same
   family (run for ``10 H``).
3. Per family and optimizer at ``10 H``: mean full-training-split loss at ``H``, at
   ``10 H``, its best value, and the tasks that diverged (non-finite, or final > 10x the
   task's own minimum so far). The loss comparisons pair these per-task values.
4. Stability (the MLP tasks read at ``stability_horizons`` x H): the same divergence rule
   over the whole run, per task; the stability claim pairs STAR's divergence indicator
   with Blackbox's over these tasks. At the quick size no method diverges by 10 H (0 of 32
   tasks each, docs/studies/star.md), so the claim is judged where the paper sees the
   failure: far past the horizon.
5. Fig. 2a on the App. B.1 noisy quadratic (:mod:`learned_dco.studies.star_nqm`).

Evaluation is a Python loop of one jitted step (tasks vmapped) with the full training loss
every ``eval_every`` steps: XLA:CPU runs convolutions inside ``lax.scan`` ~10x slower than
the same step called from Python. The programs that run long (the PES meta-training scan,
the MLP runs past the horizon) are compiled with XLA's optimising backend
(:data:`LONG_RUN_OPTIONS`) even when ``reproduce --quick`` has switched it off for the
many short programs: on 2 CPU cores a learned-optimizer step then costs a third of the
CPU time. The four learned optimizers' jobs (meta-training and evaluation) and Adam's run
on ``workers`` threads (JAX releases the GIL while compiling and running); each job's
randomness is its own key, so the results do not depend on the number of threads.

Quick mode (``learned-dco reproduce star --quick``): H = 50 (so the PES truncation of 50
spans the whole episode), 100 meta-steps, 4 tasks per meta-step, 24 MLP tasks run for
40 H = 2000 steps, 4 ConvNet tasks; full mode: the paper-like sizes of ``FULL`` (H = 500,
2000 meta-steps, 64 MLP tasks for 40 H = 20000 steps; hours on CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_dco as ldco
from learned_dco import meta as lmeta
from learned_dco import tasks
from learned_dco.meta import distributed
from learned_dco.studies import star_nqm
from learned_dco.studies import stats
from learned_dco.studies.common import Claim, _pyplot, fmt, write_study

NAME = "star"
PAPER = "Harrison, Metz & Sohl-Dickstein: A closer look at learned optimization: stability, robustness, and inductive biases (NeurIPS 2022)"

QUICK = dict(
    horizon=50, meta_steps=100, num_tasks=4, outer_lr=1e-3, star_weight_decay=(0.5,),
    mlp_hidden=(32, 32), conv_channels=(8, 16, 16), batch_size=64,
    mlp_tasks=24, conv_tasks=4, tune_tasks=2, eval_every=20,
    stability_horizons=40, stability_eval_every=50, workers=2,
)
FULL = dict(
    horizon=500, meta_steps=2000, num_tasks=8, outer_lr=3e-4, star_weight_decay=(0.1, 0.5),
    mlp_hidden=(128, 128), conv_channels=(32, 64, 64), batch_size=128,
    mlp_tasks=64, conv_tasks=8, tune_tasks=4, eval_every=50,
    stability_horizons=40, stability_eval_every=250, workers=2,
)
ADAM_GRID = tuple(float(x) for x in np.logspace(-4, -1, 7))  # half-decade steps (STAR App. B.3)
#: Non-finite (or larger) final losses enter the paired loss comparisons at this value.
LOSS_CAP = 1e6
#: XLA options of the programs that run long (PES meta-training, the MLP runs past the
#: horizon): the optimising backend, whatever ``XLA_FLAGS`` says for the short programs.
LONG_RUN_OPTIONS = {"xla_backend_optimization_level": 2}


# --- evaluation ---------------------------------------------------------------------------


@dataclasses.dataclass
class Evaluation:
    steps: np.ndarray  # (E,) evaluation steps, 0 .. num_steps
    train_loss: np.ndarray  # (configs, tasks, E) full-training-split loss


def evaluate(make_tx: Callable, configs, family, task_batch, key, num_steps: int, eval_every: int,
             compiler_options: dict | None = None) -> Evaluation:
    """Run ``make_tx(config)`` for every configuration on every task for ``num_steps`` steps.

    Task ``i`` starts from parameters drawn with ``fold_in(key, i)`` and sees the same
    minibatches for every configuration and every optimizer given the same ``key``. One
    jitted step (``compiler_options`` passed to XLA) advances every (configuration, task)
    pair at once, vmapped over one axis of ``configs x tasks`` units (unit ``c n + i`` is
    configuration ``c`` on task ``i``); a single configuration (a learned optimizer's
    meta-parameters) is not batched, so its weights stay shared by the tasks. The
    full-training-split loss is recorded every ``eval_every`` steps and at the end.
    """
    n = jax.tree.leaves(task_batch)[0].shape[0]
    num_configs = jax.tree.leaves(configs)[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(jnp.arange(n))
    k_init, k_run = keys[:, 0], keys[:, 1]

    def tile(x):  # (n, ...) -> (C n, ...), inside the programs: the task batch may span processes
        return x if num_configs == 1 else jnp.concatenate([x] * num_configs)

    def per_unit(fn):  # fn(config, *per-task arguments), vmapped over the units
        if num_configs == 1:
            return lambda configs, *args: jax.vmap(functools.partial(fn, jax.tree.map(lambda x: x[0], configs)))(*args)
        return lambda configs, *args: jax.vmap(fn)(jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), configs), *args)

    def one(config, p, s, task, k, t):
        tx = make_tx(config)
        batch = family.sample_batch(jax.random.fold_in(k, t), task)
        grads = jax.grad(family.loss)(p, task, batch)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    @jax.jit
    def init(configs, k_init, task_batch):
        params = jax.vmap(family.init_params)(tile(k_init), jax.tree.map(tile, task_batch))
        return params, per_unit(lambda c, p: make_tx(c).init(p))(configs, params)

    def step_fn(configs, params, state, t, task_batch, k_run):
        return per_unit(lambda c, p, s, task, k: one(c, p, s, task, k, t))(
            configs, params, state, jax.tree.map(tile, task_batch), tile(k_run))

    step = jax.jit(step_fn, compiler_options=compiler_options)
    loss_of = _task_loss(family)
    task_loss = loss_of if num_configs == 1 else jax.jit(lambda p, tb: loss_of(p, jax.tree.map(tile, tb)))
    p, s = init(configs, k_init, task_batch)
    steps, losses = [0], [distributed.to_host(task_loss(p, task_batch))]
    for t in range(num_steps):
        p, s = step(configs, p, s, jnp.asarray(t), task_batch, k_run)
        if (t + 1) % eval_every == 0 or t + 1 == num_steps:
            steps.append(t + 1)
            losses.append(distributed.to_host(task_loss(p, task_batch)))
    train_loss = np.stack(losses, axis=-1).reshape(num_configs, n, len(steps))
    return Evaluation(np.asarray(steps), train_loss.astype(np.float64))


@functools.lru_cache(maxsize=None)
def _task_loss(family) -> Callable:
    """The full-training-split loss of a batch of tasks: one jitted function per family, so
    every optimizer evaluated on a family shares its compiled programs."""
    return jax.jit(jax.vmap(lambda p, task: family.loss(p, task, None)))


def summarise(ev: Evaluation, config: int, horizon: int, upto: int | None = None) -> dict:
    """Mean-over-tasks curve statistics and the per-task divergence count, over the recorded
    steps up to ``upto`` (default: all). A task diverged when its last loss is non-finite or
    above 10x its own minimum so far."""
    keep = ev.steps <= (ev.steps[-1] if upto is None else upto)
    steps = ev.steps[keep]
    losses = ev.train_loss[config][:, keep]  # (tasks, E)
    finite = np.isfinite(losses)
    mean = np.where(np.all(finite, axis=0), np.mean(np.where(finite, losses, 0.0), axis=0), np.inf)
    per_task_min = np.min(np.where(finite, losses, np.inf), axis=1)
    final = losses[:, -1]
    diverged = ~np.isfinite(final) | (final > 10 * per_task_min)
    at_h = int(np.argmin(np.abs(steps - horizon)))
    best = int(np.argmin(mean))
    return {
        "loss_at_H": float(mean[at_h]),
        "final_loss": float(mean[-1]),
        "best_loss": float(mean[best]),
        "best_step": int(steps[best]),
        "diverged_tasks": int(np.sum(diverged)),
        "num_tasks": int(losses.shape[0]),
        "diverged": bool(np.any(diverged)),
        "diverged_per_task": [int(x) for x in diverged],
        "final_loss_per_task": [float(x) for x in stats.capped(final, LOSS_CAP)],
        "curve": [None if not np.isfinite(x) else float(x) for x in mean],
    }


def tune_adam(family, task_batch, key, num_steps: int, grid=ADAM_GRID) -> tuple[float, list]:
    """Adam's learning rate with the lowest mean final training loss (diverged: inf); the
    grid runs as one batch of (learning rate, task) units."""
    lrs = jnp.asarray(grid)
    ev = evaluate(_adam, lrs, family, task_batch, key, num_steps, num_steps)  # only the final loss is scored
    final = ev.train_loss[:, :, -1]
    scores = np.where(np.all(np.isfinite(final), axis=1), np.mean(final, axis=1), np.inf)
    return float(grid[int(np.argmin(scores))]), [float(x) for x in scores]


def _adam(lr):
    return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)


# --- meta-training ------------------------------------------------------------------------


def meta_train(name, lopt, family, cfg, weight_decay: float, key, log=print) -> tuple:
    """PES meta-training: one ``lax.scan`` of ``cfg["meta_steps"]`` meta-steps, compiled with
    :data:`LONG_RUN_OPTIONS`."""
    estimator = lmeta.PES(
        horizon=cfg["horizon"], truncation=min(50, cfg["horizon"]), num_tasks=cfg["num_tasks"],
        sigma=0.01, meta_loss="mean_train",
    )
    meta_opt = ldco.star_meta_optimizer(cfg["outer_lr"], weight_decay_factor=weight_decay, clip=1.0)
    trainer = lmeta.MetaTrainer(lopt, family, estimator, meta_opt, devices=jax.devices()[:1])
    start = time.perf_counter()
    train = jax.jit(lambda k: trainer.train(k, cfg["meta_steps"]), compiler_options=LONG_RUN_OPTIONS)
    state, metrics = train(key)
    history = [{"meta_loss": float(m), "train_loss": float(t)}
               for m, t in zip(np.asarray(metrics.meta_loss), np.asarray(metrics.train_loss))]
    log(f"  [{name}] {cfg['meta_steps']} meta-steps: meta-loss {history[0]['meta_loss']:.4f} -> "
        f"{history[-1]['meta_loss']:.4f} ({time.perf_counter() - start:.0f} s)")
    return state.meta, history, time.perf_counter() - start, int(state.skipped)


# --- plotting -----------------------------------------------------------------------------


def plot(result: dict, path: Path) -> None:
    plt = _pyplot()

    panels = {fam: ev for fam, ev in result["evaluation"].items()}
    if "stability" in result:
        st = result["stability"]
        panels[f"{st['family']} to {st['steps']} steps (stability)"] = st
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.2 * (len(panels) + 1), 4.2))
    H = result["config"]["horizon"]
    for ax, (fam, ev) in zip(axes, panels.items()):
        steps = np.asarray(ev.get("curve_steps", ev["steps"]))
        for i, (name, s) in enumerate(ev["optimizers"].items()):
            curve = np.asarray([np.nan if x is None else x for x in s["curve"]], np.float64)
            ax.plot(steps, curve, label=name + (" (diverged)" if s["diverged"] else ""), color=f"C{i}")
        ax.axvline(H, color="k", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("inner step (dashed: meta-training horizon H)")
        ax.set_ylabel("training loss (full split, mean over tasks)")
        ax.set_title(f"{fam}: {ev['num_tasks']} fresh tasks")
        ax.legend(fontsize=8)
    ax = axes[-1]
    for i, (name, tr) in enumerate(result["meta_training"].items()):
        y = np.asarray([r["meta_loss"] for r in tr["history"]], np.float64)
        ema = np.empty_like(y)
        acc = y[0]
        for j, v in enumerate(y):
            acc = 0.9 * acc + 0.1 * v if np.isfinite(v) else acc
            ema[j] = acc
        ax.plot(np.arange(1, len(y) + 1), ema, label=name, color=f"C{i}")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("PES meta-loss estimate (EMA 0.9)")
    ax.set_title("meta-training on DigitsMLP")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- study --------------------------------------------------------------------------------


def _paired(ev: dict, a: str, b: str, key: str, statistic: str, log: bool = True) -> dict:
    """Per family, the paired test of optimizer ``a`` against ``b`` over the same fresh tasks."""
    out = {}
    for f, e in ev.items():
        x, y = np.asarray(e["optimizers"][a][key], np.float64), np.asarray(e["optimizers"][b][key], np.float64)
        if log:
            x, y = np.log10(np.maximum(x, 1e-30)), np.log10(np.maximum(y, 1e-30))
        out[f"{f}: {a} vs {b}"] = stats.paired_test(x, y, statistic=f"{statistic}, {a} - {b}",
                                                     unit=f"fresh {f} task x seed ({x.size} x 1)")
    return out


def _pooled(ev: dict, a: str, b: str, key: str, statistic: str) -> dict:
    """One paired test of ``a`` against ``b`` over the tasks of every family (units: family x task)."""
    x = np.concatenate([np.asarray(e["optimizers"][a][key], np.float64) for e in ev.values()])
    y = np.concatenate([np.asarray(e["optimizers"][b][key], np.float64) for e in ev.values()])
    sizes = " + ".join(f"{e['num_tasks']} {f}" for f, e in ev.items())
    return stats.paired_test(x, y, statistic=f"{statistic}, {a} - {b}", unit=f"fresh task x seed ({sizes}, x 1 seed)")


def claims_for(result: dict, nqm: dict) -> list[Claim]:
    """The study's claims from its evaluation (per-task ``diverged_per_task`` and ``final_loss_per_task``)."""
    ev = result["evaluation"]
    star, bb, hp, abl = "star", "blackbox", "hyperparam", "star_no_nominal"
    div = {f: {n: s["diverged_tasks"] for n, s in e["optimizers"].items()} for f, e in ev.items()}
    fin = {f: {n: s["final_loss"] for n, s in e["optimizers"].items()} for f, e in ev.items()}
    H = result["config"]["horizon"]
    fams = list(ev)
    if "stability" in result:  # the MLP tasks read far past the horizon
        st = result["stability"]
        stab_ev = {f"{st['family']}, stability set": st}
        where = "results.json stability.optimizers.*.diverged_per_task"
        at = f"{st['steps'] // H} H = {st['steps']} steps"
        at_10h = "; at 10 H: " + ", ".join(f"{n} {div['digits_mlp'][n]}" for n in (star, bb, hp)) \
            if "digits_mlp" in div else ""
    else:
        stab_ev, where, at, at_10h = ev, "results.json evaluation.*.optimizers.*.diverged_per_task", "10 H", ""
    sdiv = {f: {n: s["diverged_tasks"] for n, s in e["optimizers"].items()} for f, e in stab_ev.items()}
    stable = _pooled(stab_ev, star, bb, "diverged_per_task", f"diverged by {at} (1) or not (0)")
    claims = [Claim(
        "stability_past_H", "STAR stays stable far past its meta-training horizon where Blackbox diverges (Fig. 3-4)",
        "STAR stable to ~100x H; Blackbox diverges past H",
        "; ".join(f"{f}: diverged by {at}: STAR {sdiv[f][star]}/{e['num_tasks']}, Blackbox {sdiv[f][bb]}/{e['num_tasks']}, "
                  f"Hyperparam {sdiv[f][hp]}/{e['num_tasks']}" for f, e in stab_ev.items()) + f" (H = {H}{at_10h})",
        stable["verdict"], f"star.png; {where}", kind="comparative", test=stable)]
    best = stats.combine({**_paired(ev, star, bb, "final_loss_per_task", "log10 loss at 10 H"),
                          **_paired(ev, star, hp, "final_loss_per_task", "log10 loss at 10 H")})
    claims.append(Claim(
        "star_best_learned", "STAR optimizes better than Blackbox and Hyperparam, in and out of distribution",
        "STAR lowest loss (Fig. 3-4)",
        "; ".join(f"{f} at 10 H: STAR {fmt(fin[f][star])}, Blackbox {fmt(fin[f][bb])}, Hyperparam {fmt(fin[f][hp])}"
                  for f in fams),
        best["verdict"], "results.json evaluation.*.optimizers.*.final_loss_per_task", kind="comparative", test=best))
    ablation = stats.combine(_paired(ev, star, abl, "final_loss_per_task",
                                     f"log10 loss at 10 H (diverged at {LOSS_CAP:g})"))
    claims.append(Claim(
        "nominal_term_ablation", "the nominal (Adam) term is what makes STAR stable and fast (ablation)",
        "removing it hurts",
        "; ".join(f"{f}: STAR {fmt(fin[f][star])} ({div[f][star]} diverged) vs without nominal term "
                  f"{fmt(fin[f][abl])} ({div[f][abl]} diverged)" for f in fams),
        ablation["verdict"], "results.json evaluation.*.optimizers.star_no_nominal", kind="comparative", test=ablation))
    claims.append(_fig2a_claim(nqm))
    claims.append(Claim(
        "paper_scale", "the paper's comparisons at its scale (thousands of meta-steps, larger nets, many seeds)",
        "Fig. 3-4", f"{result['config']['meta_steps']} meta-steps, {result['config']['num_tasks']} tasks each",
        "not testable here", "config (full mode is the closer run, for an accelerator)", kind="comparative"))
    return claims


def _fig2a_claim(nqm: dict) -> Claim:
    """Fig. 2a as a bound: the smallest of (max/min trace at the shortest T, growth factors
    between consecutive T) must exceed 1, with every minimum inside the stable range."""
    summ = nqm["summary"]
    ratios = [s["at_largest_alpha"] / s["min"] for s in summ]
    inside = all(0 < s["min_alpha"] < nqm["stability_edge"] for s in summ)
    growth = [b / a for a, b in zip(ratios, ratios[1:])]
    value = min([ratios[0], *growth]) if inside else 0.0
    test = stats.bound_test(value, 1.0, holds_if=">", statistic="min(max/min trace at the shortest T, growth of "
                            "max/min between consecutive T); 0 when a minimum lies outside the stable range")
    test["seeds"] = nqm["num_seeds"]
    return Claim(
        "fig2a_variance", "meta-gradient variance is small inside the stable range and explodes towards its edge, "
        "more for longer horizons (Fig. 2a)", "qualitative (figure)",
        "max/min trace over alpha: " + ", ".join(f"T={s['T']}: {r:.3g}" for s, r in zip(summ, ratios)),
        test["verdict"], "star_nqm.png; results.json nqm.summary", kind="bound", test=test)


def check_config(cfg: dict) -> None:
    """Clear errors for sizes the study cannot run with."""
    for k in ("horizon", "meta_steps", "num_tasks", "mlp_tasks", "conv_tasks", "tune_tasks", "eval_every",
              "stability_horizons", "stability_eval_every", "workers"):
        if not isinstance(cfg.get(k), int) or cfg[k] < 1:
            raise ValueError(f"STAR study: config[{k!r}] must be a positive integer, got {cfg.get(k)!r}")
    if cfg["mlp_tasks"] < 2 or cfg["conv_tasks"] < 2:
        raise ValueError("STAR study: the paired tests need at least 2 tasks per family "
                         f"(mlp_tasks={cfg['mlp_tasks']}, conv_tasks={cfg['conv_tasks']})")
    if cfg["stability_horizons"] < 10:
        raise ValueError(f"STAR study: stability_horizons must be >= 10 (the loss comparisons read 10 H), "
                         f"got {cfg['stability_horizons']}")
    if (10 * cfg["horizon"]) % cfg["stability_eval_every"]:
        raise ValueError(f"STAR study: stability_eval_every ({cfg['stability_eval_every']}) must divide 10 H = "
                         f"{10 * cfg['horizon']}, so the MLP runs are read at 10 H exactly")


def run(out_dir: str | Path = "results/star", *, quick: bool = False, seed: int = 0, log=print,
        config: dict | None = None) -> dict:
    """Run the study and write ``star.png``, ``star_nqm.png``, ``report.md`` and ``results.json``.

    ``config`` overrides entries of ``QUICK``/``FULL`` (tests use smaller sizes), and may
    restrict ``families`` (names) and the ``adam_grid``.
    """
    start_all = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(QUICK if quick else FULL)
    cfg.update(nominal_step=1e-3, **(config or {}))
    check_config(cfg)
    H, S = cfg["horizon"], cfg["stability_horizons"]
    mlp = tasks.DigitsMLP(hidden=tuple(cfg["mlp_hidden"]), batch_size=cfg["batch_size"])
    conv = tasks.DigitsConvNet(channels=tuple(cfg["conv_channels"]), batch_size=cfg["batch_size"])
    # Threads would launch the programs of several processes in different orders: one worker then.
    workers = cfg["workers"] if jax.process_count() == 1 else 1
    log(f"STAR study ({'quick' if quick else 'full'}, {workers} worker thread(s)): {cfg}")
    learned = {"blackbox": (ldco.Blackbox(), 0.0), "hyperparam": (ldco.Hyperparam(nominal_step=cfg["nominal_step"]), 0.0),
               "star": (ldco.STAR(nominal_step=cfg["nominal_step"]), cfg["star_weight_decay"][0]),
               "star_no_nominal": (ldco.STAR(nominal_step=0.0), cfg["star_weight_decay"][0])}

    root = jax.random.PRNGKey(seed)
    k_meta, k_eval_tasks, k_eval, k_tune_tasks, k_tune = jax.random.split(root, 5)
    grid = tuple(cfg.get("adam_grid", ADAM_GRID))
    # (name, family, tasks, steps the learned optimizers run, recording interval, XLA options)
    plan = [p for p in (("digits_mlp", mlp, cfg["mlp_tasks"], S * H, cfg["stability_eval_every"], LONG_RUN_OPTIONS),
                        ("digits_convnet", conv, cfg["conv_tasks"], 10 * H, cfg["eval_every"], None))
            if p[0] in cfg.get("families", (p[0],))]
    # sweeps and evaluations: task batches split over every device of every process
    batches = {name: distributed.shard_tasks(tasks.sample_tasks(family, jax.random.fold_in(k_eval_tasks, f), n))
               for f, (name, family, n, *_) in enumerate(plan)}

    def learned_job(i: int, name: str):
        lopt, wd = learned[name]
        meta, history, seconds, skipped = meta_train(name, lopt, mlp, cfg, wd, jax.random.fold_in(k_meta, i), log=log)
        evs, secs = {}, {}
        for fam_name, family, n, steps, every, options in plan:
            t0 = time.perf_counter()
            evs[fam_name] = evaluate(lopt.opt_fn, jax.tree.map(lambda x: x[None], meta), family, batches[fam_name],
                                     k_eval, steps, every, options)
            secs[fam_name] = time.perf_counter() - t0
            log(f"  [{name}] {fam_name}: {n} tasks x {steps} steps ({secs[fam_name]:.0f} s)")
        return meta, history, seconds, skipped, evs, secs

    def adam_job(f: int):
        fam_name, family, n, _, every, _ = plan[f]
        t0 = time.perf_counter()
        tune = distributed.shard_tasks(tasks.sample_tasks(family, jax.random.fold_in(k_tune_tasks, f), cfg["tune_tasks"]))
        lr, scores = tune_adam(family, tune, k_tune, 10 * H, grid)
        ev = evaluate(_adam, jnp.asarray([lr]), family, batches[fam_name], k_eval, 10 * H, every)
        log(f"  [adam] {fam_name}: learning rate {lr:g} ({time.perf_counter() - t0:.0f} s)")
        return lr, scores, ev, time.perf_counter() - t0

    def nqm_job():
        return star_nqm.figure2a(seed=seed, num_seeds=cfg.get("nqm_seeds", 500), num_alphas=cfg.get("nqm_alphas", 50))

    with ThreadPoolExecutor(max_workers=workers) as pool:  # longest jobs first
        learned_futures = {name: pool.submit(learned_job, i, name) for i, name in enumerate(learned)}
        adam_futures = [pool.submit(adam_job, f) for f in range(len(plan))]
        nqm_future = pool.submit(nqm_job)
        jobs = {name: fut.result() for name, fut in learned_futures.items()}
        adam = [fut.result() for fut in adam_futures]
        nqm = nqm_future.result()

    result = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
              "meta_training": {}, "evaluation": {}}
    timing = {"workers": workers, "meta_training": {}, "evaluation": {}, "adam": {}, "nqm": nqm["seconds"]}
    for name, (meta, history, seconds, skipped, _, secs) in jobs.items():
        lopt, wd = learned[name]
        result["meta_training"][name] = {
            "optimizer": repr(lopt), "weight_decay_factor": wd, "seconds": seconds, "skipped_updates": skipped,
            "meta_parameters": int(sum(np.size(x) for x in jax.tree.leaves(meta))), "history": history}
        timing["meta_training"][name] = seconds
        timing["evaluation"][name] = secs
    for (fam_name, _, n, steps, every, _), (lr, scores, adam_ev, secs) in zip(plan, adam):
        timing["adam"][fam_name] = secs
        fam_result = {"num_tasks": n, "adam_learning_rate": lr, "adam_grid": list(grid), "adam_grid_scores": scores,
                      "steps": adam_ev.steps.tolist(), "optimizers": {}}
        for name in learned:
            fam_result["optimizers"][name] = summarise(jobs[name][4][fam_name], 0, H, upto=10 * H)
        fam_result["optimizers"]["adam"] = summarise(adam_ev, 0, H)
        for name, s in fam_result["optimizers"].items():
            log(f"  {fam_name}: {name:16s} at H {fmt(s['loss_at_H'])}, at 10H {fmt(s['final_loss'])}, "
                f"diverged {s['diverged_tasks']}/{s['num_tasks']}")
        result["evaluation"][fam_name] = fam_result
    if "digits_mlp" in batches:
        n = cfg["mlp_tasks"]
        st = {"family": "digits_mlp", "num_tasks": n, "steps": S * H, "optimizers": {}}
        for name in learned:
            ev = jobs[name][4]["digits_mlp"]
            s = summarise(ev, 0, H)
            st["curve_steps"] = ev.steps.tolist()
            st["optimizers"][name] = {k: s[k] for k in ("diverged_tasks", "diverged", "diverged_per_task", "final_loss",
                                                        "final_loss_per_task", "num_tasks", "curve")}
            log(f"  stability set ({n} MLP tasks, {S} H = {S * H} steps): {name:16s} diverged "
                f"{s['diverged_tasks']}/{n}")
        result["stability"] = st
    result["timing"] = timing
    plot(result, out / "star.png")
    star_nqm.plot(nqm, out / "star_nqm.png")
    result["nqm"] = nqm

    rows = ["| family | optimizer | at H | at 10 H | best (step) | diverged tasks |", "|---|---|---|---|---|---|"]
    for fam, e in result["evaluation"].items():
        for name, s in e["optimizers"].items():
            label = f"Adam (lr {e['adam_learning_rate']:g})" if name == "adam" else name
            rows.append(f"| {fam} | {label} | {fmt(s['loss_at_H'])} | {fmt(s['final_loss'])} | "
                        f"{fmt(s['best_loss'])} ({s['best_step']}) | {s['diverged_tasks']} / {s['num_tasks']} |")
    if "stability" in result:
        st = result["stability"]
        rows += ["", f"Stability: the same {st['num_tasks']} MLP tasks run on to {st['steps']} steps ({S} H) by the "
                 "learned optimizers (the units of the stability claim):", "",
                 f"| optimizer | at {S} H (mean) | diverged tasks by 10 H | diverged tasks by {S} H |", "|---|---|---|---|"]
        mlp_ev = result["evaluation"].get("digits_mlp", {"optimizers": {}})["optimizers"]
        rows += [f"| {name} | {fmt(o['final_loss'])} | {mlp_ev[name]['diverged_tasks']} / {o['num_tasks']} | "
                 f"{o['diverged_tasks']} / {o['num_tasks']} |" for name, o in st["optimizers"].items()]
    nrows = ["| T | min trace | at alpha | at the largest alpha |", "|---|---|---|---|"]
    nrows += [f"| {s['T']} | {s['min']:.3g} | {s['min_alpha']:.2f} | {s['at_largest_alpha']:.3g} |" for s in nqm["summary"]]
    sizes = ", ".join(f"{n} {fam}" for fam, _, n, *_ in plan)
    body = "\n".join([
        "## Out-of-horizon stability (MLP meta-training, MLP and ConvNet application)", "", "![star](star.png)", "",
        f"H = {H}; {cfg['meta_steps']} PES meta-steps of {cfg['num_tasks']} tasks; MLP hidden {tuple(cfg['mlp_hidden'])}, "
        f"ConvNet channels {tuple(cfg['conv_channels'])}, batch {cfg['batch_size']}. Mean full-training-split loss at "
        f"10 H = {10 * H} steps over fresh tasks ({sizes}); `star_no_nominal` is STAR with the nominal term switched "
        "off (nominal step 0), the ablation.", "", *rows, "",
        "## Fig. 2a: meta-gradient variance on the noisy quadratic", "", "![nqm](star_nqm.png)", "",
        f"App. B.1 NQM, {nqm['num_seeds']} seeds x {len(nqm['alphas'])} alphas; stability edge "
        f"2/lambda_max = {nqm['stability_edge']:.3g}.", "", *nrows, ""])
    return write_study(out, study=NAME, paper=PAPER, config={"quick": quick, "seed": seed, **result["config"]},
                       claims=claims_for(result, nqm), seconds=time.perf_counter() - start_all, body=body,
                       extra={k: v for k, v in result.items() if k != "config"}, title="STAR study")
