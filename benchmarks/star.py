"""STAR vs Blackbox vs Hyperparam: meta-train on the digits MLP, apply for 10x the horizon.

Harrison, Metz & Sohl-Dickstein (2022) Sec. 5.3 / Fig. 3-4 scaled to 2 CPU cores:

1. Meta-train ``Blackbox``, ``Hyperparam`` and ``STAR`` (``learned_dco.optimizers.star``)
   on ``DigitsMLP`` tasks for an inner horizon ``H`` with the paper's recipe (App. B):
   ``PES(truncation=50, sigma=0.01, meta_loss="mean_train")`` in ``MetaTrainer``, outer
   AdamW with gradient clipping 1.0 (``star_meta_optimizer``): weight decay
   (x outer lr) on STAR's blackbox weights, none for Blackbox / Hyperparam.
2. Apply each trained optimizer for ``10 H`` steps to fresh ``DigitsMLP`` tasks and to
   ``DigitsConvNet`` tasks (never seen in meta-training), next to Adam whose learning rate
   is tuned (half-decade grid, lowest mean final training loss over ``10 H`` steps on
   separate tuning tasks of the same family).
3. Report, per family and optimizer, the full-training-split loss (mean over tasks) at
   step ``H`` and at ``10 H`` (final), its best value, and whether a run diverged
   (non-finite, or final loss > 10x its own minimum; counted per task).

Evaluation loop: a Python loop of one jitted step (tasks and configurations vmapped), the
full training loss every ``eval_every`` steps. ``learned_dco.meta.rollout`` evaluates the
training and validation splits after *every* step inside ``lax.scan``; at 10 H steps that is
most of the cost here, and XLA:CPU runs convolutions inside ``lax.scan`` ~10x slower than
the same step called from Python, so the ConvNet could not be afforded through it.

    python -m benchmarks.star            # quick: ~18 min on 2 CPU cores (sizes in the output)
    python -m benchmarks.star --full     # larger sizes (hours on CPU)

Writes ``benchmarks/results/star.json`` and ``star.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_dco as ldco
from benchmarks.common import RESULTS, table, write_json
from learned_dco import meta as lmeta
from learned_dco import tasks

QUICK = dict(
    horizon=100, meta_steps=200, num_tasks=4, outer_lr=1e-3, star_weight_decay=(0.5,),
    mlp_hidden=(32, 32), conv_channels=(8, 16, 16), batch_size=64,
    eval_tasks=4, tune_tasks=2, eval_every=20,
)
FULL = dict(
    horizon=500, meta_steps=2000, num_tasks=8, outer_lr=3e-4, star_weight_decay=(0.1, 0.5),
    mlp_hidden=(128, 128), conv_channels=(32, 64, 64), batch_size=128,
    eval_tasks=8, tune_tasks=4, eval_every=50,
)
ADAM_GRID = tuple(float(x) for x in np.logspace(-4, -1, 7))  # half-decade steps (STAR App. B.3)


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
    def step(config, params, state, t):
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
        steps, losses = [0], [np.asarray(task_loss(p, task_batch))]
        for t in range(num_steps):
            p, s = step(config, p, s, jnp.asarray(t))
            if (t + 1) % eval_every == 0 or t + 1 == num_steps:
                steps.append(t + 1)
                losses.append(np.asarray(task_loss(p, task_batch)))
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
        "curve": [None if not np.isfinite(x) else float(x) for x in mean],
    }


def tune_adam(family, task_batch, key, num_steps: int, eval_every: int) -> tuple[float, list]:
    """Adam's learning rate with the lowest mean final training loss (diverged: inf)."""
    lrs = jnp.asarray(ADAM_GRID)
    ev = evaluate(lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8), lrs, family, task_batch, key, num_steps, eval_every)
    final = ev.train_loss[:, :, -1]
    scores = np.where(np.all(np.isfinite(final), axis=1), np.mean(final, axis=1), np.inf)
    return float(ADAM_GRID[int(np.argmin(scores))]), [float(x) for x in scores]


# --- meta-training ------------------------------------------------------------------------


def meta_train(name, lopt, family, cfg, weight_decay: float, key, log_every: int = 25) -> tuple:
    estimator = lmeta.PES(
        horizon=cfg["horizon"], truncation=min(50, cfg["horizon"]), num_tasks=cfg["num_tasks"],
        sigma=0.01, meta_loss="mean_train",
    )
    meta_opt = ldco.star_meta_optimizer(cfg["outer_lr"], weight_decay_factor=weight_decay, clip=1.0)
    trainer = lmeta.MetaTrainer(lopt, family, estimator, meta_opt, devices=jax.devices()[:1])
    state = trainer.init(key)
    history = []
    start = time.perf_counter()

    def on_step(k, record):
        history.append({key_: record[key_] for key_ in ("meta_loss", "train_loss", "grad_norm", "nonfinite_tasks", "skipped")})
        if (k + 1) % log_every == 0 or k == 0:
            print(f"  [{name}] meta-step {k + 1}/{cfg['meta_steps']}: meta-loss {record['meta_loss']:.4f} "
                  f"train {record['train_loss']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    state = trainer.run(state, cfg["meta_steps"], progress=False, on_step=on_step)
    return state.meta, history, time.perf_counter() - start, int(state.skipped)


# --- plotting -----------------------------------------------------------------------------


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# --- main ---------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="larger sizes (see FULL)")
    for name in ("horizon", "meta_steps", "num_tasks", "eval_tasks", "tune_tasks", "eval_every", "batch_size"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    ap.add_argument("--outer-lr", type=float, default=None)
    ap.add_argument("--star-weight-decay", type=float, nargs="+", default=None,
                    help="STAR outer weight decay factor(s), x outer lr (paper: 0.1-0.5)")
    ap.add_argument("--nominal-step", type=float, default=1e-3, help="Hyperparam/STAR nominal step (paper: 1e-3)")
    ap.add_argument("--direction-init", choices=("default", "random"), default="default",
                    help="'random': the paper's random direction head for Blackbox and STAR "
                         "(library defaults: Blackbox 'descent', STAR 'zero')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=str, default=None, help=f"output directory (default {RESULTS})")
    args = ap.parse_args(argv)

    cfg = dict(FULL if args.full else QUICK)
    for k in list(cfg):
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = tuple(v) if isinstance(v, list) else v
    cfg.update(nominal_step=args.nominal_step, direction_init=args.direction_init, seed=args.seed, full=args.full)
    H = cfg["horizon"]
    mlp = tasks.DigitsMLP(hidden=cfg["mlp_hidden"], batch_size=cfg["batch_size"])
    conv = tasks.DigitsConvNet(channels=cfg["conv_channels"], batch_size=cfg["batch_size"])
    print(f"STAR benchmark ({'full' if args.full else 'quick'}): {cfg}", flush=True)

    init_kw = {} if args.direction_init == "default" else {"direction_init": "random"}
    learned = {"blackbox": (ldco.Blackbox(**init_kw), 0.0), "hyperparam": (ldco.Hyperparam(nominal_step=args.nominal_step), 0.0)}
    for wd in cfg["star_weight_decay"]:
        learned[f"star_wd{wd:g}"] = (ldco.STAR(nominal_step=args.nominal_step, **init_kw), wd)

    root = jax.random.PRNGKey(args.seed)
    k_meta, k_eval_tasks, k_eval, k_tune_tasks, k_tune = jax.random.split(root, 5)

    result = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
              "meta_training": {}, "evaluation": {}}
    metas = {}
    for i, (name, (lopt, wd)) in enumerate(learned.items()):
        print(f"meta-training {name} ({type(lopt).__name__}, weight decay {wd} x lr)", flush=True)
        meta, history, seconds, skipped = meta_train(name, lopt, mlp, cfg, wd, jax.random.fold_in(k_meta, i))
        metas[name] = meta
        result["meta_training"][name] = {
            "optimizer": repr(lopt), "weight_decay_factor": wd, "seconds": seconds, "skipped_updates": skipped,
            "meta_parameters": ldco.optimizers.star.count_meta_parameters(meta), "history": history,
        }

    num_steps = 10 * H
    rows = []
    for f, (fam_name, family) in enumerate((("digits_mlp", mlp), ("digits_convnet", conv))):
        eval_tasks = tasks.sample_tasks(family, jax.random.fold_in(k_eval_tasks, f), cfg["eval_tasks"])
        tune_tasks = tasks.sample_tasks(family, jax.random.fold_in(k_tune_tasks, f), cfg["tune_tasks"])
        start = time.perf_counter()
        lr, scores = tune_adam(family, tune_tasks, k_tune, num_steps, cfg["eval_every"])
        print(f"{fam_name}: Adam learning rate {lr:g} (grid {ADAM_GRID}, scores {np.round(scores, 4).tolist()}; "
              f"{time.perf_counter() - start:.0f} s)", flush=True)
        fam_result = {"num_tasks": cfg["eval_tasks"], "adam_learning_rate": lr, "adam_grid": list(ADAM_GRID),
                      "adam_grid_scores": scores, "optimizers": {}}
        evs = {}
        start = time.perf_counter()
        for name, (lopt, _) in learned.items():
            meta = jax.tree.map(lambda x: x[None], metas[name])
            evs[name] = evaluate(lopt.opt_fn, meta, family, eval_tasks, k_eval, num_steps, cfg["eval_every"])
        evs[f"adam(lr={lr:g})"] = evaluate(lambda c: optax.adam(c, eps=1e-8), jnp.asarray([lr]), family, eval_tasks,
                                           k_eval, num_steps, cfg["eval_every"])
        fam_result["seconds"] = time.perf_counter() - start
        for name, ev in evs.items():
            s = summarise(ev, 0, H)
            fam_result["optimizers"][name] = s
            fam_result["steps"] = ev.steps.tolist()
            rows.append({"family": fam_name, "optimizer": name, **{k: v for k, v in s.items() if k != "curve"}})
        result["evaluation"][fam_name] = fam_result

    print(table(rows, ["family", "optimizer", "loss_at_H", "final_loss", "best_loss", "best_step", "diverged_tasks", "diverged"]))
    result["summary"] = rows
    path = write_json("star", result, args.out)
    plot(result, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
