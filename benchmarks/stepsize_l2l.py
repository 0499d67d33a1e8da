"""Step-size learning-to-learn (Wang et al., ICML 2021), measured.

1. Meta-gradient magnitude |d/d log eta| vs horizon t (1 ... 1000) on a quadratic
   (d = 20, eigenvalues evenly spread in [0.1, 1], so L = 1, f* = 0), for a step below
   and one above 2/L, in float32 and float64, for three computations:
   the last-iterate objective f(w_t) (naive backprop), (1/t) log f(w_t) by naive backprop,
   and (1/t) log f(w_t) by the overflow-free recursion of ``learned_dco.stepsize_l2l``.
   The closed-form (spectral, float64) gradient is recorded as the reference.
2. Train-by-train vs train-by-validation on noisy linear regression with few samples:
   x ~ N(0, I_d), w* ~ N(0, I_d/d), noise 1; TbT meta-trains eta (Adam on log eta, the
   stable (1/t) log objective) on all n samples, TbV runs GD on n/2 and evaluates on the
   other n/2. Held-out quality = population loss 1/2(||w_t - w*||^2 + sigma^2) on new tasks.
   Default size d = 200, n = 100 (scaled 1/5 from the paper); ``--paper`` runs the paper's
   d = 1000, n = 500 (250 + 250), t = 40. Also the learned eta against the horizon t.

    python -m benchmarks.stepsize_l2l [--paper] [--tasks 8] [--out DIR]

Writes ``stepsize_l2l.json`` and ``stepsize_l2l.png`` to ``benchmarks/results`` (or --out).
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import RESULTS, write_json
from learned_dco import stepsize_l2l as S

HORIZONS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
STEPS = {"below 2/L (eta = 1.5/L)": 1.5, "above 2/L (eta = 2.5/L)": 2.5}


def _quadratic(dtype):
    d = 20
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (d, d), jnp.float64))
    H = (q * jnp.linspace(0.1, 1.0, d, dtype=jnp.float64)) @ q.T
    w_star = jax.random.normal(jax.random.PRNGKey(1), (d,), jnp.float64)
    problem = jax.tree.map(lambda x: x.astype(dtype), S.quadratic(H, w_star))
    return problem, jnp.zeros(d, dtype)


@functools.partial(jax.jit, static_argnames=("t",))
def _grads(log_eta, w0, problem, t):
    return {
        "last_naive": jax.grad(S.last_iterate_loss)(log_eta, w0, problem, t),
        "log_naive": jax.grad(S.log_loss_naive)(log_eta, w0, problem, t),
        "log_stable": jax.grad(S.log_loss_stable)(log_eta, w0, problem, t),
    }


def _finite_or_none(x):
    x = float(x)
    return abs(x) if math.isfinite(x) else None


def gradient_vs_horizon() -> dict:
    out = {}
    with jax.enable_x64(True):
        for dtype_name, dtype in (("float32", jnp.float32), ("float64", jnp.float64)):
            problem, w0 = _quadratic(dtype)
            ref_problem, ref_w0 = _quadratic(jnp.float64)
            L = float(S.smoothness(ref_problem))
            rows = {}
            for label, scale in STEPS.items():
                le = jnp.asarray(math.log(scale / L), dtype)
                series = {k: [] for k in ("last_naive", "log_naive", "log_stable", "log_spectral_float64")}
                for t in HORIZONS:
                    g = _grads(le, w0, problem, t)
                    for k, v in g.items():
                        series[k].append(_finite_or_none(v))
                    ref = jax.grad(S.log_loss_spectral)(jnp.float64(math.log(scale / L)), ref_w0, ref_problem, t)
                    series["log_spectral_float64"].append(_finite_or_none(ref))
                first_bad = {k: next((t for t, v in zip(HORIZONS, vs) if v is None), None) for k, vs in series.items()}
                ref = series["log_spectral_float64"]
                first_wrong = {  # non-finite, or more than 1% off the closed-form gradient
                    k: next((t for t, v, r in zip(HORIZONS, series[k], ref)
                             if v is None or abs(v - r) > 1e-2 * abs(r)), None)
                    for k in ("log_naive", "log_stable")
                }
                bound = float(S.log_grad_bound(jnp.float64(math.log(scale / L)), ref_w0, ref_problem))
                rows[label] = {"eta_times_L": scale, "abs_grad": series, "first_nonfinite_t": first_bad,
                               "first_wrong_t": first_wrong, "derived_bound": bound}
            out[dtype_name] = rows
    return {"horizons": list(HORIZONS), "L": 1.0, "dim": 20, "by_dtype": out}


def _held_out(log_eta, problems, tasks, t):
    d = problems.X.shape[-1]
    w = jax.vmap(lambda p: S.gd(log_eta, jnp.zeros(d, p.X.dtype), p, t))(problems)
    return (float(jnp.mean(S.population_loss(w, tasks.w_star, tasks.noise))),
            float(jnp.mean(jax.vmap(S.loss)(w, problems))))


def train_vs_validation(dim: int, n: int, t: int, num_tasks: int, steps: int, horizons) -> dict:
    key_train, key_test = jax.random.split(jax.random.PRNGKey(0))
    tasks = S.sample_regression(key_train, num_tasks, dim, n)
    test = S.sample_regression(key_test, num_tasks, dim, n)
    full, (train, val) = S.all_samples(tasks), S.split(tasks, n // 2)
    test_full, test_half = S.all_samples(test), S.split(test, n // 2)[0]
    L = float(jnp.mean(jax.vmap(S.smoothness)(full)))

    def fit(t_):
        start = time.perf_counter()
        tbt = S.meta_train(full, t_, steps=steps)
        tbv = S.meta_train(train, t_, val, steps=steps)
        return tbt, tbv, time.perf_counter() - start

    tbt, tbv, seconds = fit(t)
    result = {"setting": {"dim": dim, "n": n, "tbv_split": [n // 2, n - n // 2], "t": t, "noise": 1.0,
                          "train_tasks": num_tasks, "test_tasks": num_tasks, "meta_steps": steps,
                          "meta_optimizer": "Adam(0.05) on log eta from eta = 0.01",
                          "objective": "(1/t) log f, stable", "mean_L_all_samples": L},
              "seconds": seconds}
    null_loss = 0.5 * (1.0 + 1.0)  # w = 0: 1/2(||w*||^2 + sigma^2), E||w*||^2 = 1
    for name, f in (("train_by_train", tbt), ("train_by_validation", tbv)):
        pop_all, train_all = _held_out(f.log_eta, test_full, test, t)
        pop_half, _ = _held_out(f.log_eta, test_half, test, t)
        result[name] = {"eta": float(jnp.exp(f.log_eta)), "eta_times_t": float(jnp.exp(f.log_eta)) * t,
                        "eta_times_L": float(jnp.exp(f.log_eta)) * L,
                        "eta_trajectory": np.exp(np.asarray(f.trajectory, np.float64)).tolist(),
                        "population_loss_gd_on_all_n": pop_all, "train_loss_gd_on_all_n": train_all,
                        "population_loss_gd_on_half": pop_half}
    result["population_loss_of_w0"] = null_loss
    sweep = []
    for t_ in horizons:
        a, b, _ = fit(t_)
        sweep.append({"t": t_, "eta_tbt": float(jnp.exp(a.log_eta)), "eta_tbv": float(jnp.exp(b.log_eta)),
                      "eta_tbv_times_t": float(jnp.exp(b.log_eta)) * t_})
    result["eta_vs_t"] = sweep
    return result


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(24, 4.2))
    hz = data["gradients"]["horizons"]
    styles = {"last_naive": ("f(w_t), backprop", "C3", "-"), "log_naive": ("(1/t) log f, naive backprop", "C1", "--"),
              "log_stable": ("(1/t) log f, stable", "C0", "-"), "log_spectral_float64": ("closed form (f64)", "k", ":")}
    panels = [(dt, label) for dt in ("float32", "float64") for label in STEPS]
    for ax, (dt, label) in zip(axes[:4], panels):
        row = data["gradients"]["by_dtype"][dt][label]
        for k, (name, color, ls) in styles.items():
            ys = [np.nan if v is None else max(v, 1e-40) for v in row["abs_grad"][k]]  # 0 drawn at 1e-40
            ax.loglog(hz, ys, ls, color=color, label=name, marker="o", ms=3)
        ax.axhline(row["derived_bound"], color="gray", lw=0.8)
        ax.set_ylim(bottom=1e-41)
        ax.set_title(f"{dt}, {label}", fontsize=9)
        ax.set_xlabel("horizon t")
    axes[0].set_ylabel("|d meta-objective / d log eta|\n(missing: inf/nan; 0 drawn at 1e-40)")
    axes[0].legend(fontsize=7)
    tv = data["train_vs_validation"]
    ts = [r["t"] for r in tv["eta_vs_t"]]
    axes[4].loglog(ts, [r["eta_tbt"] for r in tv["eta_vs_t"]], "o-", label="train-by-train")
    axes[4].loglog(ts, [r["eta_tbv"] for r in tv["eta_vs_t"]], "s-", label="train-by-validation")
    axes[4].loglog(ts, [tv["eta_vs_t"][0]["eta_tbv"] * ts[0] / x for x in ts], "k:", label="~ 1/t")
    s = tv["setting"]
    axes[4].set_title(f"learned eta vs t (d={s['dim']}, n={s['n']})", fontsize=9)
    axes[4].set_xlabel("horizon t")
    axes[4].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", action="store_true", help="d = 1000, n = 500 (250 + 250), t = 40")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300, help="Adam meta-steps on log eta")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    dim, n = (1000, 500) if args.paper else (200, 100)
    data = {"gradients": gradient_vs_horizon(),
            "train_vs_validation": train_vs_validation(dim, n, 40, args.tasks, args.steps, (10, 20, 40, 80, 160))}
    data["seconds"] = time.perf_counter() - start
    out = Path(args.out) if args.out else RESULTS
    path = write_json("stepsize_l2l", data, out)
    plot(data, out / "stepsize_l2l.png")
    tv = data["train_vs_validation"]
    for dt, rows in data["gradients"]["by_dtype"].items():
        for label, row in rows.items():
            print(f"{dt} {label}: first non-finite t {row['first_nonfinite_t']}, first t off the closed form by "
                  f">1% {row['first_wrong_t']}, bound {row['derived_bound']:.3g}, "
                  f"stable |grad| at t=1000 {row['abs_grad']['log_stable'][-1]}")
    for name in ("train_by_train", "train_by_validation"):
        r = tv[name]
        print(f"{name}: eta={r['eta']:.4g} (eta*L={r['eta_times_L']:.3g}, eta*t={r['eta_times_t']:.3g}) "
              f"population loss {r['population_loss_gd_on_all_n']:.4g} (train loss {r['train_loss_gd_on_all_n']:.3g})")
    print("eta vs t:", [(r["t"], round(r["eta_tbt"], 4), round(r["eta_tbv"], 5)) for r in tv["eta_vs_t"]])
    print(f"wrote {path} in {data['seconds']:.0f} s")
    return data


if __name__ == "__main__":
    main()
