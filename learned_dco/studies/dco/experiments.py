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
   1), RMSProp with PyTorch's defaults, meta-loss = validation loss after the step (eq. 9),
   under both readings of Algorithm 1 (:func:`algorithm1`):

   * ``protocol="reset"``: every meta-epoch restarts each task from its initial point
     (the reading Theorem 1 uses; :class:`learned_dco.meta.MetaTrainer` with ``FullUnroll``);
   * ``protocol="carry"``: step 2 of Algorithm 1 initialises each task's parameters and
     optimizer state *once*, before the epoch loop, and never resets them, so meta-epoch
     ``k + 1`` starts every task where meta-epoch ``k`` left it;
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

import optax

import learned_dco as ldco
from learned_dco import meta, tasks
from learned_dco.meta import distributed

PROTOCOLS = ("reset", "carry")
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
    protocols: tuple[str, ...] = PROTOCOLS  # readings of Algorithm 1 to run
    qp_check: str | None = None  # also run the reset protocol with this iterative QP backend
    direct_check: bool = False  # also meta-train a directly parameterised DCOG (projected)

    def __post_init__(self):
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or "reset" not in self.protocols:
            raise ValueError(f"Experiment.protocols must be a subset of {PROTOCOLS} containing 'reset', got {self.protocols!r}")


def paper_experiments(quick: bool = False) -> list[Experiment]:
    """The three experiments at the paper's sizes, or reduced ones for ``--quick``."""
    if quick:
        return [
            Experiment("least_squares", tasks.LeastSquares(num_samples=100, dim=100), num_train=50, num_test=50,
                       grid=GRID[::2], extension_horizon=30, qp_check="eqqp", direct_check=True),
            Experiment("beverton_holt", tasks.BevertonHolt(num_train=200, num_val=50), num_train=50, num_test=50,
                       grid=GRID[::2]),
            Experiment("beverton_holt_noisy_val", tasks.BevertonHolt(num_train=200, num_val=50, noisy_val=True),
                       num_train=50, num_test=50, grid=GRID[::2], protocols=("reset",)),
            Experiment("interpolation", tasks.SmoothInterpolation(num_train=200, num_val=50), num_train=50,
                       num_test=10, grid=GRID[::2]),
        ]
    return [
        Experiment("least_squares", tasks.LeastSquares(num_samples=100, dim=100), extension_horizon=30,
                   qp_check="eqqp", direct_check=True),
        Experiment("beverton_holt", tasks.BevertonHolt()),
        Experiment("beverton_holt_noisy_val", tasks.BevertonHolt(noisy_val=True), protocols=("reset",)),
        Experiment("interpolation", tasks.SmoothInterpolation(), num_test=10),
    ]


def _normalized_gd(normalize: bool, lr):
    return ldco.dcog_transform(1.0 / jnp.sqrt(lr), normalize=normalize)


def _normalized_momentum(normalize: bool, momentum: float, lr):
    return ldco.dcom_transform(1.0 / jnp.sqrt(lr), 1.0 - momentum, normalize=normalize)


@functools.lru_cache(maxsize=None)
def _hand_designed(name: str, normalize: bool, momentum: float):
    """The rule a DCO optimizer starts from, as a function of its step size (one object per
    setting, so repeated sweeps reuse the compiled program)."""
    if name == "dcom":
        return functools.partial(_normalized_momentum, normalize, momentum)
    return functools.partial(_normalized_gd, normalize)


def _learned(name: str, exp: Experiment, learning_rate: float, solver: str = "exact"):
    kw = dict(learning_rate=learning_rate, normalize=exp.normalize, solver=solver)
    if name == "dcog":
        return ldco.DCOG(**kw)
    if name == "dcogd":
        return ldco.DCOGD(**kw)
    return ldco.DCOM(momentum=exp.momentum, **kw)


#: Non-finite (diverged) or larger validation losses enter the paired comparisons at this value.
LOSS_CAP = 1e6


def _summary(curves: meta.Curves) -> dict[str, list[float]]:
    """Mean and std curves over the new tasks, and each task's loss at step 1 and at the last
    step (non-finite or above :data:`LOSS_CAP` counted as the cap): the paired units of the verdicts."""
    val = np.asarray(curves.val, dtype=np.float64)
    capped = np.where(np.isfinite(val), np.minimum(val, LOSS_CAP), LOSS_CAP)
    return {"mean": val.mean(axis=0).tolist(), "std": val.std(axis=0).tolist(),
            "per_task_first": capped[:, min(1, val.shape[1] - 1)].tolist(), "per_task_final": capped[:, -1].tolist()}


def _example_params(exp: Experiment, pool):
    first = jax.tree.map(lambda x: x[0], pool)
    return exp.family.init_params(jax.random.PRNGKey(0), first)


@dataclasses.dataclass(frozen=True)
class DirectDCOG:
    r"""DCOG with :math:`\Lambda` learned *directly* (the paper's parameterisation), kept
    well-posed by projection: ``opt_fn`` uses :math:`\max(\Lambda, \Lambda_{min})` and
    :func:`algorithm1` projects after every meta-update (``project``). The library's
    :class:`learned_dco.DCOG` learns :math:`\log\Lambda` instead."""

    learning_rate: float
    normalize: bool = True
    lam_min: float = 1e-3

    def init(self, key, params):
        del key
        return {"lam": jax.tree.map(lambda p: jnp.full_like(p, 1.0 / np.sqrt(self.learning_rate)), params)}

    def project(self, meta_params):
        return jax.tree.map(lambda x: jnp.maximum(x, self.lam_min), meta_params)

    def opt_fn(self, meta_params):
        return ldco.dcog_transform(self.project(meta_params)["lam"], normalize=self.normalize)


def algorithm1(lopt, family, train, meta0, key, *, epochs: int, horizon: int = 1, meta_lr: float = 0.01,
               protocol: str = "carry"):
    r"""Algorithm 1 of the DCO paper written as its steps read, for either protocol.

    Step 2 initialises every training task's parameters :math:`\theta_i` and optimizer
    state once. Each meta-epoch runs ``horizon`` inner steps on every task with the current
    meta-parameters :math:`\phi`, takes one RMSProp (PyTorch defaults) step on
    :math:`\nabla_\phi \frac1N\sum_i \ell^{val}_i(\theta_i^{+})` (eq. 9), and then

    * ``"carry"``: keeps :math:`\theta_i^{+}` and the optimizer state for the next epoch
      (no gradient flows into earlier epochs: the carried values are data);
    * ``"reset"``: starts the next epoch from the initial :math:`\theta_i` again.

    ``lopt`` needs ``init``/``opt_fn`` (and optionally ``project``, applied to the
    meta-parameters after each update). Returns ``(meta, meta_losses, params_history)``
    where ``params_history[k]`` are the task parameters epoch ``k`` *started* from.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    n = jax.tree.leaves(train)[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    params0 = jax.vmap(lambda k, t: family.init_params(k, t))(keys, train)
    states0 = jax.vmap(lopt.opt_fn(meta0).init)(params0)
    project = getattr(lopt, "project", lambda m: m)
    meta_opt = meta.rmsprop_pytorch(meta_lr)

    def epoch_loss(phi, params, states, epoch_key):
        tx = lopt.opt_fn(phi)

        def one(p, s, task, k):
            for t in range(horizon):
                batch = family.sample_batch(jax.random.fold_in(k, t), task)
                g = jax.grad(family.loss)(p, task, batch)
                u, s = tx.update(g, s, p)
                p = optax.apply_updates(p, u)
            return family.val_loss(p, task), (p, s)

        ks = jax.vmap(lambda i: jax.random.fold_in(epoch_key, i))(jnp.arange(n))
        losses, carried = jax.vmap(one)(params, states, train, ks)
        return jnp.mean(losses), carried

    @jax.jit
    def epoch(phi, opt_state, params, states, epoch_key):
        (loss, carried), grad = jax.value_and_grad(epoch_loss, has_aux=True)(phi, params, states, epoch_key)
        updates, opt_state = meta_opt.update(grad, opt_state, phi)
        return project(optax.apply_updates(phi, updates)), opt_state, loss, carried

    phi, opt_state = meta0, meta_opt.init(meta0)
    params, states, losses, history = params0, states0, [], []
    for k in range(epochs):
        history.append(params)
        phi, opt_state, loss, (new_params, new_states) = epoch(phi, opt_state, params, states,
                                                               jax.random.fold_in(key, 10_000 + k))
        losses.append(float(loss))
        if protocol == "carry":
            params, states = new_params, new_states
    return phi, losses, history


def _meta_train(lopt, exp: Experiment, train, horizon: int, key, protocol: str = "reset"):
    """Algorithm 1: ``meta_epochs`` full-batch meta-updates with RMSProp; returns the
    meta-parameters and the meta-loss per epoch. ``reset`` runs the library's trainer,
    ``carry`` the literal loop of :func:`algorithm1`."""
    if protocol == "carry":
        phi, losses, _ = algorithm1(lopt, exp.family, train, lopt.init(key, _example_params(exp, train)), key,
                                    epochs=exp.meta_epochs, horizon=horizon, meta_lr=exp.meta_lr, protocol="carry")
        return phi, losses
    trainer = meta.MetaTrainer(
        lopt, exp.family, meta.FullUnroll(horizon=horizon, num_tasks=exp.num_train, meta_loss="final_val"),
        meta.rmsprop_pytorch(exp.meta_lr), pool=train,
    )
    state, metrics = trainer.train(key, exp.meta_epochs)
    return state.meta, np.asarray(metrics.meta_loss, dtype=np.float64).tolist()


def _key(name: str, protocol: str) -> str:
    return name if protocol == "reset" else f"{name}_{protocol}"


def tune_baselines(exp: Experiment, train, test, k_tune, k_eval, log=print) -> tuple[dict, dict]:
    """Tune every baseline's learning rate by the vmapped grid sweep on ``train`` (mean
    validation loss after ``exp.eval_steps``), then evaluate it on ``test``; returns
    ``(tuned learning rates, per-task Curves as numpy)``. Pass task batches placed with
    ``distributed.shard_tasks`` to spread the work over every process's devices."""
    tuned, curves = {}, {}
    for name in BASELINE_NAMES:
        tuning = meta.tune_learning_rate(name, exp.family, train, k_tune, exp.eval_steps, exp.grid)
        tuned[name] = tuning.learning_rate
        curves[name] = distributed.to_host(
            meta.evaluate(meta.BASELINES[name], tuning.learning_rate, exp.family, test, k_eval, exp.eval_steps))
        log(f"  {exp.name}: {name:8s} lr={tuning.learning_rate:.3g} "
            f"final={float(np.mean(curves[name].val[:, -1])):.4g}")
    return tuned, curves


def run_experiment(exp: Experiment, key: jax.Array, log=print) -> dict[str, Any]:
    """Run one experiment; returns the ``results.json`` entry for it.

    ``curves`` holds the baselines, the DCO rules under ``protocol="reset"`` (``"dcog"``)
    and under ``protocol="carry"`` (``"dcog_carry"``), all evaluated on the same new tasks
    from the same starting points and minibatches.
    """
    start = time.perf_counter()
    k_train, k_test, k_tune, k_eval, k_meta = jax.random.split(key, 5)
    train = tasks.sample_tasks(exp.family, k_train, exp.num_train)
    test = tasks.sample_tasks(exp.family, k_test, exp.num_test)
    # sweeps and evaluations: task batches split over every device of every process
    train_s, test_s = distributed.shard_tasks(train), distributed.shard_tasks(test)
    init_lr, meta_loss, init_curves = {}, {}, {}
    tuned, curves = tune_baselines(exp, train_s, test_s, k_tune, k_eval, log=log)

    extension: dict[str, Any] = {}
    qp_check: dict[str, Any] = {}
    for name in DCO_NAMES:
        tuning = meta.tune_learning_rate(name, exp.family, train_s, k_tune, exp.eval_steps, exp.grid,
                                         make_tx=_hand_designed(name, exp.normalize, exp.momentum))
        init_lr[name] = tuning.learning_rate
        lopt = _learned(name, exp, tuning.learning_rate)
        init_meta = lopt.init(k_meta, _example_params(exp, train))
        init_curves[name] = _summary(distributed.to_host(
            meta.evaluate(lopt.opt_fn, init_meta, exp.family, test_s, k_eval, exp.eval_steps)))
        for protocol in exp.protocols:
            learned, meta_loss[_key(name, protocol)] = _meta_train(lopt, exp, train, exp.horizon, k_meta, protocol)
            c = curves[_key(name, protocol)] = distributed.to_host(
                meta.evaluate(lopt.opt_fn, learned, exp.family, test_s, k_eval, exp.eval_steps))
            log(f"  {exp.name}: {name:8s} [{protocol}] init step={tuning.learning_rate:.3g} meta-loss "
                f"{meta_loss[_key(name, protocol)][0]:.4g} -> {meta_loss[_key(name, protocol)][-1]:.4g}, "
                f"final={float(np.mean(c.val[:, -1])):.4g} (untrained: {init_curves[name]['mean'][-1]:.4g})")
        if exp.qp_check:
            solver_lopt = _learned(name, exp, tuning.learning_rate, solver=exp.qp_check)
            learned_q, loss_q = _meta_train(solver_lopt, exp, train, exp.horizon, k_meta, "reset")
            cq = _summary(distributed.to_host(
                meta.evaluate(solver_lopt.opt_fn, learned_q, exp.family, test_s, k_eval, exp.eval_steps)))
            ref = np.asarray(_summary(curves[name])["mean"])
            rel = float(np.max(np.abs(np.asarray(cq["mean"]) - ref) / np.abs(ref)))
            qp_check[name] = {"curve": cq, "meta_loss": loss_q, "max_rel_diff": rel}
            log(f"  {exp.name}: {name:8s} with solver={exp.qp_check}: max relative curve difference {rel:.2e}")
        if exp.extension_horizon:
            learned_t, loss_t = _meta_train(lopt, exp, train, exp.extension_horizon, k_meta)
            c = distributed.to_host(meta.evaluate(lopt.opt_fn, learned_t, exp.family, test_s, k_eval, exp.eval_steps))
            extension[name] = {"curve": _summary(c), "meta_loss": loss_t, "final": float(np.mean(c.val[:, -1])),
                               "diverged": int(np.sum(~np.isfinite(np.asarray(c.val[:, -1]))))}
            log(f"  {exp.name}: {name:8s} with T={exp.extension_horizon}: final={extension[name]['final']:.4g}")

    direct = None
    if exp.direct_check:  # DCOG with Lambda learned directly (projected), reset protocol
        lopt_d = DirectDCOG(init_lr["dcog"], exp.normalize)
        phi, losses, _ = algorithm1(lopt_d, exp.family, train, lopt_d.init(None, _example_params(exp, train)), k_meta,
                                    epochs=exp.meta_epochs, horizon=exp.horizon, meta_lr=exp.meta_lr, protocol="reset")
        c = distributed.to_host(meta.evaluate(lopt_d.opt_fn, phi, exp.family, test_s, k_eval, exp.eval_steps))
        lam = np.asarray(jax.tree.leaves(phi)[0])
        direct = {"curve": _summary(c), "meta_loss": losses, "final": float(np.mean(c.val[:, -1])),
                  "lam_min": float(lam.min()), "projected_entries": int(np.sum(lam <= lopt_d.lam_min))}
        log(f"  {exp.name}: dcog direct Lambda: final={direct['final']:.4g}, min Lambda {direct['lam_min']:.3g}")

    final = {n: float(np.mean(c.val[:, -1])) for n, c in curves.items()}
    best_baseline = min(BASELINE_NAMES, key=lambda n: final[n])
    wins = {p: {n: final[_key(n, p)] <= final[best_baseline] for n in DCO_NAMES} for p in exp.protocols}
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
        "protocols": list(exp.protocols),
        "wins": wins,
        "dco_wins": wins["reset"],
        "extension": extension or None,
        "qp_check": ({"solver": exp.qp_check, "optimizers": qp_check} if qp_check else None),
        "direct": direct,
        "diverged": {n: int(np.sum(~np.isfinite(np.asarray(c.val[:, -1])))) for n, c in curves.items()},
        "settings": {
            "family": type(exp.family).__name__,
            "family_fields": {f.name: getattr(exp.family, f.name) for f in dataclasses.fields(exp.family)},
            "num_train": exp.num_train, "num_test": exp.num_test, "meta_epochs": exp.meta_epochs,
            "horizon": exp.horizon, "eval_steps": exp.eval_steps, "meta_lr": exp.meta_lr,
            "momentum": exp.momentum, "normalize": exp.normalize, "grid": list(exp.grid),
            "extension_horizon": exp.extension_horizon, "protocols": list(exp.protocols),
        },
        "seconds": time.perf_counter() - start,
    }
