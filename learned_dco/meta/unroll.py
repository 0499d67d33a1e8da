r"""Truncations of episodes: :func:`~learned_dco.meta.inner.inner_loop` plus meta-loss
terms and per-task episode resets.

The meta-loss of an episode of horizon :math:`T` is a sum of per-step terms
:math:`\sum_{t<T} m_t` (:mod:`learned_dco.meta.losses`), so truncated estimators can split
it. Episodes end after ``horizon`` steps; with ``reset=True`` the task is then replaced by
a fresh one (new task, parameters and optimizer state) *inside* the scan, per task, so
tasks in a batch can be at different phases (truncated estimators stagger them).

Every inner step can use a different meta-parameter value before and after an episode
boundary that falls inside a truncation (``meta_after``): ES and PES need it to credit the
steps of a new episode to that episode's perturbation.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from learned_dco.meta.inner import InnerState, Step, inner_loop
from learned_dco.meta.losses import MetaLoss, as_meta_loss
from learned_dco.meta.starts import fresh_state, sample_task
from learned_dco.types import Array, MetaParams, Task


class TruncationOutput(NamedTuple):
    """Sums over one truncation, split at the first episode boundary inside it."""

    loss_before: Array  # sum of meta-loss terms of steps up to and including the boundary
    loss_after: Array  # sum of terms of steps after the boundary (a new episode)
    reset: Array  # bool: an episode ended inside this truncation
    train_loss: Array  # mean training loss over the truncation
    step_losses: Array  # (K,) per-step meta-loss terms


@dataclasses.dataclass(frozen=True, eq=False)
class Unroll:
    """How one task's truncations run: the learned optimizer, the task family (and pool),
    the episode horizon and the meta-loss. Built once by a bound estimator; called with
    ``(meta, state, num_steps)``.

    ``terminal_inside=False`` leaves terminal meta-loss terms to the caller (a full unroll
    computes them once after the scan, :meth:`terminal`).
    """

    lopt: object
    family: object
    horizon: int
    meta_loss: MetaLoss
    pool: Task | None = None
    reset: bool = True
    remat: bool = False
    terminal_inside: bool = True

    def __post_init__(self):
        object.__setattr__(self, "meta_loss", as_meta_loss(self.meta_loss))

    def terminal(self, state: InnerState) -> Array:
        """The end-of-episode term of a terminal meta-loss at ``state``."""
        return self.meta_loss.terminal_term(self.family, state.params, state.task, self.horizon)

    def _term(self, step: Step) -> Array:
        dtype = step.loss.dtype
        if not self.meta_loss.terminal:
            return self.meta_loss.step_term(self.family, step, self.horizon)
        if not self.terminal_inside:
            return jnp.zeros((), dtype)
        return jax.lax.cond(
            step.next.step >= self.horizon,
            lambda s: self.terminal(s).astype(dtype),
            lambda s: jnp.zeros((), dtype),
            step.next,
        )

    def _restart(self, meta: MetaParams, reset_key) -> InnerState:
        k_task, k_fresh = jax.random.split(reset_key)
        task = sample_task(self.family, self.pool, k_task)
        return fresh_state(self.lopt, self.family, meta, task, k_fresh)

    def _next_episode(self, meta: MetaParams, state: InnerState, num_steps: int) -> InnerState:
        """The fresh state that replaces ``state``'s episode if it ends inside these
        ``num_steps`` steps, computed once, before the scan (at most one boundary falls
        inside). It is the state the boundary step would draw: the key chain is fixed in
        advance (:func:`~learned_dco.meta.inner.inner_step` splits ``key`` into the next
        key and three others), so the boundary step's reset key is known from
        ``state.step``. Under ``vmap`` a per-step ``lax.cond`` becomes a select that
        computes the fresh state of every task at every step."""
        chain = jax.lax.scan(lambda k, _: (jax.random.split(k, 4)[0], k), state.key, length=num_steps)[1]
        boundary = jnp.clip(self.horizon - 1 - state.step, 0, num_steps - 1)
        return self._restart(meta, jax.random.split(chain[boundary], 4)[3])

    def _record(self, step: Step):
        return self._term(step), step.loss, step.next.step >= self.horizon

    def _scan_aligned(self, meta, state, num_steps):
        """The steps of :meth:`_aligned` without the reset: ``(state, output, reset key)``,
        the reset key being the last step's (the one the per-step reset would use).

        Only what is used leaves the scan: the last step's reset key is carried (not the
        stack of every step's), and the episode ended inside iff the final step count
        reached the horizon (the count only grows inside the scan), so no per-step flags are
        stacked either."""
        def record(step):
            return self._term(step), step.loss

        def keep_reset_key(_, step):
            return step.reset_key, step.next

        (reset_key, state), (terms, train) = inner_loop(
            self.lopt.opt_fn(meta), self.family, state, num_steps, meta=state.key, record=record,
            transition=keep_reset_key, remat=self.remat, return_meta=True)
        return state, TruncationOutput(
            loss_before=jnp.sum(terms),
            loss_after=jnp.zeros_like(jnp.sum(terms)),
            reset=state.step >= self.horizon,
            train_loss=jnp.mean(train),
            step_losses=terms,
        ), reset_key

    def _reset_ended(self, state: InnerState, fresh: InnerState) -> InnerState:
        return jax.tree.map(lambda a, b: jnp.where(state.step >= self.horizon, a, b), fresh, state)

    def _aligned(self, meta, next_meta, state, num_steps):
        """:meth:`__call__` when a boundary can fall only at the last step: the episode's
        steps in one scan, then one reset."""
        state, out, reset_key = self._scan_aligned(meta, state, num_steps)
        return self._reset_ended(state, self._restart(next_meta, reset_key)), out

    def antithetic(self, meta_plus, meta_minus, plus: InnerState, minus: InnerState, num_steps: int,
                   after_plus, after_minus, *, boundary_inside: bool = True):
        """``(self(meta_plus, plus, ...), self(meta_minus, minus, ...))`` for an antithetic
        pair whose two trajectories share their random stream (same task, same keys: ES and
        PES start both from one state). Without a boundary inside, the next episode's task
        and parameters are drawn once for the pair (they are the same draw) and only the
        optimizer states differ (``after_plus`` / ``after_minus``)."""
        if boundary_inside or not self.reset:
            return (self(meta_plus, plus, num_steps, meta_after=after_plus, boundary_inside=boundary_inside),
                    self(meta_minus, minus, num_steps, meta_after=after_minus, boundary_inside=boundary_inside))
        plus, out_p, reset_key = self._scan_aligned(meta_plus, plus, num_steps)
        minus, out_m, _ = self._scan_aligned(meta_minus, minus, num_steps)
        fresh_p = self._restart(after_plus, reset_key)
        fresh_m = fresh_p._replace(opt_state=self.lopt.opt_fn(after_minus).init(fresh_p.params))
        return (self._reset_ended(plus, fresh_p), out_p), (self._reset_ended(minus, fresh_m), out_m)

    def __call__(self, meta: MetaParams, state: InnerState, num_steps: int,
                 meta_after: MetaParams | None = None, *,
                 boundary_inside: bool = True) -> tuple[InnerState, TruncationOutput]:
        """``num_steps`` inner steps of one task. Steps after the first episode boundary
        inside the unroll run with ``meta_after`` (if given) instead of ``meta``. Requires
        ``num_steps <= horizon`` when resetting, so at most one boundary falls inside.

        ``boundary_inside=False`` is the caller's promise that no episode boundary falls
        before the last step (``horizon - state.step >= num_steps``; see
        :func:`ends_aligned`): the scan then carries no reset and no meta switch, and a
        boundary at the last step resets once, after the scan. Same result, without the
        per-step select of a fresh state that a ``vmap`` over tasks otherwise pays."""
        if self.reset and num_steps > self.horizon:
            raise ValueError(f"truncation length {num_steps} must be <= horizon {self.horizon}")
        next_meta = meta if meta_after is None else meta_after
        if self.reset and not boundary_inside:
            return self._aligned(meta, next_meta, state, num_steps)

        def opt_fn(after):
            if meta_after is None:
                return self.lopt.opt_fn(meta)
            return self.lopt.opt_fn(jax.tree.map(lambda a, b: jnp.where(after, a, b), meta_after, meta))

        fresh = self._next_episode(next_meta, state, num_steps) if self.reset else None

        def transition(after, step):
            ended = step.next.step >= self.horizon
            if not self.reset:
                return after | ended, step.next
            return after | ended, jax.tree.map(lambda a, b: jnp.where(ended, a, b), fresh, step.next)

        state, (terms, train, ended) = inner_loop(
            opt_fn, self.family, state, num_steps, meta=jnp.zeros((), bool), record=self._record,
            transition=transition, remat=self.remat,
        )
        ended_i = ended.astype(jnp.int32)
        after = (jnp.cumsum(ended_i) - ended_i) > 0  # a boundary fell before this step
        zero = jnp.zeros_like(terms)
        return state, TruncationOutput(
            loss_before=jnp.sum(jnp.where(after, zero, terms)),
            loss_after=jnp.sum(jnp.where(after, terms, zero)),
            reset=jnp.any(ended),
            train_loss=jnp.mean(train),
            step_losses=terms,
        )


def ends_aligned(states: InnerState, horizon: int, num_steps: int) -> Array:
    """True when no task of the batch ``states`` reaches an episode boundary before the last
    of the next ``num_steps`` steps, so :class:`Unroll` may run with ``boundary_inside=False``
    (a scalar over the whole batch: the truncated estimators branch on it with one
    ``lax.cond``, outside the ``vmap`` over tasks)."""
    return jnp.all(horizon - states.step >= num_steps)
