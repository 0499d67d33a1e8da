r"""The general DCO step and the pieces every DCO builder shares.

Gautam, Pfrommer & Sojoudi pose every update as a differentiable convex program (their
eq. 5); :func:`skip_nonfinite` is the non-finite-gradient guard the DCO builders wrap
their steps in.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from learned_dco.types import PyTree

tree_map = jax.tree.map


def _all_finite(tree: PyTree):
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def skip_nonfinite(tx: optax.GradientTransformation, max_consecutive: int | None) -> optax.GradientTransformation:
    """Skip steps whose gradients hold NaN/Inf, without a ``lax.cond``.

    The documented behaviour of ``optax.apply_if_finite`` (same state,
    ``optax.ApplyIfFiniteState``): a skipped step returns a zero update and leaves the
    inner state unchanged; the state counts it (``notfinite_count``, ``total_notfinite``);
    after ``max_consecutive`` bad steps in a row the update passes through, so a run that has
    truly diverged shows up as NaN parameters. ``None`` disables the guard.

    How: the inner update always runs, on the gradients with a rejected step's entries
    replaced by zeros, and ``jnp.where`` selects its outputs or (zero update, old state).
    ``apply_if_finite`` branches with ``lax.cond``; under ``vmap`` with a batched
    predicate that cond becomes a select whose operands are all broadcast to the batch
    (a DCOGD matrix ``B`` shared by 100 tasks is copied 100 times and the matmul becomes 100
    matvecs). Here the shared operands stay shared. Feeding zeros rather than the NaN
    gradients to the discarded branch keeps reverse-mode derivatives finite (``0 * NaN``
    would poison the meta-gradient of a skipped step).
    """
    if max_consecutive is None:
        return tx
    if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 0:
        raise ValueError(f"max_consecutive_nonfinite must be an int >= 0 or None, got {max_consecutive!r}")

    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True, jnp.bool_),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=tx.init(params),
        )

    def update_fn(grads, state, params=None, **extra_args: Any):
        finite = _all_finite(grads)
        count = jnp.where(finite, jnp.zeros([], jnp.int32), optax.safe_increment(state.notfinite_count))
        accept = jnp.logical_or(finite, count > max_consecutive)
        safe = tree_map(lambda g: jnp.where(accept, g, jnp.zeros_like(g)), grads)
        updates, inner = tx.update(safe, state.inner_state, params, **extra_args)
        updates = tree_map(lambda u: jnp.where(accept, u, jnp.zeros_like(u)), updates)
        inner = tree_map(lambda new, old: jnp.where(accept, new, old), inner, state.inner_state)
        total = jnp.where(finite, state.total_notfinite, optax.safe_increment(state.total_notfinite))
        return updates, optax.ApplyIfFiniteState(count, finite, total, inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
