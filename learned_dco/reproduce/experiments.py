r"""The DCO paper's experiments (Gautam, Pfrommer & Sojoudi, section VI).

For each experiment -- least squares (VI-B, Figure 1), Beverton-Holt system identification
(VI-C, Figure 2) and smooth-function interpolation (VI-D, Figure 3) -- we

1. sample ``num_train`` meta-training tasks and ``num_test`` new tasks from the family;
2. tune every baseline's learning rate (SGD, Adam, RMSProp with PyTorch defaults) by a
   vmapped grid sweep on the *training* tasks (mean validation loss after ``eval_steps``);
3. initialise each DCO optimizer at the tuned hand-designed rule it generalises (paper
   VI-A: "initialised to resemble existing first-order update rules"): DCOG and DCOGD at
   normalised GD, DCOM at normalised EMA momentum (``M = 1 - momentum``), each with its
   step size tuned by the same sweep;
4. meta-train it as in the paper: ``T = 1`` inner step, normalised inner gradients,
   ``M`` full-batch meta-epochs over the training tasks (one meta-update each, Algorithm
   1), RMSProp with PyTorch's defaults, meta-loss = validation loss after the step (eq. 9);
5. apply every optimizer for ``eval_steps`` steps to the new tasks from the same starting
   points and minibatches, recording the validation loss at every iterate.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import learned_dco as ldco
from learned_dco import meta, tasks

DCO_NAMES = ("dcog", "dcogd", "dcom")
BASELINE_NAMES = ("adam", "sgd", "rmsprop")
GRID = tuple(float(x) for x in np.logspace(-4, 1, 21))  # 1e-4 ... 10, 4 per decade


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One of the paper's experiments and its sizes."""

    name: str
    family: Any
    num_train: int = 100
    num_test: int = 100
    meta_epochs: int = 20  # M
    horizon: int = 1  # T
    eval_steps: int = 30
    meta_lr: float = 0.01  # RMSProp, PyTorch default
    momentum: float = 0.9  # DCOM's initial averaging: M = 1 - momentum
    normalize: bool = True
    grid: tuple[float, ...] = GRID
    extension_horizon: int | None = None  # also meta-train with this T (beyond the paper)


def paper_experiments(quick: bool = False) -> list[Experiment]:
    """The three experiments at the paper's sizes, or reduced ones for ``--quick``."""
    if quick:
        return [
            Experiment("least_squares", tasks.LeastSquares(num_samples=100, dim=100), num_train=50, num_test=50,
                       grid=GRID[::2], extension_horizon=30),
            Experiment("beverton_holt", tasks.BevertonHolt(num_train=200, num_val=50), num_train=50, num_test=50,
                       grid=GRID[::2]),
            Experiment("interpolation", tasks.SmoothInterpolation(num_train=200, num_val=50), num_train=50,
                       num_test=10, grid=GRID[::2]),
        ]
    return [
        Experiment("least_squares", tasks.LeastSquares(num_samples=100, dim=100), extension_horizon=30),
        Experiment("beverton_holt", tasks.BevertonHolt()),
        Experiment("interpolation", tasks.SmoothInterpolation(), num_test=10),
    ]


def _normalized_gd(normalize: bool, lr):
    return ldco.dcog(1.0 / jnp.sqrt(lr), normalize=normalize)


def _normalized_momentum(normalize: bool, momentum: float, lr):
    return ldco.dcom(1.0 / jnp.sqrt(lr), 1.0 - momentum, normalize=normalize)


@functools.lru_cache(maxsize=None)
def _hand_designed(name: str, normalize: bool, momentum: float):
    """The rule a DCO optimizer starts from, as a function of its step size (one object per
    setting, so repeated sweeps reuse the compiled program)."""
    if name == "dcom":
        return functools.partial(_normalized_momentum, normalize, momentum)
    return functools.partial(_normalized_gd, normalize)


def _learned(name: str, exp: Experiment, learning_rate: float):
    kw = dict(learning_rate=learning_rate, normalize=exp.normalize)
    if name == "dcog":
        return ldco.DCOG(**kw)
    if name == "dcogd":
        return ldco.DCOGD(**kw)
    return ldco.DCOM(momentum=exp.momentum, **kw)


def _summary(curves: meta.Curves) -> dict[str, list[float]]:
    val = np.asarray(curves.val, dtype=np.float64)
    return {"mean": val.mean(axis=0).tolist(), "std": val.std(axis=0).tolist()}


def _example_params(exp: Experiment, pool):
    first = jax.tree.map(lambda x: x[0], pool)
    return exp.family.init_params(jax.random.PRNGKey(0), first)


def _meta_train(lopt, exp: Experiment, train, horizon: int, key):
    """Algorithm 1: ``meta_epochs`` full-batch meta-updates with RMSProp; returns the
    meta-parameters and the meta-loss per epoch."""
    trainer = meta.MetaTrainer(
        lopt, exp.family, meta.FullUnroll(horizon=horizon, num_tasks=exp.num_train, meta_loss="final_val"),
        meta.rmsprop_pytorch(exp.meta_lr), pool=train,
    )
    state, metrics = trainer.train(key, exp.meta_epochs)
    return state.meta, np.asarray(metrics.meta_loss, dtype=np.float64).tolist()


def run_experiment(exp: Experiment, key: jax.Array, log=print) -> dict[str, Any]:
    """Run one experiment; returns the ``results.json`` entry for it."""
    start = time.perf_counter()
    k_train, k_test, k_tune, k_eval, k_meta = jax.random.split(key, 5)
    train = tasks.sample_tasks(exp.family, k_train, exp.num_train)
    test = tasks.sample_tasks(exp.family, k_test, exp.num_test)
    curves, tuned, init_lr, meta_loss, init_curves = {}, {}, {}, {}, {}

    for name in BASELINE_NAMES:
        tuning = meta.tune_learning_rate(name, exp.family, train, k_tune, exp.eval_steps, exp.grid)
        tuned[name] = tuning.learning_rate
        curves[name] = meta.evaluate(meta.BASELINES[name], tuning.learning_rate, exp.family, test, k_eval, exp.eval_steps)
        log(f"  {exp.name}: {name:8s} lr={tuning.learning_rate:.3g} "
            f"final={float(np.mean(curves[name].val[:, -1])):.4g}")

    extension: dict[str, Any] = {}
    for name in DCO_NAMES:
        tuning = meta.tune_learning_rate(name, exp.family, train, k_tune, exp.eval_steps, exp.grid,
                                         make_tx=_hand_designed(name, exp.normalize, exp.momentum))
        init_lr[name] = tuning.learning_rate
        lopt = _learned(name, exp, tuning.learning_rate)
        learned, meta_loss[name] = _meta_train(lopt, exp, train, exp.horizon, k_meta)
        init_meta = lopt.init(k_meta, _example_params(exp, train))
        init_curves[name] = _summary(meta.evaluate(lopt.opt_fn, init_meta, exp.family, test, k_eval, exp.eval_steps))
        curves[name] = meta.evaluate(lopt.opt_fn, learned, exp.family, test, k_eval, exp.eval_steps)
        log(f"  {exp.name}: {name:8s} init step={tuning.learning_rate:.3g} meta-loss "
            f"{meta_loss[name][0]:.4g} -> {meta_loss[name][-1]:.4g}, final={float(np.mean(curves[name].val[:, -1])):.4g}"
            f" (untrained: {init_curves[name]['mean'][-1]:.4g})")
        if exp.extension_horizon:
            learned_t, loss_t = _meta_train(lopt, exp, train, exp.extension_horizon, k_meta)
            c = meta.evaluate(lopt.opt_fn, learned_t, exp.family, test, k_eval, exp.eval_steps)
            extension[name] = {"curve": _summary(c), "meta_loss": loss_t, "final": float(np.mean(c.val[:, -1]))}
            log(f"  {exp.name}: {name:8s} with T={exp.extension_horizon}: final={extension[name]['final']:.4g}")

    final = {n: float(np.mean(c.val[:, -1])) for n, c in curves.items()}
    best_baseline = min(BASELINE_NAMES, key=lambda n: final[n])
    if extension:
        extension = {"horizon": exp.extension_horizon, "optimizers": extension,
                     "wins": {n: e["final"] <= final[best_baseline] for n, e in extension.items()}}
    return {
        "steps": list(range(exp.eval_steps + 1)),
        "curves": {n: _summary(c) for n, c in curves.items()},
        "tuned_lr": tuned,
        "dco_init_step": init_lr,
        "dco_init_curves": init_curves,
        "meta_loss": meta_loss,
        "final": final,
        "best_baseline": best_baseline,
        "dco_wins": {n: final[n] <= final[best_baseline] for n in DCO_NAMES},
        "extension": extension or None,
        "diverged": {n: int(np.sum(~np.isfinite(np.asarray(c.val[:, -1])))) for n, c in curves.items()},
        "settings": {
            "family": type(exp.family).__name__,
            "family_fields": {f.name: getattr(exp.family, f.name) for f in dataclasses.fields(exp.family)},
            "num_train": exp.num_train, "num_test": exp.num_test, "meta_epochs": exp.meta_epochs,
            "horizon": exp.horizon, "eval_steps": exp.eval_steps, "meta_lr": exp.meta_lr,
            "momentum": exp.momentum, "normalize": exp.normalize, "grid": list(exp.grid),
            "extension_horizon": exp.extension_horizon,
        },
        "seconds": time.perf_counter() - start,
    }
