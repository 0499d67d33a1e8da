r"""THE inner loop: an optimizer applied to one task inside one ``lax.scan``.

One inner step on task :math:`\tau` with parameters :math:`\theta_t`:

.. math::
    b_t \sim \text{batch}(\tau),\quad (\ell_t, g_t) = (\ell, \nabla_\theta\ell)(\theta_t; \tau, b_t),\quad
    (u_t, s_{t+1}) = \text{tx.update}(g_t, s_t, \theta_t),\quad \theta_{t+1} = \theta_t + u_t.

:func:`inner_loop` runs ``num_steps`` of these and hands each step (a :class:`Step`) to a
``record`` hook, whose outputs it stacks. Everything that runs an optimizer on a task uses
it: the estimators' truncations (:mod:`learned_dco.meta.unroll`), evaluation, M-L2O
adaptation, the regret bound, step-size L2L and the benchmarks.

Random streams: the state carries a key; step :math:`t` splits it into the next key, the
minibatch key, a key for the hook's own draws (:attr:`Step.key`, e.g. a fresh batch for a
meta-loss) and a key for whatever happens after the step (:attr:`Step.reset_key`, e.g. an
episode reset). A state whose key is ``None`` draws nothing (deterministic tasks).

The optimizer is built from a carried value each step (``opt_fn(meta)``), and an optional
``transition(meta, step) -> (meta, state)`` may replace both after the step: that is how
truncations restart finished episodes and switch to the next episode's meta-parameters.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import optax

from learned_dco.types import Array, Params, PRNGKey, Task


class InnerState(NamedTuple):
    """One task's inner-optimisation state (a batch of tasks adds a leading axis)."""

    params: Params
    opt_state: Any
    task: Task
    step: Array  # int32: steps taken in the current episode
    key: PRNGKey | None  # this task's random stream (minibatches, the next reset)


class Step(NamedTuple):
    """One inner step, as the ``record`` hook and ``transition`` see it."""

    state: InnerState  # before the step (theta_t, s_t)
    loss: Array  # l(theta_t; b_t), computed with the gradient
    grads: Params  # g_t
    updates: Params  # u_t
    next: InnerState  # after the step (theta_{t+1}, s_{t+1}, step + 1, next key)
    key: PRNGKey | None  # for the hook's own draws
    reset_key: PRNGKey | None  # for the transition's draws

    @property
    def params(self) -> Params:
        """:math:`\\theta_{t+1}`."""
        return self.next.params


def inner_step(tx: optax.GradientTransformation, family, state: InnerState) -> Step:
    """One step of ``tx`` on ``state.task`` (module docstring)."""
    if state.key is None:
        key = k_batch = k_record = k_reset = None
    else:
        key, k_batch, k_record, k_reset = jax.random.split(state.key, 4)
    batch = family.sample_batch(k_batch, state.task)
    loss, grads = jax.value_and_grad(family.loss)(state.params, state.task, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    nxt = InnerState(params, opt_state, state.task, state.step + 1, key)
    return Step(state, loss, grads, updates, nxt, k_record, k_reset)


def _constant(tx):
    return lambda _: tx


def inner_loop(
    opt_fn: Callable[[Any], optax.GradientTransformation] | optax.GradientTransformation,
    family,
    state: InnerState,
    num_steps: int,
    *,
    meta: Any = None,
    record: Callable[[Step], Any] | None = None,
    transition: Callable[[Any, Step], tuple[Any, InnerState]] | None = None,
    remat: bool = False,
    return_meta: bool = False,
) -> tuple[InnerState, Any]:
    """``num_steps`` inner steps in one ``lax.scan``.

    Args:
      opt_fn: a transformation, or a function of the carried ``meta`` building one.
      family: the task family (``sample_batch``, ``loss``).
      state: the starting :class:`InnerState`.
      meta: a value carried through the steps (``opt_fn``'s argument); may change only
        through ``transition``.
      record: ``record(step) -> pytree``, stacked over the steps (``None``: nothing).
      transition: ``transition(meta, step) -> (meta, state)`` after every step
        (default: keep ``meta``, continue from ``step.next``).
      remat: wrap each step in ``jax.checkpoint`` (memory O(steps) small carries).
      return_meta: also return the final carried ``meta`` (what ``transition`` left there).

    Returns:
      ``(final state, records)``, or ``((final meta, final state), records)`` with
      ``return_meta``.
    """
    build = _constant(opt_fn) if isinstance(opt_fn, optax.GradientTransformation) else opt_fn

    def body(carry, _):
        m, s = carry
        step = inner_step(build(m), family, s)
        out = None if record is None else record(step)
        carry = (m, step.next) if transition is None else transition(m, step)
        return carry, out

    if remat:
        body = jax.checkpoint(body)
    (meta, state), records = jax.lax.scan(body, (meta, state), length=num_steps)
    return ((meta, state) if return_meta else state), records
