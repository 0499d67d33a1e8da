r"""Held-out benchmark: a learned optimizer with no tuning vs Adam/AdamW/SGD-momentum tuned per problem.

Problems are NOT in the meta-training mixture (``tasks.Mixture`` members are digits /
synthetic classifiers, quadratics and ConvNets): scikit-learn's bundled data sets (iris,
wine, breast cancer, diabetes, linnerud; read from the installed package, no network; a
generated stand-in of the same shape if scikit-learn is missing) with linear, logistic,
softmax and MLP models, full-batch and minibatch, plus generated problems (Rosenbrock, a
deep linear network, a tanh autoencoder).

Per problem:

* baselines Adam, AdamW (weight decay 1e-4) and SGD with momentum 0.9, each tuned over a
  half-decade learning-rate grid :math:`10^{-4}, 10^{-3.5}, \dots, 10^{0}`, the whole grid
  one ``vmap`` inside one ``jit``; the best rate is the one with the lowest final loss;
* candidates with NO tuning: an untrained STAR (``STAR(nominal_step=1e-3)`` at its
  ``init``), untuned Adam(1e-3), untuned ``optax.contrib.prodigy()`` (the starting point
  of ``LearnedProdigy``'s meta-training) and every shipped ``ldco.pretrained`` optimizer.

Metrics (VeLOdrome style), against tuned Adam's final training loss :math:`L^*`:

* ``ratio``: final loss / :math:`L^*` (lower is better, 1 = tuned Adam);
* ``speedup``: first step at which the loss reaches :math:`L^*`, as a fraction of the
  budget (``None`` if never);
* ``diverged``: a non-finite loss, or a final loss above 10x the run's own best and above
  its starting loss; also checked on a long run (``diverged_10x``) of ``max(10 x budget,
  --long-min)`` steps (full mode: at least 10 000 steps, 10x the longest meta-training
  horizon of the shipped recipes), the optimizer still told only the budget (a
  horizon-aware optimizer runs 10x or more past the end of its schedule);
* ``overhead``: median wall-clock seconds per step / Adam(1e-3)'s, same problem, runs
  interleaved (the untuned Adam row measures 1 up to timing noise: read it as the noise).

The aggregate over problems is the interquartile mean (IQM) and the median of ``ratio``,
the fraction of problems on which the curve reaches :math:`L^*` within the budget
(``frac_reached``, ``speedup`` defined) and the fraction whose final loss is at most
:math:`L^*` (``frac_final_le_adam``, stricter: a curve that touches :math:`L^*` and ends
1e-6 above it counts only in the first). Writes ``heldout.json``, ``heldout.md`` and
``heldout.png`` (loss curves) to ``--out`` (default ``benchmarks/results``).

Run: ``python -m benchmarks.heldout --quick`` (about a minute on 2 CPU cores) or
``--smoke`` (seconds: a few steps, three grid points; checks that it runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_dco as ldco
from benchmarks.common import RESULTS, environment, interleaved_medians, table
from learned_dco.tasks import nets

GRID = tuple(10.0 ** (-4 + 0.5 * i) for i in range(9))  # half-decade grid 1e-4 .. 1
BASELINES: dict[str, Callable[[jax.Array], optax.GradientTransformation]] = {
    "adam": lambda lr: optax.adam(lr),
    "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-4),
    "sgdm": lambda lr: optax.sgd(lr, momentum=0.9),
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One held-out problem: ``init(key) -> params``; ``loss(params, x, y)``; data; budget."""

    name: str
    init: Callable
    loss: Callable
    x: np.ndarray
    y: np.ndarray
    steps: int
    batch: int | None = None  # minibatch size (None: full batch)

    def train_loss(self, params):
        return self.loss(params, jnp.asarray(self.x), jnp.asarray(self.y))

    def step_loss(self, params, key):
        if self.batch is None:
            return self.train_loss(params)
        idx = jax.random.randint(key, (self.batch,), 0, self.x.shape[0])
        return self.loss(params, jnp.asarray(self.x)[idx], jnp.asarray(self.y)[idx])


def _standardise(x):
    x = np.asarray(x, np.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def _dataset(name: str, rng: np.random.Generator):
    """(x standardised, y) from scikit-learn's bundled files, or a generated stand-in."""
    shapes = {"iris": (150, 4, 3), "wine": (178, 13, 3), "breast_cancer": (569, 30, 2),
              "diabetes": (442, 10, 0), "linnerud": (20, 3, -3)}
    try:
        from sklearn import datasets

        data = getattr(datasets, f"load_{name}")()
        x, y = data.data, data.target
        source = "sklearn"
    except ImportError:
        n, d, c = shapes[name]
        x = rng.normal(size=(n, d))
        w = rng.normal(size=(d, max(abs(c), 1)))
        y = np.argmax(x @ w, 1) if c > 0 else (x @ w)[:, 0] if c == 0 else x @ w
        source = "generated"
    y = np.asarray(y)
    y = y.astype(np.int32) if y.dtype.kind in "iu" else _standardise(y.reshape(len(y), -1))
    return _standardise(x), y, source


def _linear_init(d, k):
    return lambda key: {"w": jnp.zeros((d, k)), "b": jnp.zeros((k,))}


def _mlp_init(sizes, act):
    return lambda key: nets.mlp_init(key, sizes, nets.default_gain(act))


def _xent(out, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], 1))


def problems(steps: int, scale: float = 1.0) -> tuple[list[Problem], dict[str, str]]:
    """The held-out problems (budgets scaled by ``scale``) and each data set's source."""
    rng = np.random.default_rng(0)
    S = lambda n: max(2, int(round(n * scale)))
    out, sources = [], {}
    x, y, sources["iris"] = _dataset("iris", rng)
    out.append(Problem("iris_softmax", _linear_init(4, 3), lambda p, x, y: _xent(x @ p["w"] + p["b"], y), x, y, S(steps)))
    x, y, sources["wine"] = _dataset("wine", rng)
    out.append(Problem("wine_mlp_tanh", _mlp_init((13, 16, 3), "tanh"),
                       lambda p, x, y: _xent(nets.mlp_apply(p, x, "tanh"), y), x, y, S(steps)))
    x, y, sources["breast_cancer"] = _dataset("breast_cancer", rng)
    out.append(Problem("cancer_logistic_mb32", _linear_init(30, 1),
                       lambda p, x, y: jnp.mean(jax.nn.softplus(-(2.0 * y - 1) * (x @ p["w"] + p["b"])[:, 0])),
                       x, y, S(steps), batch=32))
    x, y, sources["diabetes"] = _dataset("diabetes", rng)
    out.append(Problem("diabetes_ridge", _linear_init(10, 1),
                       lambda p, x, y: jnp.mean((x @ p["w"] + p["b"] - y) ** 2) + 1e-2 * jnp.sum(p["w"] ** 2), x, y, S(steps)))
    out.append(Problem("diabetes_mlp_relu_mb64", _mlp_init((10, 32, 32, 1), "relu"),
                       lambda p, x, y: jnp.mean((nets.mlp_apply(p, x, "relu") - y) ** 2), x, y, S(3 * steps), batch=64))
    x, y, sources["linnerud"] = _dataset("linnerud", rng)
    out.append(Problem("linnerud_multi_ridge", _linear_init(3, 3),
                       lambda p, x, y: jnp.mean((x @ p["w"] + p["b"] - y) ** 2) + 1e-2 * jnp.sum(p["w"] ** 2), x, y, S(steps)))
    # generated problems
    xr = np.zeros((1, 1), np.float32)
    out.append(Problem("rosenbrock_2d", lambda key: jnp.array([-1.2, 1.0]),
                       lambda p, x, y: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2, xr, xr, S(3 * steps)))
    xd = rng.normal(size=(256, 8)).astype(np.float32)
    yd = (xd @ rng.normal(size=(8, 8)) @ rng.normal(size=(8, 4)) / 8).astype(np.float32)
    out.append(Problem("deep_linear_3", lambda key: nets.mlp_init(key, (8, 8, 8, 4)),
                       lambda p, x, y: jnp.mean((_linear_chain(p, x) - y) ** 2), xd, yd, S(steps)))
    xa = np.tanh(rng.normal(size=(256, 4)) @ rng.normal(size=(4, 16))).astype(np.float32)
    out.append(Problem("autoencoder_tanh_mb32", _mlp_init((16, 4, 16), "tanh"),
                       lambda p, x, y: jnp.mean((nets.mlp_apply(p, x, "tanh") - x) ** 2), xa, xa, S(2 * steps), batch=32))
    return out, sources


def _linear_chain(params, x):
    for layer in params["layers"]:
        x = x @ layer["w"] + layer["b"]
    return x


def curve(problem: Problem, tx: optax.GradientTransformation, steps: int, key) -> jax.Array:
    """Full training loss at steps 0..steps of ``tx`` on ``problem`` (one ``lax.scan``)."""
    params = problem.init(key)

    def body(carry, k):
        p, s = carry
        g = jax.grad(problem.step_loss)(p, k)
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), problem.train_loss(p)

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(steps))  # prefix-stable
    _, losses = jax.lax.scan(body, (params, tx.init(params)), keys)
    return jnp.concatenate([problem.train_loss(params)[None], losses])


def tune(problem: Problem, make, grid, key) -> tuple[float, np.ndarray]:
    """Best rate of ``make(lr)`` on the grid (one jit, grid vmapped) and its curve."""
    run = jax.jit(jax.vmap(lambda lr: curve(problem, make(lr), problem.steps, key)))
    curves = np.asarray(run(jnp.asarray(grid, jnp.float32)))
    final = np.where(np.isfinite(curves[:, -1]), curves[:, -1], np.inf)
    best = int(np.argmin(final))
    return float(grid[best]), curves[best]


def diverged(losses: np.ndarray) -> bool:
    if not np.all(np.isfinite(losses)):
        return True
    return bool(losses[-1] > 10 * losses.min() and losses[-1] > losses[0])


def iqm(values) -> float | None:
    """Interquartile mean: drop ``floor(n/4)`` values at each end, average the rest
    (``scipy.stats.trim_mean(v, 0.25)``). A missing or non-finite value counts as ``+inf``
    (a diverged problem is the worst, not ignored), so the IQM is ``inf`` if such values
    reach the middle half."""
    v = np.sort([np.inf if x is None or not np.isfinite(x) else float(x) for x in values])
    if v.size == 0:
        return None
    cut = v.size // 4
    return float(v[cut : v.size - cut].mean())


def per_step_seconds(problem: Problem, txs: dict, key, budget_s: float = 5.0) -> dict[str, float]:
    """Median seconds per inner step of each transformation on ``problem`` (runs interleaved,
    so the shared machine's slow phases hit all alike; ``benchmarks.common.interleaved_medians``)."""
    steps = min(problem.steps, 50)
    fns = {name: (lambda run: lambda: run(key))(jax.jit(functools.partial(curve, problem, tx, steps))) for name, tx in txs.items()}
    return {name: t / steps for name, t in interleaved_medians(fns, repeats=7, budget_s=budget_s).items()}


Candidate = Callable[[int], optax.GradientTransformation]
"""An untuned row: the run's budget in steps -> the transformation (horizon-aware learned
optimizers are told the budget, as a user would tell ``ldco.pretrained.load(name, num_steps=...)``)."""


def _horizon_aware(lopt, meta) -> Candidate:
    fields = {f.name for f in dataclasses.fields(lopt)}
    if "num_steps" in fields:
        return lambda steps: dataclasses.replace(lopt, num_steps=steps).opt_fn(meta)
    return lambda steps: lopt.opt_fn(meta)


def pretrained_candidate(name: str, root=None) -> Candidate:
    """``ldco.pretrained.load(name[, num_steps=budget])`` as a held-out row."""
    takes_steps = "num_steps" in ldco.pretrained.card(name, root).get("options", {})
    if takes_steps:
        return lambda steps: ldco.pretrained.load(name, root=root, num_steps=steps)
    return lambda steps: ldco.pretrained.load(name, root=root)


def run_candidate(run_dir) -> Candidate:
    """The meta-parameters of a ``learned-dco train`` run directory as a held-out row."""
    from learned_dco.app.runs import load_trained

    trained = load_trained(run_dir)
    return _horizon_aware(trained.lopt, trained.meta)


def candidates(runs: dict[str, str] | None = None, pretrained: bool = True) -> dict[str, Candidate]:
    """Untuned rows: Adam(1e-3), the untrained STAR, Prodigy, every shipped pretrained optimizer
    (``pretrained``) and the run directories ``runs`` (label -> directory)."""
    star = ldco.STAR(nominal_step=1e-3)
    star_tx = star.opt_fn(star.init(jax.random.PRNGKey(0), {"w": jnp.zeros(1)}))
    out: dict[str, Candidate] = {
        "adam_1e-3 (untuned)": lambda steps: optax.adam(1e-3),
        "star (untrained)": lambda steps: star_tx,
        # LearnedProdigy at its initial meta-parameters: what meta-training starts from
        "prodigy (untuned)": lambda steps: optax.contrib.prodigy(),
    }
    if pretrained:
        for name in ldco.pretrained.list():
            out[f"pretrained:{name}"] = pretrained_candidate(name)
    for label, run_dir in (runs or {}).items():
        out[f"run:{label}"] = run_candidate(run_dir)
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """One summary row per optimizer (in order of first appearance) over its problems."""
    summary = []
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        mine = [r for r in rows if r["optimizer"] == name]
        ratios = [r["ratio"] for r in mine]
        summary.append({
            "optimizer": name,
            "iqm_ratio": iqm(ratios),
            "median_ratio": float(np.median([x if np.isfinite(x) else np.inf for x in ratios])),
            "frac_reached": float(np.mean([r["speedup"] is not None for r in mine])),
            "frac_final_le_adam": float(np.mean([x <= 1.0 for x in ratios])),
            "diverged": int(sum(r["diverged"] for r in mine)),
            "diverged_10x": int(sum(r.get("diverged_10x", False) for r in mine)),
            "max_overhead": max((r["overhead"] for r in mine if r.get("overhead") is not None), default=None),
        })
    return summary


def run_benchmark(steps: int, grid, long_factor: int, cands: dict[str, Candidate], seed: int = 0,
                  timing: bool = True, baselines=None, long_min: int = 0) -> dict:
    """Every problem: tune ``baselines`` (default :data:`BASELINES`; must hold ``adam``, the
    reference), run each untuned candidate at the budget and for ``max(long_factor x budget,
    long_min)`` steps (the divergence check), still told only the budget."""
    baselines = BASELINES if baselines is None else baselines
    key = jax.random.PRNGKey(seed)
    probs, sources = problems(steps)
    long_steps = {p.name: max(p.steps * long_factor, long_min) for p in probs}
    rows, curves_out = [], {}
    for prob in probs:
        tuned = {name: tune(prob, make, grid, key) for name, make in baselines.items()}
        ref = float(tuned["adam"][1][-1])
        curves_out[prob.name] = {f"{n} (tuned {lr:.1e})": c.tolist() for n, (lr, c) in tuned.items()}
        txs = {name: make(prob.steps) for name, make in cands.items()}
        seconds = per_step_seconds(prob, {"adam": optax.adam(1e-3), **txs}, key) if timing else {}
        for name, (lr, c) in tuned.items():
            rows.append(_metrics(prob, f"{name} (tuned)", c, ref, lr=lr))
        for name, tx in txs.items():
            # one long run (>= 10x the budget); its prefix is the budget run (same step keys)
            long = np.asarray(jax.jit(lambda k: curve(prob, tx, long_steps[prob.name], k))(key))
            c = long[: prob.steps + 1]
            curves_out[prob.name][name] = c.tolist()
            row = _metrics(prob, name, c, ref)
            row["diverged_10x"] = diverged(long)
            if timing:
                row["overhead"] = seconds[name] / seconds["adam"]
            rows.append(row)
    summary = summarise(rows)
    return {"grid": list(grid), "steps": {p.name: p.steps for p in probs}, "batch": {p.name: p.batch for p in probs},
            "data_sources": sources, "long_factor": long_factor, "long_steps": long_steps, "rows": rows, "summary": summary, "curves": curves_out}


SUMMARY_COLUMNS = ["optimizer", "iqm_ratio", "median_ratio", "frac_reached", "frac_final_le_adam", "diverged",
                   "diverged_10x", "max_overhead"]
"""Columns of the summary table (``frac_reached``: share of problems whose curve reaches tuned
Adam's final loss within the budget, i.e. ``speedup`` is defined; ``frac_final_le_adam``: share
whose *final* loss is at most tuned Adam's, the stricter reading)."""

QUICK = dict(steps=60, long_factor=3)
"""The quick mode's budget and long-run factor (``--quick``; the pretrained cards record it)."""


def quick_rows(cands: dict[str, Candidate], seed: int = 0) -> list[dict]:
    """Per-problem rows of the quick mode for ``cands`` against tuned Adam only, no timing:
    what a pretrained card records and what tests/test_pretrained_shipped.py regenerates."""
    result = run_benchmark(QUICK["steps"], GRID, QUICK["long_factor"], cands, seed, timing=False,
                           baselines={"adam": BASELINES["adam"]})
    return [r for r in result["rows"] if r["optimizer"] in cands]


def _metrics(prob, name, c, ref, lr=None) -> dict:
    c = np.asarray(c, float)
    final = float(c[-1])
    hit = np.nonzero(np.isfinite(c) & (c <= ref * (1 + 1e-6)))[0]
    return {
        "problem": prob.name,
        "optimizer": name,
        "lr": lr,
        "final": final,
        "ratio": final / ref if ref > 0 else (1.0 if final <= 0 else math.inf),
        "speedup": float(hit[0] / (len(c) - 1)) if hit.size else None,
        "diverged": diverged(c),
    }


def plot(result: dict, path: Path) -> None:
    from learned_dco import extras

    plt = extras.pyplot()

    names = list(result["curves"])
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(4 * cols, 3 * math.ceil(len(names) / cols)))
    for ax, name in zip(np.ravel(axes), names):
        for label, c in result["curves"][name].items():
            ax.semilogy(np.maximum(np.asarray(c, float), 1e-12), label=label, lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    np.ravel(axes)[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(result: dict) -> str:
    rows = [{k: ("-" if v is None else v) for k, v in r.items()} for r in result["rows"]]
    summary = [{k: ("-" if v is None else v) for k, v in r.items()} for r in result["summary"]]
    return "\n\n".join([
        "# Held-out benchmark",
        f"Budgets: {result['steps']}; LR grid {['%.1e' % g for g in result['grid']]}; divergence also over "
        f"{result['long_steps']} steps (untuned rows, told only the "
        f"budget). Data: {result['data_sources']}.",
        "## Summary (over problems)",
        table(summary, SUMMARY_COLUMNS),
        "## Per problem",
        table(rows, ["problem", "optimizer", "lr", "final", "ratio", "speedup", "diverged", "diverged_10x", "overhead"]),
    ]) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="base budget (some problems use 2-3x)")
    ap.add_argument("--quick", action="store_true", help="budget 60 steps, 10x check at 3x")
    ap.add_argument("--smoke", action="store_true", help="a few steps, 3 grid points, no timing: checks that it runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output directory (default benchmarks/results)")
    ap.add_argument("--run", action="append", default=[], metavar="LABEL=DIR",
                    help="also evaluate the meta-parameters of a `learned-dco train` run directory (repeatable)")
    ap.add_argument("--no-pretrained", action="store_true", help="leave out the shipped pretrained optimizers")
    ap.add_argument("--long-min", type=int, default=10_000,
                    help="the divergence run lasts max(10x the budget, this) steps (default 10000: 10x the "
                         "longest meta-training horizon of the shipped recipes, 1000); full mode only")
    args = ap.parse_args(argv)
    runs = {}
    for item in args.run:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            ap.error(f"--run {item!r}: expected LABEL=DIR")
        runs[label] = path
    steps, grid, long_factor, timing = args.steps, GRID, 10, True
    if args.quick:
        steps, long_factor = QUICK["steps"], QUICK["long_factor"]
    if args.smoke:
        steps, grid, long_factor, timing = 4, GRID[::4], 2, False
    start = time.perf_counter()
    long_min = 0 if (args.quick or args.smoke) else args.long_min
    result = run_benchmark(steps, grid, long_factor, candidates(runs, not args.no_pretrained), args.seed, timing,
                           long_min=long_min)
    result.update(mode="smoke" if args.smoke else "quick" if args.quick else "full",
                  seconds=time.perf_counter() - start, environment=environment())
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = "heldout" if not (args.quick or args.smoke) else f"heldout_{result['mode']}"
    import json

    (out / f"{stem}.json").write_text(json.dumps({"benchmark": "heldout", **result}, indent=1))
    (out / f"{stem}.md").write_text(markdown(result))
    plot(result, out / f"{stem}.png")
    print(table([{k: ("-" if v is None else v) for k, v in r.items()} for r in result["summary"]],
                SUMMARY_COLUMNS))
    print(f"wrote {out / stem}.{{json,md,png}} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
