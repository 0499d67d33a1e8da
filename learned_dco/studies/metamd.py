"""MetaMD study (meta mirror descent): held-out convergence and how the cost scales.

1. Convergence on held-out tasks after meta-training, against tuned SGD and Adam and the
   learned diagonal DCOG:
   * least squares: ``MatrixLeastSquares`` (64 samples, 16 -> 8 outputs, a shared rotated
     feature covariance of condition number 1000, noise 0.1; params W (16, 8) and b (8,));
     reported as the *excess* training loss f(theta_t) - f* (f* from lstsq);
   * digits MLP (full mode): ``DigitsMLP`` 64-32-10, minibatches of 128.
   Learned optimizers start at GD with the tuned SGD step and are meta-trained with a full
   unroll of T inner steps on fresh tasks, Adam (clipped at global norm 1), on either the
   training loss after T steps ("final") or the mirror-descent regret bound with no
   validation data ("bound": comparator = last iterate; on least squares also the exact
   minimiser, "bound*"). Evaluation: 2T steps (least squares) or 3T (digits) on new tasks.
2. Scaling against a dense DCOGD (B of size p x p) of the same MLP: meta-parameter counts and
   XLA's compiled memory of one meta-gradient through K = 5 inner steps (compiled only, so
   sizes that do not fit still get a number). Times per step are a benchmark
   (``python -m benchmarks.metamd_cost``), not part of the study.

Quick mode: least squares only (100 meta-steps) and the memory of two MLP widths; full
mode: 300 / 100 meta-steps, the digits MLP and four widths.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import learned_dco as ldco
from learned_dco import meta as M
from learned_dco import tasks
from learned_dco.meta import distributed
from learned_dco.studies import stats
from learned_dco.studies.common import Claim, _pyplot, fmt, write_study

NAME = "metamd"
PAPER = "MetaMD: Principled Optimiser Meta-Learning for Deep Learning"

GRID = tuple(float(x) for x in np.logspace(-3, 1, 17))


def _meta_train(lopt, family, estimator, steps, lr, key):
    """Meta-train on fresh tasks from the family every meta-step (a fixed pool of 32
    least-squares tasks was overfitted by the loss-after-T objective: unstable on new tasks)."""
    trainer = M.MetaTrainer(lopt, family, estimator, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)))
    state, metrics = trainer.train(key, steps)
    return state.meta, np.asarray(metrics.meta_loss, np.float64)


def _summary(x, T):
    """Mean and median curves over tasks, each task's value at step ``T`` and at the last step
    (the paired units of the verdicts), and how many tasks ended non-finite."""
    x = np.asarray(x, np.float64)
    return {"mean": x.mean(0).tolist(), "median": np.median(x, 0).tolist(), "per_task_at_T": x[:, T].tolist(),
            "per_task_final": x[:, -1].tolist(), "diverged": int(np.sum(~np.isfinite(x[:, -1])))}


def convergence(name, family, *, T, eval_steps, num_train, num_test, meta_steps, num_tasks, meta_lr, seed,
                optimum=False, log=print) -> dict:
    start = time.perf_counter()
    k_train, k_test, k_tune, k_eval, k_meta = jax.random.split(jax.random.PRNGKey(seed), 5)
    train = tasks.sample_tasks(family, k_train, num_train)
    test = tasks.sample_tasks(family, k_test, num_test)
    f_star = jax.vmap(lambda t: family.loss(family.optimum(t), t))(test) if optimum else None

    def record(curves):
        curves = distributed.to_host(curves)
        out = {"train": _summary(curves.train, T), "val": _summary(curves.val, T)}
        if f_star is not None:
            out["excess_train"] = _summary(np.asarray(curves.train) - np.asarray(f_star)[:, None], T)
        return out

    results, tuned = {}, {}
    # sweeps and evaluations: task batches split over every device of every process
    train_s, test_s = distributed.shard_tasks(train), distributed.shard_tasks(test)
    for base in ("sgd", "adam"):
        t = M.tune_learning_rate(base, family, train_s, k_tune, eval_steps, GRID)
        tuned[base] = t.learning_rate
        results[base] = record(M.evaluate(M.BASELINES[base], t.learning_rate, family, test_s, k_eval, eval_steps))
    lr0 = tuned["sgd"]
    runs = {
        "dcog_final": (ldco.DCOG(learning_rate=lr0), M.FullUnroll(horizon=T, num_tasks=num_tasks, meta_loss="final_train")),
        "metamd_final": (ldco.MetaMD(learning_rate=lr0), M.FullUnroll(horizon=T, num_tasks=num_tasks, meta_loss="final_train")),
        "metamd_bound": (ldco.MetaMD(learning_rate=lr0), M.RegretBound(horizon=T, num_tasks=num_tasks, target="last")),
    }
    if optimum:
        runs["metamd_bound_optimum"] = (ldco.MetaMD(learning_rate=lr0),
                                        M.RegretBound(horizon=T, num_tasks=num_tasks, target="optimum"))
    meta_losses, seconds = {}, {}
    for run, (lopt, est) in runs.items():
        t0 = time.perf_counter()
        learned, meta_losses[run] = _meta_train(lopt, family, est, meta_steps, meta_lr, k_meta)
        seconds[run] = time.perf_counter() - t0
        results[run] = record(M.evaluate(lopt.opt_fn, learned, family, test_s, k_eval, eval_steps))
        if run == "metamd_final":
            init = lopt.init(k_meta, family.init_params(k_meta, jax.tree.map(lambda x: x[0], train)))
            results["gd_init"] = record(M.evaluate(lopt.opt_fn, init, family, test_s, k_eval, eval_steps))
        log(f"  {name}: {run} meta-loss {meta_losses[run][0]:.4g} -> {meta_losses[run][-1]:.4g} "
            f"({seconds[run]:.0f} s)")
    key = "excess_train" if optimum else "train"
    final = {n: {"train" if not optimum else "excess_train": r[key]["mean"][-1], "val": r["val"]["mean"][-1],
                 f"{key}_at_T": r[key]["mean"][T]} for n, r in results.items()}
    for n, f in final.items():
        log(f"  {name}: {n:22s} " + "  ".join(f"{k}={v:.4g}" for k, v in f.items()))
    return {
        "family": type(family).__name__,
        "family_fields": {f: getattr(family, f) for f in family.__dataclass_fields__},
        "settings": {"T": T, "eval_steps": eval_steps, "num_train": num_train, "num_test": num_test,
                     "meta_steps": meta_steps, "tasks_per_meta_step": num_tasks, "meta_lr": meta_lr,
                     "meta_optimizer": "clip_by_global_norm(1) + Adam", "grid": list(GRID),
                     "learned_init": f"GD with the tuned SGD step {lr0}"},
        "tuned_lr": tuned, "curves": results, "final": final,
        "meta_loss": {k: v.tolist() for k, v in meta_losses.items()}, "meta_train_seconds": seconds,
        "seconds": time.perf_counter() - start,
    }


# ------------------------------------------------------------------------------------------
# Cost per step: MetaMD vs dense DCOGD on the same MLP
# ------------------------------------------------------------------------------------------


def step_fns(lopt, family, task, K):
    """``(step, metagrad)``, both jitted: one optimizer step of ``lopt`` from a fresh state on
    ``task``'s sampled batch, and the gradient in ``meta`` of the loss after ``K`` unrolled steps
    (the costs the study and ``benchmarks/metamd_cost.py`` measure)."""
    def inner(meta, params, key):
        tx = lopt.opt_fn(meta)
        batch = family.sample_batch(key, task)
        g = jax.grad(family.loss)(params, task, batch)
        u, _ = tx.update(g, tx.init(params), params)
        return optax.apply_updates(params, u)

    def meta_loss(meta, params, key):
        tx = lopt.opt_fn(meta)

        def body(carry, k):
            p, s = carry
            g = jax.grad(family.loss)(p, task, family.sample_batch(k, task))
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), jax.random.split(key, K))
        return family.loss(p, task, None)

    return jax.jit(inner), jax.jit(jax.grad(meta_loss))


def cost(hidden_sizes, K=5, log=print) -> list[dict]:
    """Meta-parameter counts and compiled meta-gradient memory, MetaMD vs dense DCOGD."""
    rows = []
    for hidden in hidden_sizes:
        family = tasks.DigitsMLP(hidden=tuple(hidden))
        key = jax.random.PRNGKey(0)
        task = family.sample(key)
        params = family.init_params(key, task)
        p = ravel_pytree(params)[0].size
        for name, lopt in (("metamd", ldco.MetaMD(learning_rate=0.1)), ("dcogd", ldco.DCOGD(learning_rate=0.1))):
            abstract = jax.eval_shape(lopt.init, key, params)
            _, metagrad = step_fns(lopt, family, task, K)
            mem = metagrad.lower(abstract, params, key).compile().memory_analysis()
            rows.append({"hidden": list(hidden), "params": int(p), "optimizer": name,
                         "meta_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract))),
                         "meta_grad_argument_MB": mem.argument_size_in_bytes / 2**20,
                         "meta_grad_temp_MB": mem.temp_size_in_bytes / 2**20,
                         "meta_grad_output_MB": mem.output_size_in_bytes / 2**20})
            log("  cost: " + ", ".join(f"{k}={fmt(v)}" for k, v in rows[-1].items()))
    return rows


def plot(data: dict, path: Path) -> None:
    plt = _pyplot()

    fig, axes = plt.subplots(1, 4, figsize=(22, 4.5))
    styles = {"sgd": ("tuned SGD", "C7", "--"), "adam": ("tuned Adam", "C1", "--"), "gd_init": ("GD (MetaMD init)", "C8", ":"),
              "dcog_final": ("DCOG, loss after T", "C2", "-"), "metamd_final": ("MetaMD, loss after T", "C0", "-"),
              "metamd_bound": ("MetaMD, regret bound", "C3", "-"),
              "metamd_bound_optimum": ("MetaMD, bound (exact comparator)", "C4", "-.")}
    panels = [("least_squares", "excess_train", "least squares: f(theta_t) - f*"),
              ("digits_mlp", "train", "digits MLP: training loss"), ("digits_mlp", "val", "digits MLP: validation loss")]
    for ax, (exp, key, title) in zip(axes[:3], panels):
        if exp not in data:
            ax.set_visible(False)
            continue
        res = data[exp]
        for name, (label, color, ls) in styles.items():
            if name in res["curves"]:
                y = res["curves"][name][key]["mean"]
                ax.plot(range(len(y)), y, ls, color=color, label=label)
        ax.axvline(res["settings"]["T"], color="gray", lw=0.6)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("inner step (held-out tasks; grey: meta-training horizon T)")
    if "least_squares" in data:
        axes[0].legend(fontsize=7)
    if "cost" not in data:
        axes[3].set_visible(False)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    rows = data["cost"]
    for name, color in (("metamd", "C0"), ("dcogd", "C3")):
        rs = [r for r in rows if r["optimizer"] == name]
        axes[3].loglog([r["params"] for r in rs], [r["meta_grad_argument_MB"] + r["meta_grad_temp_MB"] for r in rs],
                       "o-", color=color, label=f"{name}: meta-gradient memory (MB)")
        timed = [r for r in rs if "meta_grad_ms" in r]
        axes[3].loglog([r["params"] for r in timed], [r["meta_grad_ms"] for r in timed], "s--", color=color,
                       label=f"{name}: meta-gradient time (ms)")
    axes[3].set_xlabel("MLP parameters p")
    axes[3].set_title("cost vs a dense DCOGD (K = 5 inner steps)", fontsize=9)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _median_at(res, name, key, step):
    return res["curves"][name][key]["median"][step]


#: Excess losses below this are float round-off (f* by lstsq); log10 comparisons floor here.
EXCESS_FLOOR = 1e-10
#: Non-finite (diverged) or larger losses enter the paired comparisons at this value.
LOSS_CAP = 1e6


def _log10(x):
    return np.log10(np.maximum(stats.capped(x, LOSS_CAP), EXCESS_FLOOR))


def claims_for(data: dict) -> list[Claim]:
    """Claims and verdicts from the study's data (per-task values under ``per_task_*``)."""
    ls = data["least_squares"]
    T = ls["settings"]["T"]
    n = ls["settings"]["num_test"]
    unit = f"held-out task x seed ({n} x 1)"
    med = {m: _median_at(ls, m, "excess_train", T) for m in ls["curves"]}
    at_T = {m: _log10(c["excess_train"]["per_task_at_T"]) for m, c in ls["curves"].items()}
    learned = ("metamd_final", "metamd_bound")
    faster = stats.combine({f"{m} vs {b}": stats.paired_test(at_T[m], at_T[b], statistic=f"log10 excess loss at T, {m} - {b}",
                                                              unit=unit)
                            for m in learned for b in ("sgd", "adam")})
    claims = [Claim(
        "ls_faster_than_tuned", "MetaMD's learned mirror map converges faster than tuned SGD/Adam on held-out tasks",
        "faster convergence (paper's figures)",
        f"median excess loss at T={T}: MetaMD (loss after T) {fmt(med['metamd_final'])}, MetaMD (regret bound) "
        f"{fmt(med['metamd_bound'])}, DCOG {fmt(med['dcog_final'])}; tuned SGD {fmt(med['sgd'])}, Adam {fmt(med['adam'])}",
        faster["verdict"], "metamd.png panel 1; results.json least_squares.curves.*.excess_train.per_task_at_T",
        kind="comparative", test=faster)]
    bound = ls["curves"]["metamd_bound"]["excess_train"]
    past = stats.paired_test(_log10(bound["per_task_final"]), _log10(bound["per_task_at_T"]),
                             statistic="log10 excess loss of MetaMD (regret bound), at 2T - at T", unit=unit)
    others = {m: ls["curves"][m]["excess_train"]["mean"][-1] for m in ("metamd_final", "dcog_final")}
    claims.append(Claim(
        "bound_generalises_past_T", "the regret-bound meta-objective (no validation data) gives an optimizer that "
        "keeps converging past the meta-training horizon", "convergence guarantee (bound)",
        f"MetaMD (regret bound) mean excess {fmt(bound['mean'][T])} at T, {fmt(bound['mean'][-1])} at 2T; "
        "loss-after-T objectives at 2T: " + ", ".join(f"{m} {fmt(v)}" for m, v in others.items()),
        past["verdict"], "results.json least_squares.curves.metamd_bound.excess_train", kind="comparative", test=past))
    if "digits_mlp" in data:
        dg = data["digits_mlp"]
        fin = {m: dg["curves"][m]["val"]["mean"][-1] for m in dg["curves"]}
        val = {m: _log10(c["val"]["per_task_final"]) for m, c in dg["curves"].items()}
        dunit = f"held-out task x seed ({dg['settings']['num_test']} x 1)"
        digits = stats.combine({f"metamd_bound vs {b}": stats.paired_test(
            val["metamd_bound"], val[b], statistic=f"log10 final validation loss, metamd_bound - {b}", unit=dunit)
            for b in ("sgd", "adam")})
        claims.append(Claim(
            "digits_mlp", "MetaMD trains a digits MLP better than tuned SGD/Adam", "better (paper's image tasks)",
            f"validation loss at step {dg['settings']['eval_steps']}: MetaMD (bound) {fmt(fin['metamd_bound'])}, "
            f"MetaMD (loss after T) {fmt(fin['metamd_final'])}, SGD {fmt(fin['sgd'])}, Adam {fmt(fin['adam'])}",
            digits["verdict"], "results.json digits_mlp.curves", kind="comparative", test=digits))
    else:
        claims.append(Claim("digits_mlp", "MetaMD trains a digits MLP better than tuned SGD/Adam",
                            "better (paper's image tasks)", "not run in quick mode", "not testable here",
                            "full mode runs it", kind="comparative"))
    rows = data["cost"]
    by = {(tuple(r["hidden"]), r["optimizer"]): r for r in rows}
    hid = sorted({tuple(r["hidden"]) for r in rows}, key=lambda h: by[(h, "metamd")]["params"])
    # scaling: from each width to the next, MetaMD's meta-parameters grow by a smaller factor than the
    # dense B's (widths vs p^2), and at the largest width MetaMD needs fewer meta-parameters and less memory
    grow = lambda h, o: by[(h, o)]["meta_params"]
    mem = lambda h, o: by[(h, o)]["meta_grad_temp_MB"] + by[(h, o)]["meta_grad_argument_MB"]
    slower = all(grow(b_, "metamd") / grow(a_, "metamd") < grow(b_, "dcogd") / grow(a_, "dcogd")
                 for a_, b_ in zip(hid, hid[1:]))
    small = slower and grow(hid[-1], "metamd") < grow(hid[-1], "dcogd") and mem(hid[-1], "metamd") < mem(hid[-1], "dcogd")
    claims.append(Claim(
        "kronecker_scales", "a Kronecker-factored mirror map keeps meta-learning affordable (size linear in layer "
        "widths, not quadratic in parameters)", "scalable (Sec. 3)",
        "; ".join(f"p={by[(h, 'metamd')]['params']}: meta-params {by[(h, 'metamd')]['meta_params']} vs dense "
                  f"{by[(h, 'dcogd')]['meta_params']}, meta-gradient temporaries "
                  f"{by[(h, 'metamd')]['meta_grad_temp_MB']:.3g} vs {by[(h, 'dcogd')]['meta_grad_temp_MB']:.3g} MB"
                  for h in hid), "holds" if small else "fails", "results.json cost", kind="sanity"))
    return claims


def run(out_dir: str | Path = "results/metamd", *, quick: bool = False, seed: int = 0, log=print,
        size: dict | None = None) -> dict:
    """Run the study; ``size`` overrides ``ls_meta_steps``, ``digits_meta_steps`` (0: skip),
    ``ls_tasks`` (train/test tasks), ``widths``."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = (dict(ls_meta_steps=100, digits_meta_steps=0, ls_tasks=32, widths=[[16], [32]]) if quick else
           dict(ls_meta_steps=300, digits_meta_steps=100, ls_tasks=32, widths=[[16], [32], [64], [128, 128]]))
    cfg.update(size or {})
    data = {"least_squares": convergence(
        "least_squares", tasks.MatrixLeastSquares(num_samples=64, dim_in=16, dim_out=8, condition=1000.0),
        T=20, eval_steps=40, num_train=cfg["ls_tasks"], num_test=cfg["ls_tasks"], meta_steps=cfg["ls_meta_steps"],
        num_tasks=8, meta_lr=0.005, seed=seed, optimum=True, log=log)}
    if cfg["digits_meta_steps"]:
        data["digits_mlp"] = convergence(
            "digits_mlp", tasks.DigitsMLP(hidden=(32,)), T=20, eval_steps=60, num_train=16, num_test=16,
            meta_steps=cfg["digits_meta_steps"], num_tasks=4, meta_lr=0.005, seed=seed + 1, log=log)
    data["cost"] = cost(cfg["widths"], log=log)
    plot(data, out / "metamd.png")
    ls = data["least_squares"]
    T = ls["settings"]["T"]
    rows = ["| optimizer | median at T | median at 2T | mean at 2T | diverged |", "|---|---|---|---|---|"]
    for n, c in ls["curves"].items():
        e = c["excess_train"]
        rows.append(f"| {n} | {fmt(e['median'][T])} | {fmt(e['median'][-1])} | {fmt(e['mean'][-1])} | "
                    f"{e['diverged']}/{ls['settings']['num_test']} |")
    crow = ["| hidden | params | optimizer | meta-params | meta-gradient args + temporaries (MB) |", "|---|---|---|---|---|"]
    crow += [f"| {r['hidden']} | {r['params']} | {r['optimizer']} | {r['meta_params']} | "
             f"{r['meta_grad_argument_MB'] + r['meta_grad_temp_MB']:.3g} |" for r in data["cost"]]
    body = "\n".join(["## Held-out convergence (least squares: excess training loss f - f*)", "", "![metamd](metamd.png)",
                       "", f"{ls['settings']['num_test']} held-out tasks, T = {T}, {ls['settings']['meta_steps']} "
                       f"meta-steps; tuned learning rates {ls['tuned_lr']}.", "", *rows, "",
                       "## Scaling against a dense DCOGD", "", *crow, ""])
    return write_study(out, study=NAME, paper=PAPER, config={"quick": quick, "seed": seed, **cfg},
                       claims=claims_for(data), seconds=time.perf_counter() - start, body=body, extra=data,
                       title="MetaMD study")
