r"""The inner loop: a learned optimizer applied to a task inside one ``lax.scan``.

One inner step on task :math:`\tau` with parameters :math:`\theta_t`:

.. math::
    b_t \sim \text{batch}(\tau),\quad g_t = \nabla_\theta \ell(\theta_t; \tau, b_t),\quad
    (u_t, s_{t+1}) = \text{tx.update}(g_t, s_t, \theta_t),\quad \theta_{t+1} = \theta_t + u_t.

The *meta-loss* of an episode of horizon :math:`T` is a sum of per-step terms
:math:`\sum_{t<T} m_t` so that truncated estimators can split it:

* ``"final_val"``: :math:`m_{T-1} = \ell^{val}(\theta_T)`, zero before (DCO eq. 9);
* ``"final_train"``: the full training loss :math:`\ell(\theta_T)` at the end;
* ``"mean_train"``: :math:`m_t = \ell(\theta_{t+1}; b'_t) / T` on a fresh batch
  :math:`b'_t` (STAR's mean training loss over the unroll);
* ``"log_final_train"``: :math:`\tfrac1T \log \ell(\theta_T)` (step-size L2L's
  :math:`\tfrac1t\log f(w_t)`).

Episodes end after ``horizon`` steps; with ``reset=True`` the task is then replaced by a
fresh one (new task, parameters and optimizer state) *inside* the scan, per task, so
tasks in a batch can be at different phases (truncated estimators stagger them).

Every inner step can use a different meta-parameter value before and after an episode
boundary that falls inside a truncation (``meta_after``): ES and PES need it to credit the
steps of a new episode to that episode's perturbation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_dco.types import Array, MetaParams, Params, PRNGKey, Task

META_LOSSES = ("final_val", "final_train", "mean_train", "log_final_train")
TERMINAL_LOSSES = ("final_val", "final_train", "log_final_train")


class InnerState(NamedTuple):
    """One task's inner-optimisation state (a batch of tasks adds a leading axis)."""

    params: Params
    opt_state: Any
    task: Task
    step: Array  # int32: steps taken in the current episode
    key: PRNGKey  # this task's random stream (minibatches, the next reset)


def check_meta_loss(meta_loss: str) -> None:
    if meta_loss not in META_LOSSES:
        raise ValueError(f"unknown meta_loss {meta_loss!r}; expected one of {META_LOSSES}")


def sample_task(family, pool: Task | None, key: PRNGKey) -> Task:
    """A task from the family, or uniformly from a fixed ``pool`` (leading axis) if given."""
    if pool is None:
        return family.sample(key)
    n = jax.tree.leaves(pool)[0].shape[0]
    index = jax.random.randint(key, (), 0, n)
    return jax.tree.map(lambda x: x[index], pool)


def fresh_state(lopt, family, meta: MetaParams, task: Task, key: PRNGKey, step: Array | int = 0) -> InnerState:
    """Initial parameters and optimizer state for ``task`` (episode step ``step``)."""
    k_init, k_run = jax.random.split(key)
    params = family.init_params(k_init, task)
    opt_state = lopt.opt_fn(meta).init(params)
    return InnerState(params, opt_state, task, jnp.asarray(step, jnp.int32), k_run)


def terminal_loss(family, meta_loss: str, params: Params, task: Task, horizon: int) -> Array:
    """The end-of-episode meta-loss term for the terminal meta-losses."""
    if meta_loss == "final_val":
        return family.val_loss(params, task)
    if meta_loss == "final_train":
        return family.loss(params, task, None)
    if meta_loss == "log_final_train":
        return jnp.log(family.loss(params, task, None)) / horizon
    raise ValueError(f"{meta_loss!r} is not a terminal meta-loss")


class StepOutput(NamedTuple):
    meta_loss: Array  # this step's meta-loss term m_t
    train_loss: Array  # the training loss at theta_t on its batch
    ended: Array  # bool: the episode ended at this step


def inner_step(
    lopt,
    family,
    meta: MetaParams,
    state: InnerState,
    *,
    horizon: int,
    meta_loss: str,
    pool: Task | None = None,
    reset: bool = True,
    meta_after: MetaParams | None = None,
    terminal_inside: bool = True,
) -> tuple[InnerState, StepOutput]:
    """One inner step (see the module docstring), with an episode reset if it ends here.

    ``meta`` drives this step; ``meta_after`` (default ``meta``) initialises the optimizer
    state of the next episode. ``terminal_inside=False`` leaves terminal meta-loss terms to
    the caller (a full unroll computes them once after the scan).
    """
    key, k_batch, k_meta, k_reset = jax.random.split(state.key, 4)
    batch = family.sample_batch(k_batch, state.task)
    train_loss, grads = jax.value_and_grad(family.loss)(state.params, state.task, batch)
    updates, opt_state = lopt.opt_fn(meta).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    ended = step >= horizon

    if meta_loss == "mean_train":
        term = family.loss(params, state.task, family.sample_batch(k_meta, state.task)) / horizon
    elif terminal_inside:
        term = jax.lax.cond(
            ended,
            lambda p: terminal_loss(family, meta_loss, p, state.task, horizon).astype(train_loss.dtype),
            lambda p: jnp.zeros((), train_loss.dtype),
            params,
        )
    else:
        term = jnp.zeros((), train_loss.dtype)

    new_state = InnerState(params, opt_state, state.task, step, key)
    if reset:
        def restart(_):
            k_task, k_fresh = jax.random.split(k_reset)
            task = sample_task(family, pool, k_task)
            return fresh_state(lopt, family, meta if meta_after is None else meta_after, task, k_fresh)

        new_state = jax.lax.cond(ended, restart, lambda _: new_state, None)
    return new_state, StepOutput(term, train_loss, ended)


class TruncationOutput(NamedTuple):
    """Sums over one truncation, split at the first episode boundary inside it."""

    loss_before: Array  # sum of meta-loss terms of steps up to and including the boundary
    loss_after: Array  # sum of terms of steps after the boundary (a new episode)
    reset: Array  # bool: an episode ended inside this truncation
    train_loss: Array  # mean training loss over the truncation
    step_losses: Array  # (K,) per-step meta-loss terms


def unroll(
    lopt,
    family,
    meta: MetaParams,
    state: InnerState,
    num_steps: int,
    *,
    horizon: int,
    meta_loss: str,
    pool: Task | None = None,
    reset: bool = True,
    meta_after: MetaParams | None = None,
    remat: bool = False,
    terminal_inside: bool = True,
) -> tuple[InnerState, TruncationOutput]:
    """``num_steps`` inner steps of one task in a ``lax.scan``.

    Steps after the first episode boundary inside the unroll run with ``meta_after`` (if
    given) instead of ``meta``. Requires ``num_steps <= horizon`` when resetting, so at most
    one boundary falls inside an unroll.
    """
    if reset and num_steps > horizon:
        raise ValueError(f"truncation length {num_steps} must be <= horizon {horizon}")

    def body(carry, _):
        state, after = carry
        step_meta = meta
        if meta_after is not None:
            step_meta = jax.tree.map(lambda a, b: jnp.where(after, a, b), meta_after, meta)
        state, out = inner_step(
            lopt, family, step_meta, state, horizon=horizon, meta_loss=meta_loss, pool=pool,
            reset=reset, meta_after=meta_after, terminal_inside=terminal_inside,
        )
        return (state, after | out.ended), (out, after)

    if remat:
        body = jax.checkpoint(body)
    (state, any_reset), (outs, after) = jax.lax.scan(body, (state, jnp.zeros((), bool)), length=num_steps)
    before = ~after
    zero = jnp.zeros_like(outs.meta_loss)
    return state, TruncationOutput(
        loss_before=jnp.sum(jnp.where(before, outs.meta_loss, zero)),
        loss_after=jnp.sum(jnp.where(after, outs.meta_loss, zero)),
        reset=any_reset,
        train_loss=jnp.mean(outs.train_loss),
        step_losses=outs.meta_loss,
    )
