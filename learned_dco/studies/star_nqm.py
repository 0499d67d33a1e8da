"""STAR Fig. 2a: trace of the meta-gradient variance vs the nominal step alpha on the NQM.

The 2-D noisy quadratic of STAR App. B.1 (``NoisyQuadratic.star()``: H of eq. A.30,
phi_0 ~ N(0, 10 I), xi_t ~ N(0, I)); the update phi+ = phi - (alpha I + P) grad with the
dense meta-parameter P held at 0; for 50 values of alpha in (0, 2/lambda_max(H)) and the
horizons T, the trace of the covariance over 500 seeds of grad_P of the mean loss over T
steps (``learned_dco.analysis.figure2a``). Part of the STAR study
(:mod:`learned_dco.studies.star`); ``figure2a()`` returns the data, ``plot`` draws it.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from learned_dco import analysis
from learned_dco.tasks import NoisyQuadratic


def plot(result: dict, path: Path) -> None:
    from learned_dco import extras

    plt = extras.pyplot()

    alphas = np.asarray(result["alphas"])
    var = np.asarray(result["trace_variance"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    colors = plt.cm.viridis_r(np.linspace(0.0, 0.9, len(result["horizons"])))
    for row, T, c in zip(var, result["horizons"], colors):
        ax.plot(alphas, row, color=c, label=f"T={T}")
    edge = result["stability_edge"]
    for a in (ax, ax2):
        a.axvline(edge, color="k", ls="--", lw=1)
        a.set_xlabel(r"nominal step $\alpha$ (P = 0)")
    ax.set_yscale("log")
    ax.set_ylabel("trace of meta-gradient variance")
    ax.set_title(f"STAR Fig. 2a on the App. B.1 NQM ({result['num_seeds']} seeds)")
    ax.legend(fontsize=8, ncol=2)
    ax2.plot(alphas, result["spectral_radius"], color="C3")
    ax2.set_ylabel(r"$\rho(I - \alpha H)$")
    ax2.set_title(r"spectral radius; dashed: $2/\lambda_{max}(H)$")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure2a(*, seed: int = 0, num_seeds: int = 500, num_alphas: int = 50, paper_horizons: bool = False) -> dict:
    """Fig. 2a data and a per-horizon summary (min trace, its alpha, value at the largest alpha)."""
    family = NoisyQuadratic.star()
    horizons = analysis.PAPER_HORIZONS if paper_horizons else analysis.DEFAULT_HORIZONS
    start = time.perf_counter()
    result = analysis.figure2a(
        np.asarray(family.hessian), jax.random.PRNGKey(seed), num_alphas=num_alphas,
        num_seeds=num_seeds, horizons=horizons, init_var=family.init_var, noise_var=family.noise_std**2,
    )
    result = {k: (np.asarray(v).tolist() if hasattr(v, "shape") else v) for k, v in result.items()}
    result["seconds"] = time.perf_counter() - start
    var = np.asarray(result["trace_variance"])
    alphas = np.asarray(result["alphas"])
    result["summary"] = [
        {"T": int(T), "min_alpha": float(alphas[np.argmin(row)]), "min": float(row.min()),
         "at_smallest_alpha": float(row[0]), "at_largest_alpha": float(row[-1])}
        for T, row in zip(result["horizons"], var)
    ]
    return result
