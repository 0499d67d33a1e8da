"""M-L2O study: M-L2O vs vanilla L2O vs transfer learning under a distribution shift.

For each family (LASSO lambda = 0.005, 20 x 40; Quadratic 10-d; Rosenbrock 2-d) we
meta-train the coordinatewise LSTM optimizer (``LSTMOptimizer``: 2 x 20, log/sign
preprocessing, learned GD term) on the training distribution (``shift = 0``) twice, from the
same initial weights, with the same Adam meta-optimizer, horizon and number of meta-steps:

* vanilla L2O: minimise the mean log loss along a T-step unroll (``MetaAdaptation``
  with ``adapt_steps = 0``);
* M-L2O: the same loss *after* one inner adaptation step on the task, differentiated
  through the adaptation (second order).

Then, on held-out tasks from the *shifted* distribution, each task gets 5 test-time
adaptation steps (plain gradient steps on its own unroll loss, step ``alpha``) and the
optimizee is run for ``eval_steps`` from its start with the resulting weights:

* ``ml2o_adapted``: M-L2O + 5 adaptation steps (the paper's method);
* ``vanilla``: vanilla L2O as trained (no adaptation);
* ``transfer``: vanilla L2O fine-tuned with the same 5 steps (the paper's transfer baseline);
* ``ml2o_unadapted``: M-L2O without adaptation (to separate the two effects);
* ``adam``: Adam with its learning rate tuned on the training distribution (a reference).

The adaptation step ``alpha`` for test time is picked per method from a small grid on
separate shifted validation tasks (so the transfer baseline gets its best step too).
Reported per family: mean and median log10 loss curves (plotted: median), the final log10
loss (mean with non-finite values and values above 12 counted as 12, and median) and how many
tasks diverged (non-finite). The verdicts pair the same held-out tasks across methods on that
capped final log10 loss (:mod:`learned_dco.studies.stats`).

Quick mode (``learned-dco reproduce ml2o --quick``): 150 meta-steps per method; full mode:
600. Writes ``ml2o.png``, ``report.md`` and ``results.json``.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_dco as ldco
from learned_dco import meta as M
from learned_dco import tasks
from learned_dco.meta import distributed
from learned_dco.studies import stats
from learned_dco.studies.common import Claim, _pyplot, write_study

NAME = "ml2o"
PAPER = "Yang et al.: M-L2O: Towards Generalizable Learning-to-Optimize by Test-Time Fast Self-Adaptation (ICLR 2023)"

FAMILIES = {
    # name: (training family, shifted test family, what the shift does)
    "lasso": (tasks.Lasso(), tasks.Lasso(shift=0.7), "A -> 2.0 A (curvature x4)"),
    "quadratic": (tasks.Quadratic(), tasks.Quadratic(shift=-1.0), "W -> 0.37 W (curvature x0.14)"),
    "rosenbrock": (tasks.Rosenbrock(), tasks.Rosenbrock(shift=-1.5), "start mean 0 -> -1.5"),
}
ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2)
TEST_STEPS = 5


def meta_train(lopt, family, meta0, *, horizon, adapt_steps, adapt_lr, steps, num_tasks, lr, key):
    est = M.MetaAdaptation(horizon=horizon, num_tasks=num_tasks, adapt_steps=adapt_steps, adapt_lr=adapt_lr,
                           adapt_clip=10.0)
    trainer = M.MetaTrainer(lopt, family, est, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)))
    state, metrics = trainer.train(key, steps, meta=meta0)
    return state.meta, np.asarray(metrics.meta_loss, np.float64), int(state.skipped)


@functools.partial(jax.jit, static_argnames=("lopt", "family", "horizon", "eval_steps", "adapt_steps"))
def evaluate_adapted(lopt, family, meta, test_tasks, key, alpha, *, horizon, eval_steps, adapt_steps):
    """Per task: ``adapt_steps`` adaptation steps, then the log10 loss curve (with the
    adapted unroll loss)."""

    def one(task, k):
        k_adapt, k_eval = jax.random.split(k)
        m = meta if adapt_steps == 0 else M.adapt(lopt, family, meta, task, k_adapt, steps=adapt_steps, lr=alpha,
                                                  horizon=horizon, clip=10.0)
        curve = M.loss_curve(lopt, family, m, task, k_eval, steps=eval_steps)
        return jnp.log10(curve + 1e-12), M.unroll_loss(lopt, family, m, task, k_eval, horizon=horizon)

    n = jax.tree.leaves(test_tasks)[0].shape[0]
    return jax.vmap(one)(test_tasks, jax.random.split(key, n))


def _adapted(*args, **kw):
    """:func:`evaluate_adapted` with its per-task outputs brought to the host (numpy)."""
    return distributed.to_host(evaluate_adapted(*args, **kw))


#: A task whose final log10 loss is non-finite or above this (diverged) scores this in every mean and paired test
#: (and in the choice of the adaptation step).
DIVERGED_LOG10 = 12.0


def _final_per_task(curves) -> np.ndarray:
    """Each task's final log10 loss, non-finite ones and those above :data:`DIVERGED_LOG10` counted as it."""
    return stats.capped(np.asarray(curves, np.float64)[:, -1], DIVERGED_LOG10)


def _final_score(curves):
    return float(np.mean(_final_per_task(curves)))


def run_family(name, train_family, test_family, shift_desc, *, horizon, eval_steps, meta_steps, num_tasks,
               meta_lr, train_alpha, num_test, seed, log=print) -> dict:
    start = time.perf_counter()
    k_meta, k_init, k_val, k_test, k_eval, k_adam = jax.random.split(jax.random.PRNGKey(seed), 6)
    lopt = ldco.LSTMOptimizer()
    example = train_family.init_params(k_init, train_family.sample(k_init))
    meta0 = lopt.init(k_init, example)
    # A sensible GD step for the untrained optimizer: the tuned SGD rate on the training family.
    train_tasks = distributed.shard_tasks(tasks.sample_tasks(train_family, k_init, 32))  # over every device
    sgd = M.tune_learning_rate("sgd", train_family, train_tasks, k_init, eval_steps)
    meta0 = dict(meta0, log_lr=jnp.log(jnp.asarray(sgd.learning_rate, jnp.float32)))
    trained, meta_loss, skipped, seconds = {}, {}, {}, {}
    for method, k in (("vanilla", 0), ("ml2o", 1)):
        t0 = time.perf_counter()
        trained[method], meta_loss[method], skipped[method] = meta_train(
            lopt, train_family, meta0, horizon=horizon, adapt_steps=k, adapt_lr=train_alpha, steps=meta_steps,
            num_tasks=num_tasks, lr=meta_lr, key=k_meta)
        seconds[method] = time.perf_counter() - t0
        log(f"  {name}: {method} meta-loss {meta_loss[method][:10].mean():.3f} -> {meta_loss[method][-10:].mean():.3f} "
            f"({seconds[method]:.0f} s, {skipped[method]} skipped)")
    val_tasks = distributed.shard_tasks(tasks.sample_tasks(test_family, k_val, 16))
    test_tasks = distributed.shard_tasks(tasks.sample_tasks(test_family, k_test, num_test))
    kw = dict(horizon=horizon, eval_steps=eval_steps)
    chosen = {}
    for method in ("ml2o", "transfer"):
        weights = trained["ml2o" if method == "ml2o" else "vanilla"]
        scores = [_final_score(_adapted(lopt, test_family, weights, val_tasks, k_eval, a,
                                                adapt_steps=TEST_STEPS, **kw)[0]) for a in ALPHAS]
        chosen[method] = {"alpha": ALPHAS[int(np.argmin(scores))], "val_scores": scores}
    curves = {
        "ml2o_adapted": _adapted(lopt, test_family, trained["ml2o"], test_tasks, k_eval, chosen["ml2o"]["alpha"],
                                         adapt_steps=TEST_STEPS, **kw),
        "transfer": _adapted(lopt, test_family, trained["vanilla"], test_tasks, k_eval,
                                     chosen["transfer"]["alpha"], adapt_steps=TEST_STEPS, **kw),
        "vanilla": _adapted(lopt, test_family, trained["vanilla"], test_tasks, k_eval, 1.0, adapt_steps=0, **kw),
        "ml2o_unadapted": _adapted(lopt, test_family, trained["ml2o"], test_tasks, k_eval, 1.0, adapt_steps=0,
                                           **kw),
        "untrained": _adapted(lopt, test_family, meta0, test_tasks, k_eval, 1.0, adapt_steps=0, **kw),
    }
    adam = M.tune_learning_rate("adam", train_family, train_tasks, k_adam, eval_steps)
    adam_curves = distributed.to_host(
        M.evaluate(M.BASELINES["adam"], adam.learning_rate, test_family, test_tasks, k_eval, eval_steps))
    out = {"shift": shift_desc, "train_family": repr(train_family), "test_family": repr(test_family),
           "settings": {"horizon": horizon, "eval_steps": eval_steps, "meta_steps": meta_steps,
                        "tasks_per_meta_step": num_tasks, "meta_lr": meta_lr, "train_adapt_steps": 1,
                        "train_alpha": train_alpha, "test_adapt_steps": TEST_STEPS, "alpha_grid": list(ALPHAS),
                        "num_test": num_test, "adapt_grad_clip": 10.0,
                        "initial_gd_step": sgd.learning_rate, "adam_lr": adam.learning_rate},
           "chosen_alpha": chosen, "meta_loss": {k: v.tolist() for k, v in meta_loss.items()},
           "skipped_meta_updates": skipped, "meta_train_seconds": seconds, "curves": {}, "final_log10": {}, "final_log10_per_task": {},
           "final_median_log10": {}, "diverged_tasks": {},
           "unroll_loss_after_adaptation": {}}
    for method, (c, unroll) in curves.items():
        c = np.asarray(c, np.float64)
        out["curves"][method] = {"mean_log10": np.nanmean(c, 0).tolist(), "median_log10": np.nanmedian(c, 0).tolist()}
        out["final_log10"][method] = _final_score(c)
        out["final_log10_per_task"][method] = _final_per_task(c).tolist()
        out["final_median_log10"][method] = float(np.median(np.where(np.isfinite(c[:, -1]), c[:, -1], np.inf)))
        out["diverged_tasks"][method] = int(np.sum(~np.isfinite(c[:, -1])))
        out["unroll_loss_after_adaptation"][method] = float(np.nanmean(np.asarray(unroll)))
    c = np.log10(np.asarray(adam_curves.train, np.float64) + 1e-12)
    out["curves"]["adam"] = {"mean_log10": np.nanmean(c, 0).tolist(), "median_log10": np.nanmedian(c, 0).tolist()}
    out["final_log10"]["adam"] = _final_score(c)
    out["final_log10_per_task"]["adam"] = _final_per_task(c).tolist()
    out["final_median_log10"]["adam"] = float(np.median(np.where(np.isfinite(c[:, -1]), c[:, -1], np.inf)))
    out["diverged_tasks"]["adam"] = int(np.sum(~np.isfinite(c[:, -1])))
    log(f"  {name}: final log10 loss, mean (non-finite or > 12 counted as 12) / median / diverged: " + ", ".join(
        f"{k}={v:.3f}/{out['final_median_log10'][k]:.3f}/{out['diverged_tasks'][k]}" for k, v in out["final_log10"].items()))
    out["seconds"] = time.perf_counter() - start
    return out


def plot(data: dict, path: Path) -> None:
    plt = _pyplot()

    names = [n for n in FAMILIES if n in data["families"]]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.3))
    axes = np.atleast_1d(axes)
    styles = {"ml2o_adapted": ("M-L2O + 5 adaptation steps", "C3", "-"),
              "transfer": ("vanilla L2O + 5 fine-tuning steps", "C0", "-"),
              "vanilla": ("vanilla L2O", "C0", "--"), "ml2o_unadapted": ("M-L2O, not adapted", "C3", ":"),
              "untrained": ("untrained (GD term only)", "C7", ":"), "adam": ("Adam (tuned on train dist.)", "C1", "-.")}
    for ax, name in zip(axes, names):
        res = data["families"][name]
        for key, (label, color, ls) in styles.items():
            y = res["curves"][key]["median_log10"]
            ax.plot(range(len(y)), y, ls, color=color, label=label)
        ax.set_title(f"{name}: test shift {res['shift']}", fontsize=9)
        ax.set_xlabel("optimizee step")
        ax.set_ylabel("median log10 loss (held-out shifted tasks)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _compare(fams: dict, a: str, b: str) -> dict:
    """Per family, the paired test of ``a`` against ``b`` on final log10 loss (tasks paired)."""
    return {f"{f}: {a} vs {b}": stats.paired_test(
        r["final_log10_per_task"][a], r["final_log10_per_task"][b],
        statistic=f"final log10 loss, {a} - {b} (diverged = {DIVERGED_LOG10:g})",
        unit=f"held-out shifted task x seed ({len(r['final_log10_per_task'][a])} x 1)") for f, r in fams.items()}


def claims_for(data: dict) -> list[Claim]:
    """The study's claims from its per-family results (``final_log10_per_task`` are the paired units)."""
    fams = data["families"]
    med = {f: r["final_median_log10"] for f, r in fams.items()}
    div = {f: r["diverged_tasks"] for f, r in fams.items()}
    desc = lambda keys: "; ".join(f"{f}: " + ", ".join(f"{k} {med[f][k]:.3g} ({div[f][k]} diverged)" for k in keys)
                                  for f in fams)
    steps = next(iter(fams.values()))["settings"]["meta_steps"]
    transfer = stats.combine(_compare(fams, "ml2o_adapted", "transfer"))
    vanilla = stats.combine(_compare(fams, "ml2o_adapted", "vanilla"))
    helps = stats.combine({**_compare(fams, "ml2o_adapted", "ml2o_unadapted"), **_compare(fams, "transfer", "vanilla")})
    return [
        Claim("ml2o_beats_transfer", "M-L2O + 5 adaptation steps beats vanilla L2O fine-tuned for the same 5 steps "
              "(transfer learning) on out-of-distribution tasks", "M-L2O better (paper's tables/figures)",
              f"median final log10 loss ({steps} meta-steps): " + desc(("ml2o_adapted", "transfer")),
              transfer["verdict"], "ml2o.png; results.json families.*.final_log10_per_task", kind="comparative",
              test=transfer),
        Claim("ml2o_beats_vanilla", "M-L2O with adaptation beats vanilla L2O without adaptation on shifted tasks",
              "better", desc(("ml2o_adapted", "vanilla")), vanilla["verdict"],
              "results.json families.*.final_log10_per_task", kind="comparative", test=vanilla),
        Claim("adaptation_helps", "a few test-time adaptation steps help a learned optimizer under a distribution shift",
              "helps", desc(("ml2o_adapted", "ml2o_unadapted", "transfer", "vanilla")), helps["verdict"],
              "results.json families.*.final_log10_per_task", kind="comparative", test=helps),
        Claim("paper_setup", "the paper's exact optimizee sizes, horizons and adaptation schedule",
              "Sec. 5", "not given in the text we have; our settings are in config", "not testable here", "config",
              kind="comparative"),
    ]


def run(out_dir: str | Path = "results/ml2o", *, quick: bool = False, seed: int = 0, log=print,
        size: dict | None = None) -> dict:
    """Run the study; ``size`` overrides ``meta_steps``, ``horizon``, ``eval_steps``, ``tasks``,
    ``num_test`` and ``families`` (a list of names in ``FAMILIES``)."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(meta_steps=150 if quick else 600, horizon=20, eval_steps=40, tasks=8, num_test=32,
               families=list(FAMILIES))
    cfg.update(size or {})
    data = {"families": {}}
    for name in cfg["families"]:
        train_family, test_family, desc = FAMILIES[name]
        data["families"][name] = run_family(
            name, train_family, test_family, desc, horizon=cfg["horizon"], eval_steps=cfg["eval_steps"],
            meta_steps=cfg["meta_steps"], num_tasks=cfg["tasks"], meta_lr=1e-3, train_alpha=1e-2,
            num_test=cfg["num_test"], seed=seed, log=log)
    plot(data, out / "ml2o.png")
    methods = ("ml2o_adapted", "transfer", "vanilla", "ml2o_unadapted", "adam")
    rows = ["| method | " + " | ".join(data["families"]) + " |", "|---|" + "---|" * len(data["families"])]
    for m in methods:
        rows.append(f"| {m} | " + " | ".join(f"{r['final_median_log10'][m]:.3g} ({r['diverged_tasks'][m]} diverged)"
                                             for r in data["families"].values()) + " |")
    body = "\n".join(["## Median final log10 loss on shifted held-out tasks", "", "![ml2o](ml2o.png)", "",
                       *rows, "", "Shifts: " + "; ".join(f"{n}: {r['shift']}" for n, r in data["families"].items()), ""])
    return write_study(out, study=NAME, paper=PAPER, config={"quick": quick, "seed": seed, **cfg},
                       claims=claims_for(data), seconds=time.perf_counter() - start, body=body, extra=data,
                       title="M-L2O study")
