"""How well can the DCO rules do on the paper's least-squares tasks at all?

An *oracle* sweep: every optimizer's step size (and DCOM's averaging weight M) is tuned
directly on the held-out tasks for the loss at step 30 -- an upper bound on what
meta-training a scalar step could achieve (DCOG's per-weight steps cannot beat a scalar
step here: X has i.i.d. Gaussian entries, so the task distribution is invariant under
rotations of theta and the best per-weight step is the same for every weight).

    python -m learned_dco.studies.dco.oracle [--tasks 100] [--steps 30] [--out DIR]

(part of the DCO study's evidence, not run by ``learned-dco reproduce``: ~50 tuning sweeps
over 100 tasks; writes ``dco_oracle.json`` to ``--out``, default ``results/dco``).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import learned_dco as ldco
from learned_dco import meta, tasks
from learned_dco.io import atomic_write_json, environment

GRID = tuple(float(x) for x in np.logspace(-5, 1, 49))


def _dcog(normalize, lr):
    return ldco.dcog_transform(1.0 / jnp.sqrt(lr), normalize=normalize, max_consecutive_nonfinite=None)


def _dcom(normalize, m, lr):
    return ldco.dcom_transform(1.0 / jnp.sqrt(lr), m, normalize=normalize, max_consecutive_nonfinite=None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="results/dco")
    args = ap.parse_args(argv)

    family = tasks.LeastSquares()
    test = tasks.sample_tasks(family, jax.random.PRNGKey(args.seed), args.tasks)
    key = jax.random.PRNGKey(args.seed + 2)
    rows = []

    def sweep(label, make_tx):
        tuned = meta.tune_learning_rate(label, family, test, key, args.steps, GRID, make_tx=make_tx)
        rows.append({"optimizer": label, "best_step": tuned.learning_rate, "loss_at_final": float(tuned.scores.min())})
        print(f"{label:32s} step={tuned.learning_rate:.3g} loss@{args.steps}={tuned.scores.min():.4g}", flush=True)

    for name in ["sgd", "momentum", "adam", "rmsprop"]:
        sweep(name, meta.BASELINES[name])
    for normalize in (False, True):
        sweep(f"dcog (scalar lam, normalize={normalize})", functools.partial(_dcog, normalize))
        for m in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7):
            sweep(f"dcom (M={m}, normalize={normalize})", functools.partial(_dcom, normalize, m))
    path = atomic_write_json(Path(args.out) / "dco_oracle.json", {"tasks": args.tasks, "steps": args.steps,
                                                                  "grid": list(GRID), "rows": rows, **environment()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
