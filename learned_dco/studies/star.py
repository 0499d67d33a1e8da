"""STAR study (Harrison, Metz & Sohl-Dickstein, NeurIPS 2022): stability past the horizon.

Sec. 5.3 / Fig. 3-4 scaled to CPU, Fig. 2a, and the nominal-term ablation:

1. Meta-train ``Blackbox``, ``Hyperparam``, ``STAR`` and STAR *without* its nominal term
   (``nominal_step=0``, the ablation) on ``DigitsMLP`` tasks for an inner horizon ``H``
   with the paper's recipe (App. B): ``PES(truncation=50, sigma=0.01,
   meta_loss="mean_train")``, outer AdamW with gradient clipping 1.0
   (``star_meta_optimizer``; weight decay x outer lr on STAR's blackbox weights only).
2. Apply each trained optimizer for ``10 H`` steps to fresh ``DigitsMLP`` tasks and to
   ``DigitsConvNet`` tasks (never seen in meta-training), next to Adam with its learning
   rate tuned over a half-decade grid on separate tasks of the same family.
3. Per family and optimizer: mean full-training-split loss at ``H``, at ``10 H``, its best
   value, and the tasks that diverged (non-finite, or final > 10x the task's own minimum).
4. Stability set: the learned optimizers alone on ``stability_tasks`` further fresh
   ``DigitsMLP`` tasks for ``10 H`` steps. Divergence is rare, so the stability claim (STAR's
   divergence indicator against Blackbox's, paired over these tasks) needs more tasks than the
   loss comparisons; the MLP is the cheap family to run.
5. Fig. 2a on the App. B.1 noisy quadratic (:mod:`learned_dco.studies.star_nqm`).

Evaluation is a Python loop of one jitted step (tasks vmapped) with the full training loss
every ``eval_every`` steps: XLA:CPU runs convolutions inside ``lax.scan`` ~10x slower than
the same step called from Python.

Quick mode (``learned-dco reproduce star --quick``): H = 50 (so the PES truncation of 50
spans the whole episode), 100 meta-steps, 4 tasks per meta-step, 4 evaluation tasks per
family, 32 tasks in the stability set; full mode: the paper-like sizes of ``FULL`` (H = 500, 2000 meta-steps; hours on CPU).
"""

from __future__ import annotations

import dataclasses
import time
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
    eval_tasks=4, tune_tasks=2, eval_every=20, stability_tasks=32,
)
FULL = dict(
    horizon=500, meta_steps=2000, num_tasks=8, outer_lr=3e-4, star_weight_decay=(0.1, 0.5),
    mlp_hidden=(128, 128), conv_channels=(32, 64, 64), batch_size=128,
    eval_tasks=8, tune_tasks=4, eval_every=50, stability_tasks=64,
)
ADAM_GRID = tuple(float(x) for x in np.logspace(-4, -1, 7))  # half-decade steps (STAR App. B.3)
#: Non-finite (or larger) final losses enter the paired loss comparisons at this value.
LOSS_CAP = 1e6


# --- evaluation ---------------------------------------------------------------------------


@dataclasses.dataclass
class Evaluation:
    steps: np.ndarray  # (E,) evaluation steps, 0 .. num_steps
    train_loss: np.ndarray  # (configs, tasks, E) full-training-split loss


def evaluate(make_tx: Callable, configs, family, task_batch, key, num_steps: int, eval_every: int) -> Evaluation:
    """Run ``make_tx(config)`` on every task for ``num_steps`` steps (tasks vmapped).

    Task ``i`` starts from parameters drawn with ``fold_in(key, i)`` and sees the same
    minibatches for every configuration and every optimizer given the same ``key``.
    """
    n = jax.tree.leaves(task_batch)[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(jnp.arange(n))
    k_init, k_run = keys[:, 0], keys[:, 1]
    params = jax.vmap(family.init_params)(k_init, task_batch)

    def init(config):
        tx = make_tx(config)
        return jax.vmap(tx.init)(params)

    @jax.jit
    def step(config, params, state, t, task_batch, k_run):  # tasks are arguments: they may span other processes
        tx = make_tx(config)

        def one(p, s, task, k):
            batch = family.sample_batch(jax.random.fold_in(k, t), task)
            grads = jax.grad(family.loss)(p, task, batch)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        return jax.vmap(one)(params, state, task_batch, k_run)

    # Configurations run one after another, tasks vmapped: a second vmap (over configs) of
    # the ConvNet's kernel gradient needs conv batching with both feature and batch groups,
    # which XLA/JAX do not implement (NotImplementedError).
    task_loss = jax.jit(jax.vmap(lambda p, task: family.loss(p, task, None)))
    num_configs = jax.tree.leaves(configs)[0].shape[0]
    per_config = []
    for c in range(num_configs):
        config = jax.tree.map(lambda x: x[c], configs)
        p, s = params, init(config)
        steps, losses = [0], [distributed.to_host(task_loss(p, task_batch))]
        for t in range(num_steps):
            p, s = step(config, p, s, jnp.asarray(t), task_batch, k_run)
            if (t + 1) % eval_every == 0 or t + 1 == num_steps:
                steps.append(t + 1)
                losses.append(distributed.to_host(task_loss(p, task_batch)))
        per_config.append(np.stack(losses, axis=-1))
    return Evaluation(np.asarray(steps), np.stack(per_config).astype(np.float64))


def summarise(ev: Evaluation, config: int, horizon: int) -> dict:
    """Mean-over-tasks curve statistics and the per-task divergence count."""
    losses = ev.train_loss[config]  # (tasks, E)
    finite = np.isfinite(losses)
    mean = np.where(np.all(finite, axis=0), np.mean(np.where(finite, losses, 0.0), axis=0), np.inf)
    per_task_min = np.min(np.where(finite, losses, np.inf), axis=1)
    final = losses[:, -1]
    diverged = ~np.isfinite(final) | (final > 10 * per_task_min)
    at_h = int(np.argmin(np.abs(ev.steps - horizon)))
    best = int(np.argmin(mean))
    return {
        "loss_at_H": float(mean[at_h]),
        "final_loss": float(mean[-1]),
        "best_loss": float(mean[best]),
        "best_step": int(ev.steps[best]),
        "diverged_tasks": int(np.sum(diverged)),
        "num_tasks": int(losses.shape[0]),
        "diverged": bool(np.any(diverged)),
        "diverged_per_task": [int(x) for x in diverged],
        "final_loss_per_task": [float(x) for x in stats.capped(final, LOSS_CAP)],
        "curve": [None if not np.isfinite(x) else float(x) for x in mean],
    }


def tune_adam(family, task_batch, key, num_steps: int, eval_every: int, grid=ADAM_GRID) -> tuple[float, list]:
    """Adam's learning rate with the lowest mean final training loss (diverged: inf)."""
    lrs = jnp.asarray(grid)
    ev = evaluate(lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8), lrs, family, task_batch, key, num_steps, eval_every)
    final = ev.train_loss[:, :, -1]
    scores = np.where(np.all(np.isfinite(final), axis=1), np.mean(final, axis=1), np.inf)
    return float(grid[int(np.argmin(scores))]), [float(x) for x in scores]


# --- meta-training ------------------------------------------------------------------------


def meta_train(name, lopt, family, cfg, weight_decay: float, key, log=print) -> tuple:
    """PES meta-training (one jitted ``lax.scan`` of ``cfg["meta_steps"]`` meta-steps)."""
    estimator = lmeta.PES(
        horizon=cfg["horizon"], truncation=min(50, cfg["horizon"]), num_tasks=cfg["num_tasks"],
        sigma=0.01, meta_loss="mean_train",
    )
    meta_opt = ldco.star_meta_optimizer(cfg["outer_lr"], weight_decay_factor=weight_decay, clip=1.0)
    trainer = lmeta.MetaTrainer(lopt, family, estimator, meta_opt, devices=jax.devices()[:1])
    start = time.perf_counter()
    state, metrics = trainer.train(key, cfg["meta_steps"])
    history = [{"meta_loss": float(m), "train_loss": float(t)}
               for m, t in zip(np.asarray(metrics.meta_loss), np.asarray(metrics.train_loss))]
    log(f"  [{name}] {cfg['meta_steps']} meta-steps: meta-loss {history[0]['meta_loss']:.4f} -> "
        f"{history[-1]['meta_loss']:.4f} ({time.perf_counter() - start:.0f} s)")
    return state.meta, history, time.perf_counter() - start, int(state.skipped)


# --- plotting -----------------------------------------------------------------------------


def plot(result: dict, path: Path) -> None:
    plt = _pyplot()

    fams = list(result["evaluation"])
    fig, axes = plt.subplots(1, len(fams) + 1, figsize=(5.2 * (len(fams) + 1), 4.2))
    H = result["config"]["horizon"]
    for ax, fam in zip(axes, fams):
        ev = result["evaluation"][fam]
        steps = np.asarray(ev["steps"])
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


def stability_set(learned: dict, metas: dict, family, cfg: dict, k_tasks, k_eval, num_steps: int, log=print) -> dict:
    """The learned optimizers on ``cfg["stability_tasks"]`` fresh MLP tasks for ``num_steps`` (10 H):
    the paired units of the stability claim (divergence is rare, so it needs more tasks than
    the loss comparisons, and the MLP is the cheap family to evaluate)."""
    n = cfg["stability_tasks"]
    batch = distributed.shard_tasks(tasks.sample_tasks(family, k_tasks, n))
    out = {"family": "digits_mlp", "num_tasks": n, "steps": num_steps, "optimizers": {}}
    for name, (lopt, _) in learned.items():
        ev = evaluate(lopt.opt_fn, jax.tree.map(lambda x: x[None], metas[name]), family, batch, k_eval, num_steps,
                      cfg["eval_every"])
        s = summarise(ev, 0, cfg["horizon"])
        out["optimizers"][name] = {k: s[k] for k in ("diverged_tasks", "diverged_per_task", "final_loss",
                                                       "final_loss_per_task", "num_tasks")}
        log(f"  stability set ({n} MLP tasks): {name:16s} diverged {s['diverged_tasks']}/{n}")
    return out


def claims_for(result: dict, nqm: dict) -> list[Claim]:
    """The study's claims from its evaluation (per-task ``diverged_per_task`` and ``final_loss_per_task``)."""
    ev = result["evaluation"]
    star, bb, hp, abl = "star", "blackbox", "hyperparam", "star_no_nominal"
    div = {f: {n: s["diverged_tasks"] for n, s in e["optimizers"].items()} for f, e in ev.items()}
    fin = {f: {n: s["final_loss"] for n, s in e["optimizers"].items()} for f, e in ev.items()}
    H = result["config"]["horizon"]
    fams = list(ev)
    if "stability" in result:  # the larger set of fresh MLP tasks run for the stability claim
        st = result["stability"]
        stab_ev = {f"{st['family']}, stability set": st}
        where = "results.json stability.optimizers.*.diverged_per_task"
    else:
        stab_ev, where = ev, "results.json evaluation.*.optimizers.*.diverged_per_task"
    sdiv = {f: {n: s["diverged_tasks"] for n, s in e["optimizers"].items()} for f, e in stab_ev.items()}
    stable = _pooled(stab_ev, star, bb, "diverged_per_task", "diverged at 10 H (1) or not (0)")
    claims = [Claim(
        "stability_10xH", "STAR stays stable far past its meta-training horizon where Blackbox can diverge (Fig. 3-4)",
        "STAR stable at 10x H; Blackbox unstable",
        "; ".join(f"{f}: diverged STAR {sdiv[f][star]}/{e['num_tasks']}, Blackbox {sdiv[f][bb]}/{e['num_tasks']}, "
                  f"Hyperparam {sdiv[f][hp]}/{e['num_tasks']}" for f, e in stab_ev.items()) + f" (H = {H}, 10 H = {10 * H})",
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
    H = cfg["horizon"]
    mlp = tasks.DigitsMLP(hidden=tuple(cfg["mlp_hidden"]), batch_size=cfg["batch_size"])
    conv = tasks.DigitsConvNet(channels=tuple(cfg["conv_channels"]), batch_size=cfg["batch_size"])
    log(f"STAR study ({'quick' if quick else 'full'}): {cfg}")
    learned = {"blackbox": (ldco.Blackbox(), 0.0), "hyperparam": (ldco.Hyperparam(nominal_step=cfg["nominal_step"]), 0.0),
               "star": (ldco.STAR(nominal_step=cfg["nominal_step"]), cfg["star_weight_decay"][0]),
               "star_no_nominal": (ldco.STAR(nominal_step=0.0), cfg["star_weight_decay"][0])}

    root = jax.random.PRNGKey(seed)
    k_meta, k_eval_tasks, k_eval, k_tune_tasks, k_tune = jax.random.split(root, 5)
    result = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
              "meta_training": {}, "evaluation": {}}
    metas = {}
    for i, (name, (lopt, wd)) in enumerate(learned.items()):
        meta, history, seconds, skipped = meta_train(name, lopt, mlp, cfg, wd, jax.random.fold_in(k_meta, i), log=log)
        metas[name] = meta
        result["meta_training"][name] = {
            "optimizer": repr(lopt), "weight_decay_factor": wd, "seconds": seconds, "skipped_updates": skipped,
            "meta_parameters": int(sum(np.size(x) for x in jax.tree.leaves(meta))), "history": history}

    num_steps = 10 * H
    grid = tuple(cfg.get("adam_grid", ADAM_GRID))
    families = [(n, fam) for n, fam in (("digits_mlp", mlp), ("digits_convnet", conv)) if n in cfg.get("families", (n,))]
    for f, (fam_name, family) in enumerate(families):
        # sweeps and evaluations: task batches split over every device of every process
        eval_tasks = distributed.shard_tasks(tasks.sample_tasks(family, jax.random.fold_in(k_eval_tasks, f),
                                                                cfg["eval_tasks"]))
        tune_tasks = distributed.shard_tasks(tasks.sample_tasks(family, jax.random.fold_in(k_tune_tasks, f),
                                                                cfg["tune_tasks"]))
        lr, scores = tune_adam(family, tune_tasks, k_tune, num_steps, cfg["eval_every"], grid)
        log(f"  {fam_name}: Adam learning rate {lr:g}")
        fam_result = {"num_tasks": cfg["eval_tasks"], "adam_learning_rate": lr, "adam_grid": list(grid),
                      "adam_grid_scores": scores, "optimizers": {}}
        evs = {}
        for name, (lopt, _) in learned.items():
            evs[name] = evaluate(lopt.opt_fn, jax.tree.map(lambda x: x[None], metas[name]), family, eval_tasks,
                                 k_eval, num_steps, cfg["eval_every"])
        evs["adam"] = evaluate(lambda c: optax.adam(c, eps=1e-8), jnp.asarray([lr]), family, eval_tasks, k_eval,
                               num_steps, cfg["eval_every"])
        for name, ev in evs.items():
            fam_result["optimizers"][name] = summarise(ev, 0, H)
            fam_result["steps"] = ev.steps.tolist()
            s = fam_result["optimizers"][name]
            log(f"  {fam_name}: {name:16s} at H {fmt(s['loss_at_H'])}, at 10H {fmt(s['final_loss'])}, "
                f"diverged {s['diverged_tasks']}/{s['num_tasks']}")
        result["evaluation"][fam_name] = fam_result
    plot(result, out / "star.png")
    if cfg.get("stability_tasks"):
        result["stability"] = stability_set(learned, metas, mlp, cfg, jax.random.fold_in(k_eval_tasks, 100), k_eval,
                                            num_steps, log)

    nqm = star_nqm.figure2a(seed=seed, num_seeds=cfg.get("nqm_seeds", 500), num_alphas=cfg.get("nqm_alphas", 50))
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
        rows += ["", f"Stability set: {st['num_tasks']} further fresh MLP tasks, {st['steps']} steps (10 H), "
                 "learned optimizers only (the units of the stability claim):", "",
                 "| optimizer | at 10 H (mean) | diverged tasks |", "|---|---|---|"]
        rows += [f"| {name} | {fmt(o['final_loss'])} | {o['diverged_tasks']} / {o['num_tasks']} |"
                 for name, o in st["optimizers"].items()]
    nrows = ["| T | min trace | at alpha | at the largest alpha |", "|---|---|---|---|"]
    nrows += [f"| {s['T']} | {s['min']:.3g} | {s['min_alpha']:.2f} | {s['at_largest_alpha']:.3g} |" for s in nqm["summary"]]
    body = "\n".join([
        "## Out-of-horizon stability (MLP meta-training, MLP and ConvNet application)", "", "![star](star.png)", "",
        f"H = {H}, applied for 10 H = {num_steps} steps; {cfg['meta_steps']} PES meta-steps of {cfg['num_tasks']} tasks; "
        f"MLP hidden {tuple(cfg['mlp_hidden'])}, ConvNet channels {tuple(cfg['conv_channels'])}, batch "
        f"{cfg['batch_size']}. Mean full-training-split loss over {cfg['eval_tasks']} fresh tasks; `star_no_nominal` "
        "is STAR with the nominal term switched off (nominal step 0), the ablation.", "", *rows, "",
        "## Fig. 2a: meta-gradient variance on the noisy quadratic", "", "![nqm](star_nqm.png)", "",
        f"App. B.1 NQM, {nqm['num_seeds']} seeds x {len(nqm['alphas'])} alphas; stability edge "
        f"2/lambda_max = {nqm['stability_edge']:.3g}.", "", *nrows, ""])
    return write_study(out, study=NAME, paper=PAPER, config={"quick": quick, "seed": seed, **result["config"]},
                       claims=claims_for(result, nqm), seconds=time.perf_counter() - start_all, body=body,
                       extra={k: v for k, v in result.items() if k != "config"}, title="STAR study")
