"""Step-size learning-to-learn study (Wang et al., ICML 2021): each claim measured.

1. Meta-gradient magnitude |d/d log eta| vs horizon t (1 ... 1000) on a quadratic
   (d = 20, eigenvalues evenly spread in [0.1, 1], so L = 1, f* = 0), for a step below
   and one above 2/L, in float32 and float64, for three computations:
   the last-iterate objective f(w_t) (naive backprop), (1/t) log f(w_t) by naive backprop,
   and (1/t) log f(w_t) by the overflow-free recursion of ``learned_dco.studies.stepsize_l2l``.
   The closed-form (spectral, float64) gradient is recorded as the reference.
2. Train-by-train vs train-by-validation on noisy linear regression with few samples:
   x ~ N(0, I_d), w* ~ N(0, I_d/d), noise 1; TbT meta-trains eta (Adam on log eta, the
   stable (1/t) log objective) on all n samples, TbV runs GD on n/2 and evaluates on the
   other n/2. Held-out quality = population loss 1/2(||w_t - w*||^2 + sigma^2) on new tasks.
   Default size d = 200, n = 100 (scaled 1/5 from the paper); ``--paper`` runs the paper's
   d = 1000, n = 500 (250 + 250), t = 40. Also the learned eta against the horizon t.

Quick mode (``learned-dco reproduce l2l --quick``): d = 200, n = 100 (1/5 of the paper);
full mode: the paper's d = 1000, n = 500. Writes ``l2l.png``, ``report.md`` and
``results.json``.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.studies import stepsize_l2l as S
from learned_dco.studies import stats
from learned_dco.studies.common import Claim, _pyplot, write_study

NAME = "l2l"
PAPER = "Wang et al.: Guarantees for Tuning the Step Size using a Learning-to-Learn Approach (ICML 2021)"

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


def gradient_vs_horizon(horizons=HORIZONS) -> dict:
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
                for t in horizons:
                    g = _grads(le, w0, problem, t)
                    for k, v in g.items():
                        series[k].append(_finite_or_none(v))
                    ref = jax.grad(S.log_loss_spectral)(jnp.float64(math.log(scale / L)), ref_w0, ref_problem, t)
                    series["log_spectral_float64"].append(_finite_or_none(ref))
                first_bad = {k: next((t for t, v in zip(horizons, vs) if v is None), None) for k, vs in series.items()}
                ref = series["log_spectral_float64"]
                first_wrong = {  # non-finite, or more than 1% off the closed-form gradient
                    k: next((t for t, v, r in zip(horizons, series[k], ref)
                             if v is None or abs(v - r) > 1e-2 * abs(r)), None)
                    for k in ("log_naive", "log_stable")
                }
                bound = float(S.log_grad_bound(jnp.float64(math.log(scale / L)), ref_w0, ref_problem))
                rows[label] = {"eta_times_L": scale, "abs_grad": series, "first_nonfinite_t": first_bad,
                               "first_wrong_t": first_wrong, "derived_bound": bound}
            out[dtype_name] = rows
    return {"horizons": list(horizons), "L": 1.0, "dim": 20, "by_dtype": out}


def _held_out(log_eta, problems, tasks, t):
    d = problems.X.shape[-1]
    w = jax.vmap(lambda p: S.gd(log_eta, jnp.zeros(d, p.X.dtype), p, t))(problems)
    pop = np.asarray(S.population_loss(w, tasks.w_star, tasks.noise), np.float64)
    return float(pop.mean()), float(jnp.mean(jax.vmap(S.loss)(w, problems))), pop.tolist()


def train_vs_validation(dim: int, n: int, t: int, num_tasks: int, steps: int, horizons, seed: int = 0) -> dict:
    key_train, key_test = jax.random.split(jax.random.PRNGKey(seed))
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
        pop_all, train_all, pop_per_task = _held_out(f.log_eta, test_full, test, t)
        pop_half, _, _ = _held_out(f.log_eta, test_half, test, t)
        result[name] = {"eta": float(jnp.exp(f.log_eta)), "eta_times_t": float(jnp.exp(f.log_eta)) * t,
                        "eta_times_L": float(jnp.exp(f.log_eta)) * L,
                        "eta_trajectory": np.exp(np.asarray(f.trajectory, np.float64)).tolist(),
                        "population_loss_gd_on_all_n": pop_all, "train_loss_gd_on_all_n": train_all,
                        "population_loss_per_test_task": pop_per_task,
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
    plt = _pyplot()

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
    plt.close(fig)


def _bound(ok: bool, value: float, bound: float, statistic: str, holds_if: str) -> dict:
    """A bound record whose value is replaced by one that fails the bound when ``ok`` is false."""
    fail = {"<": math.inf, "<=": math.inf, ">": -math.inf, ">=": -math.inf}[holds_if]
    return stats.bound_test(value if ok else fail, bound, statistic=statistic, holds_if=holds_if)


def claims_for(data: dict) -> list[Claim]:
    """The study's claims from its data (gradients against t; train-by-train vs train-by-validation)."""
    g = data["gradients"]["by_dtype"]["float64"]
    below, above = g["below 2/L (eta = 1.5/L)"], g["above 2/L (eta = 2.5/L)"]
    hz = data["gradients"]["horizons"]
    lb, la = below["abs_grad"]["last_naive"], above["abs_grad"]["last_naive"]
    vanish = lb[-1] is not None and lb[-1] < 1e-10 * lb[0] if lb[0] else False
    explode = la[-1] is None or la[-1] > 1e30
    ve = _bound(vanish and explode, math.log10(la[-1]) if la[-1] else math.inf, 30.0, holds_if=">",
                statistic=f"log10 |meta-gradient| of f(w_t) at t={hz[-1]}, eta = 2.5/L (inf: overflowed); -inf unless "
                          f"at eta = 1.5/L it fell below 1e-10 of its t={hz[0]} value")
    claims = [Claim(
        "last_iterate_vanish_explode", "meta-gradients of f(w_t) vanish for eta < 2/L and explode for eta > 2/L",
        "polynomially small / exponentially large in t (Thm 3)",
        f"float64 abs. meta-gradient from t={hz[0]} to t={hz[-1]}: eta=1.5/L {lb[0]:.3g} -> "
        f"{'inf' if lb[-1] is None else format(lb[-1], '.3g')}, eta=2.5/L {la[0]:.3g} -> "
        f"{'inf' if la[-1] is None else format(la[-1], '.3g')}",
        ve["verdict"], "l2l.png panels 1-4; results.json gradients", kind="bound", test=ve)]
    rows = [row for rows in data["gradients"]["by_dtype"].values() for row in rows.values()]
    worst = max((v / row["derived_bound"] if v is not None else math.inf)
                for row in rows for v in row["abs_grad"]["log_stable"])
    stable_ok = all(row["first_wrong_t"]["log_stable"] is None for row in rows)
    lo = _bound(stable_ok, worst, 1 + 1e-6, holds_if="<=",
                statistic="largest |stable meta-gradient| / derived bound over every t, float32 and float64 "
                          "(inf if the stable value left the closed form somewhere)")
    claims.append(Claim(
        "log_objective_bounded", "(1/t) log f(w_t) has bounded meta-gradients at every t, computed stably",
        "bounded (Thm 4)", "stable gradient matches the closed form and stays below the derived bound at every t, "
        "float32 and float64" if lo["verdict"] == "reproduced" else
        "stable gradient off the closed form or above the bound somewhere",
        lo["verdict"], "results.json gradients.*.*.first_wrong_t", kind="bound", test=lo))
    naive_bad = {dt: {lbl: row["first_wrong_t"]["log_naive"] for lbl, row in rows_.items()}
                 for dt, rows_ in data["gradients"]["by_dtype"].items()}
    n_bad = sum(v is not None for rows_ in naive_bad.values() for v in rows_.values())
    nb = stats.bound_test(n_bad, 0, holds_if=">", statistic="settings (dtype x step) in which naive backprop of "
                          "(1/t) log f went non-finite or more than 1% off the closed form")
    claims.append(Claim(
        "naive_backprop_fails", "naive backprop of (1/t) log f still overflows / loses accuracy",
        "needs a numerically stable computation (Sec. 4)",
        "first t more than 1% off or non-finite: " + "; ".join(
            f"{dt} eta={'1.5' if '1.5' in lbl else '2.5'}/L: {v}" for dt, rows_ in naive_bad.items() for lbl, v in rows_.items()),
        nb["verdict"], "results.json gradients.*.*.first_wrong_t.log_naive", kind="bound", test=nb))
    tv = data["train_vs_validation"]
    sweep = tv["eta_vs_t"]
    tbt = [r["eta_tbt"] for r in sweep]
    tbv_t = [r["eta_tbv_times_t"] for r in sweep]
    s = tv["setting"]
    spread = max(max(tbt) / min(tbt), max(tbv_t) / min(tbv_t))
    scaling = stats.bound_test(spread, 1.5, holds_if="<", statistic=f"largest max/min over t={sweep[0]['t']}.."
                               f"{sweep[-1]['t']} of eta_TbT and of eta_TbV * t (constant under Theta(1) and Theta(1/t))")
    claims.append(Claim(
        "eta_scaling", "train-by-train picks eta = Theta(1) and train-by-validation eta = Theta(1/t) (Thm 5-6)",
        "Theta(1) vs Theta(1/t)", f"eta_TbT {min(tbt):.3g}-{max(tbt):.3g}, eta_TbV*t {min(tbv_t):.3g}-{max(tbv_t):.3g} "
        f"over t={sweep[0]['t']}..{sweep[-1]['t']}", scaling["verdict"], "l2l.png panel 5; results.json "
        "train_vs_validation.eta_vs_t", kind="bound", test=scaling))
    a = np.log(tv["train_by_validation"]["population_loss_per_test_task"])
    b = np.log(tv["train_by_train"]["population_loss_per_test_task"])
    better = stats.paired_test(a, b, statistic="log held-out (population) loss of GD on all n samples with the "
                               "learned eta, train-by-validation - train-by-train",
                               unit=f"held-out task x seed ({a.size} x 1)")
    claims.append(Claim(
        "tbt_vs_tbv", "with few samples, train-by-train overfits; train-by-validation generalises better (Thm 5-6)",
        "TbV better held-out", f"d={s['dim']}, n={s['n']}, t={s['t']}: held-out loss TbT "
        f"{tv['train_by_train']['population_loss_gd_on_all_n']:.4g} vs TbV "
        f"{tv['train_by_validation']['population_loss_gd_on_all_n']:.4g} (means)",
        better["verdict"], "results.json train_vs_validation.*.population_loss_per_test_task", kind="comparative",
        test=better))
    if s["dim"] < 1000:
        claims.append(Claim("paper_size", "the same at the paper's d = 1000, n = 500", "Sec. 6",
                            f"run at d={s['dim']}, n={s['n']} (quick)", "not testable here",
                            "full mode runs d=1000, n=500", kind="comparative"))
    return claims


def run(out_dir: str | Path = "results/l2l", *, quick: bool = False, seed: int = 0, log=print,
        size: dict | None = None) -> dict:
    """Run the study; ``size`` overrides ``dim``/``n``/``tasks``/``steps``/``horizons``/``grad_horizons``."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(dim=200, n=100, tasks=8, steps=300, t=40, horizons=(10, 20, 40, 80, 160), grad_horizons=HORIZONS)
    if not quick:
        cfg.update(dim=1000, n=500)
    cfg.update(size or {})
    data = {"gradients": gradient_vs_horizon(tuple(cfg["grad_horizons"])),
            "train_vs_validation": train_vs_validation(cfg["dim"], cfg["n"], cfg["t"], cfg["tasks"], cfg["steps"],
                                                       tuple(cfg["horizons"]), seed=seed)}
    plot(data, out / "l2l.png")
    tv = data["train_vs_validation"]
    rows = ["| | learned eta | eta L | eta t | held-out (population) loss | training loss |", "|---|---|---|---|---|---|"]
    for name in ("train_by_train", "train_by_validation"):
        r = tv[name]
        rows.append(f"| {name.replace('_', '-')} | {r['eta']:.4g} | {r['eta_times_L']:.3g} | {r['eta_times_t']:.3g} | "
                    f"{r['population_loss_gd_on_all_n']:.4g} | {r['train_loss_gd_on_all_n']:.3g} |")
    grow = ["| dtype | step | first t non-finite (f(w_t) / naive log / stable log) | derived bound |", "|---|---|---|---|"]
    for dt, rws in data["gradients"]["by_dtype"].items():
        for lbl, r in rws.items():
            fb = r["first_nonfinite_t"]
            grow.append(f"| {dt} | {lbl} | {fb['last_naive']} / {fb['log_naive']} / {fb['log_stable']} | "
                        f"{r['derived_bound']:.3g} |")
    body = "\n".join(["## Meta-gradients against the horizon, and train-by-train vs train-by-validation", "",
                       "![l2l](l2l.png)", "", *grow, "", *rows, "",
                       "eta against t: " + ", ".join(f"t={r['t']}: TbT {r['eta_tbt']:.3g}, TbV {r['eta_tbv']:.3g}"
                                                     for r in tv["eta_vs_t"]), ""])
    config = {"quick": quick, "seed": seed, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}}
    return write_study(out, study=NAME, paper=PAPER, config=config, claims=claims_for(data),
                       seconds=time.perf_counter() - start, body=body, extra=data, title="Step-size L2L study")
