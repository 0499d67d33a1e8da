r"""Apply optimizers to held-out tasks, and tune baselines with vmapped sweeps.

:func:`rollout` runs any optax transformation on a batch of tasks (``jax.vmap``) for
``num_steps`` steps in one ``lax.scan`` and records the validation and training losses at
every iterate :math:`\theta_0, \dots, \theta_T` (so curves include step 0).

:func:`tune_learning_rate` evaluates a baseline for a whole grid of learning rates in one
jitted, vmapped call and picks the rate with the lowest mean final validation loss
(diverged runs count as +inf). Baselines follow PyTorch's defaults, as the DCO paper's
experiments did: SGD without momentum, Adam (0.9, 0.999, eps 1e-8) and RMSProp
(alpha 0.99, eps 1e-8 outside the square root).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_dco.meta.inner import InnerState, inner_loop
from learned_dco.types import Array, PRNGKey, Task

BASELINES: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": functools.partial(optax.sgd, momentum=0.9),
    "adam": functools.partial(optax.adam, b1=0.9, b2=0.999, eps=1e-8),
    "rmsprop": functools.partial(optax.rmsprop, decay=0.99, eps=1e-8, eps_in_sqrt=False),
}

DEFAULT_GRID = tuple(float(x) for x in np.logspace(-4, 0, 17))  # 1e-4 ... 1, 4 per decade


class Curves(NamedTuple):
    """Per-task losses at every iterate: arrays of shape ``(num_tasks, num_steps + 1)``."""

    val: Array
    train: Array


def _one_task(tx, family, task, key, num_steps) -> Curves:
    k_init, k_run = jax.random.split(key)
    params = family.init_params(k_init, task)

    def record(p):
        return family.val_loss(p, task), family.loss(p, task, None)

    state = InnerState(params, tx.init(params), task, jnp.zeros((), jnp.int32), k_run)
    _, (val, train) = inner_loop(tx, family, state, num_steps, record=lambda step: record(step.params))
    first = record(params)
    return Curves(jnp.concatenate([first[0][None], val]), jnp.concatenate([first[1][None], train]))


def rollout(tx: optax.GradientTransformation, family, tasks: Task, key: PRNGKey, num_steps: int) -> Curves:
    """Run ``tx`` on every task (leading axis of ``tasks``); curves include step 0.

    Task ``i`` starts from ``family.init_params(fold_in(key, i), task_i)``-derived keys, so
    every optimizer evaluated with the same ``key`` starts from the same points and sees the
    same minibatches. (Traced as is; prefer :func:`evaluate`, which compiles once per
    optimizer family.)
    """
    n = jax.tree.leaves(tasks)[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    return jax.vmap(lambda t, k: _one_task(tx, family, t, k, num_steps))(tasks, keys)


@functools.partial(jax.jit, static_argnames=("make_tx", "family", "num_steps"))
def evaluate(make_tx: Callable, hparams, family, tasks: Task, key: PRNGKey, num_steps: int) -> Curves:
    """:func:`rollout` of ``make_tx(hparams)``, jitted with ``make_tx`` static.

    ``make_tx`` is e.g. ``lopt.opt_fn`` (``hparams`` = meta-parameters) or a baseline
    constructor (``hparams`` = learning rate); equal ``make_tx`` reuse the compiled program.
    """
    return rollout(make_tx(hparams), family, tasks, key, num_steps)


@functools.partial(jax.jit, static_argnames=("make_tx", "family", "num_steps"))
def _sweep(make_tx, grid, family, tasks, key, num_steps):
    return jax.vmap(lambda lr: final_score(rollout(make_tx(lr), family, tasks, key, num_steps)))(grid)


def final_score(curves: Curves) -> Array:
    """Mean final validation loss over tasks; +inf if any task diverged."""
    final = curves.val[..., -1]
    return jnp.where(jnp.all(jnp.isfinite(final), axis=-1), jnp.mean(final, axis=-1), jnp.inf)


class Tuned(NamedTuple):
    name: str
    learning_rate: float
    grid: tuple[float, ...]
    scores: np.ndarray  # mean final validation loss per grid point (inf: diverged)


def tune_learning_rate(
    name: str,
    family,
    tasks: Task,
    key: PRNGKey,
    num_steps: int,
    grid: tuple[float, ...] = DEFAULT_GRID,
    make_tx: Callable[[float], optax.GradientTransformation] | None = None,
) -> Tuned:
    """Pick the learning rate of a baseline by a vmapped grid sweep on ``tasks``."""
    if make_tx is None:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; expected one of {sorted(BASELINES)}")
        make_tx = BASELINES[name]
    if not grid or any(not (lr > 0) for lr in grid):
        raise ValueError(f"learning-rate grid must be non-empty and positive, got {grid!r}")
    scores = np.asarray(_sweep(make_tx, jnp.asarray(grid, jnp.float32), family, tasks, key, num_steps), np.float64)
    scores = np.where(np.isfinite(scores), scores, np.inf)
    return Tuned(name, float(grid[int(np.argmin(scores))]), tuple(grid), scores)
