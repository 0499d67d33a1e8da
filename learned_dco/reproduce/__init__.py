"""``learned-dco reproduce``: the DCO paper end to end (Figures 1-3 and Theorem 1).

``reproduce(quick=..., out=..., seed=...)`` runs the three experiments of
:mod:`learned_dco.reproduce.experiments` and the Theorem 1 check of
:mod:`learned_dco.reproduce.theorem1`, then writes one PNG per figure, ``theorem1.png``,
``report.md`` and ``results.json`` to ``out``. The same seed gives the same numbers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import jax

from learned_dco.reproduce.experiments import Experiment, paper_experiments, run_experiment
from learned_dco.reproduce.report import FIGURES, plot_experiment, plot_theorem1, write_report, write_results
from learned_dco.reproduce.theorem1 import run_theorem1


def _versions() -> dict[str, Any]:
    import jaxlib
    import optax

    import learned_dco

    return {"learned_dco": learned_dco.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "optax": optax.__version__, "python": sys.version.split()[0], "backend": jax.default_backend(),
            "devices": len(jax.devices())}


def reproduce(quick: bool = False, out: str | Path = "results/reproduce", seed: int = 0, log=print,
              experiments: list[Experiment] | None = None) -> dict[str, Any]:
    """Run everything and write the outputs; returns the ``results.json`` content."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.PRNGKey(seed)
    experiments = paper_experiments(quick) if experiments is None else experiments
    results: dict[str, Any] = {"experiments": {}}
    figures: dict[str, str] = {}
    for i, exp in enumerate(experiments):
        log(f"[{i + 1}/{len(experiments) + 1}] {exp.name} ({type(exp.family).__name__}, "
            f"{exp.num_train} train / {exp.num_test} new tasks)")
        result = run_experiment(exp, jax.random.fold_in(key, i), log=log)
        results["experiments"][exp.name] = result
        figures[exp.name] = FIGURES.get(exp.name, (f"{exp.name}.png",))[0]
        plot_experiment(exp.name, result, out / figures[exp.name])
    log(f"[{len(experiments) + 1}/{len(experiments) + 1}] Theorem 1")
    results["theorem1"] = run_theorem1(jax.random.fold_in(key, 100), log=log)
    figures["theorem1"] = "theorem1.png"
    plot_theorem1(results["theorem1"], out / figures["theorem1"])
    results["config"] = {"quick": quick, "seed": seed, "out": str(out),
                         "command": f"learned-dco reproduce{' --quick' if quick else ''} --out {out} --seed {seed}"}
    results["versions"] = _versions()
    results["seconds"] = time.perf_counter() - start
    write_results(results, out)
    write_report(results, out, figures)
    log(f"done in {results['seconds']:.0f} s: {out / 'report.md'}, {out / 'results.json'}")
    return results


__all__ = ["Experiment", "paper_experiments", "reproduce", "run_experiment", "run_theorem1"]
