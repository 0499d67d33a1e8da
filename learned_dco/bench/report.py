r"""Tables, aggregates, the performance profile and the output files of a benchmark run.

Per problem and row (over the evaluation seeds): the mean final loss with its 95%
t-interval; the ratio to tuned Adam (geometric mean over seeds of the floored final-loss
ratio); the paired outcome of the final loss against tuned Adam's (``better``/``tie``/
``worse``, :func:`learned_dco.bench.stats.outcome`); *reached* (the curve's best loss within
the budget against tuned Adam's final loss: ``better`` means it reaches it, significantly);
the speedup (median over seeds of the first step reaching tuned Adam's final loss, as a
fraction of the budget); diverged seeds and the long run's maximum after the budget.

Aggregates over the held-out problems (controls excluded), each with a 95% bootstrap
interval over problems and seeds (:func:`learned_dco.bench.stats.bootstrap`):

* ``iqm_ratio`` / ``iqm_ratio_cosine``: IQM over (problem, seed) of the final-loss ratio to
  tuned Adam at a constant rate / with cosine decay (lower is better; 1 = the reference);
* ``reached``: fraction of problems whose best loss within the budget is significantly
  below tuned Adam's final loss; ``reached_tie``: fraction where the interval cannot tell;
* ``final_le`` / ``final_tie`` / ``final_worse``: fractions whose final loss is
  significantly below / indistinguishable from / significantly above tuned Adam's;
  ``final_le_cosine``: the same against tuned Adam with cosine decay;
* ``diverged``: problems with at least one diverged seed;
* ``overhead``: median over problems of seconds per step / Adam(1e-3)'s (candidates).

The performance profile (Dolan & More 2002): for each row, the fraction of held-out
problems whose geometric-mean final loss is within a factor :math:`\tau` of the best row's
on that problem, :math:`\tau \in [1, 100]`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from learned_dco.bench import stats as S
from learned_dco.bench.baselines import REFERENCE, REFERENCE_COSINE
from learned_dco.io import atomic_write_json, atomic_write_text

AGGREGATE_COLUMNS = ["optimizer", "iqm_ratio", "iqm_ratio_cosine", "reached", "reached_tie", "final_le", "final_tie",
                     "final_worse", "final_le_cosine", "diverged", "overhead"]


def row_order(result: Mapping[str, Any]) -> list[str]:
    """Candidates, their untrained starts, untuned baselines, tuned baselines (first problem's order)."""
    first = next(iter(result["results"].values()))["rows"]
    kinds = {"candidate": 0, "start": 1, "untuned": 2, "tuned": 3}
    return sorted(first, key=lambda n: (kinds[first[n]["kind"]], list(first).index(n)))


def _tables(result, row, problems):
    out = {}
    for key in ("final", "best"):
        out[key] = np.array([result["results"][p]["rows"][row][key] for p in problems], np.float64).reshape(len(problems), -1)
    return out


def _held_out(result) -> list[str]:
    return [p["name"] for p in result["problems"] if not p["control"]]


def aggregate(result: Mapping[str, Any], reps: int = 2000, seed: int = 0) -> list[dict]:
    """One aggregate row per optimizer over the held-out problems (see the module docstring)."""
    probs = _held_out(result)
    if not probs:
        return []
    floors = np.array([result["results"][p]["floor"] for p in probs])[:, None]
    ref = _tables(result, REFERENCE, probs)["final"]
    cos = _tables(result, REFERENCE_COSINE, probs)["final"] if REFERENCE_COSINE in result["results"][probs[0]]["rows"] else None
    out = []
    for name in row_order(result):
        t = _tables(result, name, probs)
        tables = {"final": t["final"], "best": t["best"], "ref": ref, "floor": np.broadcast_to(floors, ref.shape)}
        if cos is not None:
            tables["cos"] = cos

        def iqm_of(other):
            def stat(tb):
                r = np.exp(S.log_ratio(tb["final"], tb[other], tb["floor"]))
                return S.iqm(r.reshape(r.shape[0], -1), axis=1)
            return stat

        def frac(a, b, code):
            return lambda tb: np.mean(S.outcomes(S.log_ratio(tb[a], tb[b], tb["floor"])) == code, axis=-1)

        row: dict[str, Any] = {"optimizer": name}
        row["iqm_ratio"] = S.bootstrap(iqm_of("ref"), tables, reps, seed)
        row["iqm_ratio_cosine"] = S.bootstrap(iqm_of("cos"), tables, reps, seed) if cos is not None else None
        row["reached"] = S.bootstrap(frac("best", "ref", S.BETTER), tables, reps, seed)
        row["reached_tie"] = S.bootstrap(frac("best", "ref", S.TIE), tables, reps, seed)
        row["final_le"] = S.bootstrap(frac("final", "ref", S.BETTER), tables, reps, seed)
        row["final_tie"] = S.bootstrap(frac("final", "ref", S.TIE), tables, reps, seed)
        row["final_worse"] = S.bootstrap(frac("final", "ref", S.WORSE), tables, reps, seed)
        row["final_le_cosine"] = S.bootstrap(frac("final", "cos", S.BETTER), tables, reps, seed) if cos is not None else None
        row["diverged"] = int(sum(any(result["results"][p]["rows"][name]["diverged"]) for p in probs))
        oh = [result["results"][p]["overhead"].get(name) for p in probs]
        oh = [x for x in oh if x is not None]
        row["overhead"] = float(np.median(oh)) if oh else None
        out.append(row)
    return out


def paired(result: Mapping[str, Any], a: str, b: str) -> dict:
    r"""Paired comparison of row ``a`` with row ``b`` over the held-out problems.

    Per problem :math:`i`, :math:`d_i = \frac{1}{S}\sum_s \log\frac{\max(a_{is}, f_i)}{\max(b_{is}, f_i)}`,
    the seed-mean floored log-ratio of the final losses (same seeds, so paired). Over the
    :math:`n` problems: the mean :math:`\bar d` with its 95% t-interval (problems are the
    units; seeds are averaged inside a problem), ``ratio`` :math:`= e^{\bar d}` (the geometric
    mean over problems of ``a``'s final loss over ``b``'s) with the interval's ends exponentiated,
    and ``wins``: problems with :math:`d_i < 0`. ``a`` beats ``b`` at the 95% level when the
    ratio's upper end is below 1."""
    probs = _held_out(result)
    d = np.array([np.mean(S.log_ratio(result["results"][p]["rows"][a]["final"],
                                      result["results"][p]["rows"][b]["final"], result["results"][p]["floor"]))
                  for p in probs])
    mean, lo, hi = S.t_interval(d)
    return {"a": a, "b": b, "problems": len(probs), "mean_log_ratio": [mean, lo, hi],
            "ratio": [float(np.exp(mean)), float(np.exp(lo)), float(np.exp(hi))],
            "wins": int(np.sum(d < 0)), "per_problem": dict(zip(probs, d.tolist()))}


def per_problem(result: Mapping[str, Any]) -> list[dict]:
    """One row per (problem, optimizer) with the per-problem statistics."""
    out = []
    for prob in result["problems"]:
        res = result["results"][prob["name"]]
        floor = res["floor"]
        ref = np.asarray(res["rows"][REFERENCE]["final"], np.float64)
        for name in row_order(result):
            r = res["rows"][name]
            final = np.asarray(r["final"], np.float64)
            mean, lo, hi = S.t_interval(final)
            d = S.log_ratio(final, ref, floor)
            hits = [h for h in r["hit"] if h is not None]
            long = r.get("long")
            out.append({
                "problem": prob["name"], "control": prob["control"], "optimizer": name, "kind": r["kind"],
                "lr": r.get("lr"), "final_mean": mean, "final_lo": lo, "final_hi": hi,
                "ratio": float(np.exp(np.mean(d))) if np.all(np.isfinite(d)) else math.inf,
                "final_vs_adam": S.OUTCOME_NAMES[int(S.outcomes(d))],
                "reached": S.OUTCOME_NAMES[int(S.outcomes(S.log_ratio(np.asarray(r["best"], np.float64), ref, floor)))],
                "speedup": float(np.median(hits)) if len(hits) * 2 > len(r["hit"]) else None,
                "diverged_seeds": int(sum(r["diverged"])), "seeds": len(final),
                "long_max_over_start": (max(l["max_after"] / s for l, s in zip(long, r["start"]))
                                        if long else None),
                "long_final": [l["final"] for l in long] if long else None,
                "long_argmax": [l["argmax"] for l in long] if long else None,
                "overhead": res["overhead"].get(name),
            })
    return out


def profile(result: Mapping[str, Any], taus=None) -> dict:
    """Performance profile over the held-out problems: ``{"tau": [...], name: [fraction, ...]}``."""
    taus = np.logspace(0, 2, 81) if taus is None else np.asarray(taus)
    probs = _held_out(result)
    names = row_order(result)
    metric = np.empty((len(probs), len(names)))
    for i, p in enumerate(probs):
        res = result["results"][p]
        for j, n in enumerate(names):
            f = np.asarray(res["rows"][n]["final"], np.float64)
            metric[i, j] = np.exp(np.mean(np.log(np.maximum(f, res["floor"])))) if np.all(np.isfinite(f)) else np.inf
    best = metric.min(1, keepdims=True)
    ratio = metric / best
    return {"tau": taus.tolist(), **{n: [float(np.mean(ratio[:, j] <= t * (1 + 1e-9))) for t in taus]
                                     for j, n in enumerate(names)}}


def summarise(result: Mapping[str, Any], reps: int = 2000) -> dict:
    """``result`` with ``aggregate``, ``per_problem`` and ``profile`` added."""
    return {**result, "aggregate": aggregate(result, reps), "per_problem": per_problem(result), "profile": profile(result)}


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, tuple) or (isinstance(v, list) and len(v) == 3 and not isinstance(v[0], str)):
        p, lo, hi = v
        return f"{_fmt(p, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}g}"
    return str(v)


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def aggregate_table(summary: Mapping[str, Any]) -> str:
    return table(summary["aggregate"], AGGREGATE_COLUMNS)


def markdown(summary: Mapping[str, Any]) -> str:
    probs = summary["problems"]
    held = [p["name"] for p in probs if not p["control"]]
    controls = [p["name"] for p in probs if p["control"]]
    st = summary["settings"]
    pp = [dict(r, final=(r["final_mean"], r["final_lo"], r["final_hi"])) for r in summary["per_problem"]]
    parts = [
        f"# learned-dco bench: split `{summary['split']}`",
        f"Aggregate over the {len(held)} held-out problems ({len(controls)} in-distribution controls excluded: "
        f"{', '.join(controls) or 'none'}), {len(st['seeds'])} evaluation seeds each; every entry is "
        "`estimate [95% bootstrap interval over problems and seeds]`. Ratios are final loss / tuned Adam's "
        "(constant rate; `_cosine`: Adam with cosine decay over the budget), lower is better. `reached`, "
        "`final_le`: fraction of problems where the paired 95% t-interval over seeds says the optimizer is "
        "below tuned Adam (its best loss within the budget, its final loss); `_tie`: the interval cannot tell; "
        "`final_worse`: significantly above. `diverged`: problems with a diverged seed (non-finite, final above "
        "start, or a post-budget climb giving back > 10% of the progress on the 10x-budget run). `overhead`: "
        "median seconds per step / Adam(1e-3)'s.",
        aggregate_table(summary),
        "![performance profile](bench_profile.png)",
        "## Per problem",
        "`final`: mean final loss [95% t-interval over seeds]; `ratio`: geometric mean over seeds of the ratio "
        "to tuned Adam; `long_max/start`: the long run's largest loss after the budget over the starting loss "
        "(max over seeds).",
        table(pp, ["problem", "control", "optimizer", "lr", "final", "ratio", "final_vs_adam", "reached", "speedup",
                   "diverged_seeds", "long_max_over_start", "overhead"]),
        "## Problems",
        table(probs, ["name", "split", "model", "data", "loss", "detail", "steps", "batch", "examples", "control"]),
        f"Settings: {json.dumps(st)}. Versions: {json.dumps(summary['versions'])}. "
        f"Wall time {summary['seconds']:.0f} s; baseline cache {json.dumps(summary['cache'])}.",
    ]
    return "\n\n".join(parts) + "\n"


def plot_profile(summary: Mapping[str, Any], path: Path) -> bool:
    """The performance profile as a PNG; ``False`` (and one line on stdout) without matplotlib."""
    from learned_dco import extras

    try:
        plt = extras.pyplot()
    except extras.MissingExtra as e:
        print(f"skipping the performance-profile plot: {e}")
        return False
    prof = summary["profile"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in row_order(summary):
        kind = next(iter(summary["results"].values()))["rows"][name]["kind"]
        style = {"candidate": "-", "start": "--", "untuned": ":", "tuned": "-."}[kind]
        ax.step(prof["tau"], prof[name], where="post", ls=style, lw=2 if kind == "candidate" else 1, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("tau (final loss within a factor tau of the best row)")
    ax.set_ylabel("fraction of held-out problems")
    ax.set_title(f"performance profile, split {summary['split']}")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(summary: Mapping[str, Any], out: str | Path, stem: str = "bench") -> list[Path]:
    """``{stem}.json``, ``{stem}.md`` and ``{stem}_profile.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    atomic_write_json(paths[0], summary)
    atomic_write_text(paths[1], markdown(summary).replace("bench_profile.png", f"{stem}_profile.png"))
    if plot_profile(summary, out / f"{stem}_profile.png"):
        paths.append(out / f"{stem}_profile.png")
    return paths


__all__ = ["AGGREGATE_COLUMNS", "aggregate", "aggregate_table", "markdown", "per_problem", "plot_profile", "profile",
           "row_order", "summarise", "table", "write"]
