"""Figures and markdown sections of the DCO study (:mod:`learned_dco.studies.dco`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

LABELS = {"dcog": "DCOG", "dcogd": "DCOGD", "dcom": "DCOM", "adam": "Adam", "sgd": "SGD", "rmsprop": "RMSProp",
          "dcog_carry": "DCOG (carry)", "dcogd_carry": "DCOGD (carry)", "dcom_carry": "DCOM (carry)"}
STYLES = {"dcog": "-", "dcogd": "-", "dcom": "-", "adam": "--", "sgd": "--", "rmsprop": "--",
          "dcog_carry": "-.", "dcogd_carry": "-.", "dcom_carry": "-."}
FIGURES = {"least_squares": ("figure1_least_squares.png", "Figure 1: 100-dimensional least squares"),
           "beverton_holt": ("figure2_beverton_holt.png", "Figure 2: Beverton-Holt system identification"),
           "beverton_holt_noisy_val": ("figure2_beverton_holt_noisy_val.png",
                                       "Figure 2 with noisy validation targets (as the paper samples them)"),
           "interpolation": ("figure3_interpolation.png", "Figure 3: smooth function interpolation")}


def _pyplot():
    """``matplotlib.pyplot`` (Agg), or a one-line error naming the ``plots`` extra."""
    from learned_dco import extras

    return extras.pyplot()


def plot_experiment(name: str, result: dict[str, Any], path: Path) -> Path:
    """Mean validation loss vs step (log scale), +-1 std band over the new tasks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    steps = np.asarray(result["steps"])
    for opt, curve in result["curves"].items():
        mean, std = np.asarray(curve["mean"]), np.asarray(curve["std"])
        if not np.all(np.isfinite(mean)):
            mean = np.where(np.isfinite(mean), mean, np.nan)
        (line,) = ax.plot(steps, mean, STYLES.get(opt, "-"), label=LABELS.get(opt, opt), lw=1.8)
        low = np.maximum(mean - std, 0.05 * mean)  # keep the band on the log axis
        ax.fill_between(steps, low, mean + std, color=line.get_color(), alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (mean over new tasks)")
    ax.set_title(FIGURES.get(name, (None, name))[1], fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_theorem1(result: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    gap = np.asarray(result["gap"])
    k = np.arange(gap.size)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.semilogy(k, np.maximum(gap, 1e-300), label=r"held-out gap $l_{target}(B_k) - l^*$", lw=1.8)
    ax.semilogy(k, gap[0] * result["rate"] ** k, "--", label=f"fitted rate {result['rate']:.4f}")
    ax.semilogy(k, gap[0] * result["rate_bound"] ** k, ":", label=f"bound {result['rate_bound']:.4f}")
    ax.set_ylim(max(gap[gap > 0].min() * 0.1, 1e-300), gap[0] * 10)
    ax.set_xlabel("meta-step k (gradient descent on B)")
    ax.set_ylabel("one-step target loss gap")
    ax.set_title(f"Theorem 1: DCOGD, p={result['p']}, N={result['n_tasks']}; "
                 f"||B-B*||/||B*|| = {result['rel_error_B']:.1e}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "diverged" if x is not None else "-"
    return f"{x:.4g}"


def experiment_table(result: dict[str, Any]) -> str:
    steps = len(result["steps"]) - 1
    n = result["settings"]["num_test"]
    rows = [f"| optimizer | step size | loss @ 0 | loss @ 1 | loss @ {steps} (± std) | before meta-training @ {steps} "
            "| diverged |", "|---|---|---|---|---|---|---|"]
    for opt, curve in result["curves"].items():
        m, s = curve["mean"], curve["std"]
        if opt in result["tuned_lr"]:
            lr, before = f"{result['tuned_lr'][opt]:.3g} (tuned)", "-"
        else:
            base, _, protocol = opt.partition("_")
            lr = (f"{result['dco_init_step'][base]:.3g} (tuned init), meta-trained T={result['settings']['horizon']}, "
                  f"protocol {protocol or 'reset'}")
            before = _fmt(result["dco_init_curves"][base]["mean"][-1])
        rows.append(f"| {LABELS.get(opt, opt)} | {lr} | {_fmt(m[0])} | {_fmt(m[1])} | {_fmt(m[-1])} (± {_fmt(s[-1])}) "
                    f"| {before} | {result['diverged'].get(opt, '-')}/{n} |")
    ext = result.get("extension")
    if ext:
        for opt, e in ext["optimizers"].items():
            m, s = e["curve"]["mean"], e["curve"]["std"]
            rows.append(f"| {LABELS[opt]}, T={ext['horizon']} (extension) | {result['dco_init_step'][opt]:.3g} "
                        f"(tuned init), meta-trained T={ext['horizon']} | {_fmt(m[0])} | {_fmt(m[1])} | "
                        f"{_fmt(m[-1])} (± {_fmt(s[-1])}) | {_fmt(result['dco_init_curves'][opt]['mean'][-1])} | "
                        f"{e.get('diverged', '-')}/{n} |")
    return "\n".join(rows)


def verdicts(name: str, result: dict[str, Any]) -> list[str]:
    """Plain statements of which DCO variants beat the best tuned baseline."""
    best = result["best_baseline"]
    b = result["final"][best]
    lines = []
    for protocol, wins_p in result["wins"].items():
        for opt, wins in wins_p.items():
            key = opt if protocol == "reset" else f"{opt}_{protocol}"
            verb = "has a mean below or equal to" if wins else "has a mean above"
            lines.append(f"- {LABELS[opt]} (protocol {protocol}) {verb} the best tuned baseline ({LABELS[best]}) at "
                         f"the final step: {_fmt(result['final'][key])} vs {_fmt(b)}.")
    ext = result.get("extension")
    if ext:
        for opt, wins in ext["wins"].items():
            verb = "has a mean below or equal to" if wins else "has a mean above"
            lines.append(f"- {LABELS[opt]} meta-trained with T = {ext['horizon']} (extension) {verb} it: "
                         f"{_fmt(ext['optimizers'][opt]['final'])} vs {_fmt(b)}.")
    return lines


def sections(results: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """The per-experiment and Theorem 1 sections of the report (markdown lines)."""
    lines = []
    for name, result in results["experiments"].items():
        st = result["settings"]
        lines += [f"## {FIGURES.get(name, (None, name))[1]}", "",
                  f"![{name}]({figures[name]})", "",
                  f"{st['num_train']} meta-training tasks, {st['num_test']} new tasks, T = {st['horizon']}, "
                  f"M = {st['meta_epochs']} meta-epochs, RMSProp (lr {st['meta_lr']}), normalised inner "
                  f"gradients = {st['normalize']}, protocols {', '.join(st['protocols'])}; baselines tuned on the "
                  f"training tasks over the grid {min(st['grid']):.0e} ... {max(st['grid']):.0e} "
                  f"({len(st['grid'])} log-spaced points).", "",
                  experiment_table(result), "", *verdicts(name, result), ""]
        if result.get("qp_check"):
            q = result["qp_check"]
            lines += [f"Iterative QP backend `solver={q['solver']!r}` (jaxopt), reset protocol, against the default "
                      "exact backend: maximum relative difference of the mean validation curve over all steps: "
                      + ", ".join(f"{LABELS[n]} {_fmt(v['max_rel_diff'])}" for n, v in q["optimizers"].items())
                      + ".", ""]
    th = results["theorem1"]
    lines += ["## Theorem 1 (DCOGD on shifted least squares, T = 1, MetaOpt = GD)", "",
              f"![theorem1]({figures['theorem1']})", "",
              f"- p = {th['p']}, N = {th['n_tasks']} training tasks, {th['n_test_tasks']} held-out shifts, "
              f"GD step {th['eta']:.3g} (= 2/(L+mu) of the exact meta-Hessian), {th['meta_steps']} meta-steps.",
              f"- Held-out one-step gap fell from {th['gap'][0]:.4g} to {th['gap'][-1]:.3g} "
              f"(relative {th['relative_gap_final']:.2e}); fitted geometric rate {th['rate']:.5f} per meta-step "
              f"(theoretical bound {th['rate_bound']:.5f}).",
              f"- ||B - B*||_F / ||B*||_F = {th['rel_error_B']:.2e} with B* = 1/2 (X^T X)^-1.", ""]
    return lines
