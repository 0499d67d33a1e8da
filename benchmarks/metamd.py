"""Meta mirror descent (MetaMD), measured: held-out convergence and per-step cost.

1. Convergence on held-out tasks after meta-training, against tuned SGD and Adam and the
   learned diagonal DCOG:
   * least squares: ``MatrixLeastSquares`` (64 samples, 16 -> 8 outputs, a shared rotated
     feature covariance of condition number 1000, noise 0.1; params W (16, 8) and b (8,));
     reported as the *excess* training loss f(theta_t) - f* (f* from lstsq);
   * digits MLP: ``DigitsMLP`` (64-32-10 by default, ``--full``: 64-128-128-10, STAR's
     width), minibatches of 128, random train/validation split per task.
   Learned optimizers start at GD with the tuned SGD step (DCO paper VI-A style) and are
   meta-trained with a full unroll of T inner steps on fresh tasks from the family,
   Adam (clipped at global norm 1) as the meta-optimizer, on either the training loss after
   T steps ("final") or the mirror-descent regret bound with no validation data ("bound":
   comparator = last iterate; on least squares also the exact minimiser, "bound*"). SGD and
   Adam learning rates are tuned by a grid sweep on a sample of training tasks (final
   validation loss after the evaluation horizon). Evaluation: 2T steps (least squares) or
   3T steps (digits) on new tasks, same starts and minibatches for everyone.
2. Cost per step vs a dense DCOGD (B of size p x p) of the same MLP, for several widths:
   meta-parameter counts, XLA's compiled memory (arguments + temporaries) of one
   meta-gradient through K = 5 inner steps (compiled only, so the dense sizes that do not
   fit still get a number), and interleaved median times of one inner step and of that
   meta-gradient where the dense B fits comfortably.

    python -m benchmarks.metamd [--full] [--meta-steps N] [--part all|convergence|cost] [--out DIR]
"""

from __future__ import annotations

import os

# OpenBLAS's threads (behind jax's CPU LAPACK calls: the Kronecker/Cholesky solves) spin
# against each other on a small shared CPU: a 64x64 triangular solve took ~12 ms instead of
# ~20 us here, so the cost part runs with one OpenBLAS thread (set before numpy/scipy load
# OpenBLAS). The convergence part keeps the default: with one OpenBLAS thread, meta-training
# MetaMD on the regret bound for the digits MLP hung (no CPU use) twice on this machine.
if "--part=cost" in os.sys.argv or ("--part" in os.sys.argv and "cost" in os.sys.argv):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import learned_dco as ldco
from benchmarks.common import RESULTS, interleaved_medians, table, write_json
from learned_dco import meta as M
from learned_dco import tasks

GRID = tuple(float(x) for x in np.logspace(-3, 1, 17))


def _meta_train(lopt, family, estimator, steps, lr, key):
    """Meta-train on fresh tasks from the family every meta-step (a fixed pool of 32
    least-squares tasks was overfitted by the loss-after-T objective: unstable on new tasks)."""
    trainer = M.MetaTrainer(lopt, family, estimator, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)))
    state, metrics = trainer.train(key, steps)
    return state.meta, np.asarray(metrics.meta_loss, np.float64)


def _summary(x):
    x = np.asarray(x, np.float64)
    return {"mean": x.mean(0).tolist(), "median": np.median(x, 0).tolist()}


def convergence(name, family, *, T, eval_steps, num_train, num_test, meta_steps, num_tasks, meta_lr, seed,
                optimum=False, log=print) -> dict:
    start = time.perf_counter()
    k_train, k_test, k_tune, k_eval, k_meta = jax.random.split(jax.random.PRNGKey(seed), 5)
    train = tasks.sample_tasks(family, k_train, num_train)
    test = tasks.sample_tasks(family, k_test, num_test)
    f_star = jax.vmap(lambda t: family.loss(family.optimum(t), t))(test) if optimum else None

    def record(curves):
        out = {"train": _summary(curves.train), "val": _summary(curves.val)}
        if f_star is not None:
            out["excess_train"] = _summary(np.asarray(curves.train) - np.asarray(f_star)[:, None])
        return out

    results, tuned = {}, {}
    for base in ("sgd", "adam"):
        t = M.tune_learning_rate(base, family, train, k_tune, eval_steps, GRID)
        tuned[base] = t.learning_rate
        results[base] = record(M.evaluate(M.BASELINES[base], t.learning_rate, family, test, k_eval, eval_steps))
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
        results[run] = record(M.evaluate(lopt.opt_fn, learned, family, test, k_eval, eval_steps))
        if run == "metamd_final":
            init = lopt.init(k_meta, family.init_params(k_meta, jax.tree.map(lambda x: x[0], train)))
            results["gd_init"] = record(M.evaluate(lopt.opt_fn, init, family, test, k_eval, eval_steps))
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


def _step_fns(lopt, family, task, K):
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


def cost(hidden_sizes, K=5, time_limit_params=6000, log=print) -> list[dict]:
    rows = []
    for hidden in hidden_sizes:
        family = tasks.DigitsMLP(hidden=hidden)
        key = jax.random.PRNGKey(0)
        task = family.sample(key)
        params = family.init_params(key, task)
        p = ravel_pytree(params)[0].size
        fns, metas = {}, {}
        for name, lopt in (("metamd", ldco.MetaMD(learning_rate=0.1)), ("dcogd", ldco.DCOGD(learning_rate=0.1))):
            abstract = jax.eval_shape(lopt.init, key, params)
            step, metagrad = _step_fns(lopt, family, task, K)
            mem = metagrad.lower(abstract, params, key).compile().memory_analysis()
            n_meta = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract)))
            row = {"hidden": list(hidden), "params": int(p), "optimizer": name, "meta_params": n_meta,
                   "meta_grad_argument_MB": mem.argument_size_in_bytes / 2**20,
                   "meta_grad_temp_MB": mem.temp_size_in_bytes / 2**20,
                   "meta_grad_output_MB": mem.output_size_in_bytes / 2**20}
            rows.append(row)
            if p <= time_limit_params:
                metas[name] = lopt.init(key, params)
                fns[name] = (step, metagrad)
        if fns:
            timed = {}
            calls = {}
            for name, (step, metagrad) in fns.items():
                calls[f"{name}/step"] = functools.partial(step, metas[name], params, key)
                calls[f"{name}/meta_grad"] = functools.partial(metagrad, metas[name], params, key)
            timed = interleaved_medians(calls, repeats=15, budget_s=20.0)
            for row in rows[-2:]:
                row["step_ms"] = 1e3 * timed[f"{row['optimizer']}/step"]
                row["meta_grad_ms"] = 1e3 * timed[f"{row['optimizer']}/meta_grad"]
        for row in rows[-2:]:
            log("  cost: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return rows


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="digits MLP 64-128-128-10 and more meta-steps")
    parser.add_argument("--meta-steps", type=int, default=None)
    parser.add_argument("--part", choices=("all", "convergence", "cost"), default="all",
                        help="run one part (the cost part in its own process uses one OpenBLAS thread)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    steps_ls = args.meta_steps or (600 if args.full else 300)
    steps_dg = args.meta_steps or (300 if args.full else 100)
    data = {}
    if args.part in ("all", "convergence"):
        data["least_squares"] = convergence(
            "least_squares", tasks.MatrixLeastSquares(num_samples=64, dim_in=16, dim_out=8, condition=1000.0),
            T=20, eval_steps=40, num_train=32, num_test=32, meta_steps=steps_ls, num_tasks=8, meta_lr=0.005, seed=0,
            optimum=True)
        hidden = (128, 128) if args.full else (32,)
        data["digits_mlp"] = convergence(
            "digits_mlp", tasks.DigitsMLP(hidden=hidden), T=20, eval_steps=60, num_train=16, num_test=16,
            meta_steps=steps_dg, num_tasks=4, meta_lr=0.005, seed=1)
    if args.part in ("all", "cost"):
        data["cost"] = cost([(16,), (32,), (64,), (128, 128)])
    data["seconds"] = time.perf_counter() - start
    out = Path(args.out) if args.out else RESULTS
    name = "metamd" if args.part == "all" else f"metamd_{args.part}"
    path = write_json(name, data, out)
    plot(data, out / f"{name}.png")
    if "cost" in data:
        print(table(data["cost"], ["hidden", "params", "optimizer", "meta_params", "meta_grad_argument_MB",
                                   "meta_grad_temp_MB", "step_ms", "meta_grad_ms"]))
    print(f"wrote {path} in {data['seconds']:.0f} s")
    return data


if __name__ == "__main__":
    main()
