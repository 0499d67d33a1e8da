"""Where inner optimisation starts: tasks drawn from a family or a pool, their initial
parameters and optimizer states (a leading task axis for a batch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned_dco.meta.inner import InnerState
from learned_dco.types import Array, MetaParams, PRNGKey, Task
from learned_dco.validation import ValidationError


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


STAGGERS = ("truncation", "step", "none")
"""How persistent tasks' episode phases are spread (``stagger`` of the truncated estimators)."""


def stagger_mode(owner: str, stagger) -> str:
    """``stagger`` as one of :data:`STAGGERS` (``True`` is ``"truncation"``, ``False``
    ``"none"``), or a ``ValidationError`` naming the estimator."""
    if stagger is True:
        return "truncation"
    if stagger is False:
        return "none"
    if stagger in STAGGERS:
        return stagger
    raise ValidationError(f"{owner}.stagger: expected true, false or one of {list(STAGGERS)}, got {stagger!r}", field="stagger")


def initial_states(lopt, family, meta, key, num_tasks: int, *, pool=None, horizon: int = 1,
                   stagger="none", truncation: int | None = None) -> InnerState:
    """A batch of fresh inner states whose episode counters start at staggered offsets so
    episode ends are spread out:

    * ``"step"``: uniform in ``[0, horizon)``;
    * ``"truncation"`` (``True``): uniform over the multiples of ``truncation`` in
      ``[0, horizon)`` when ``truncation`` divides ``horizon`` -- every episode boundary then
      falls at the end of a truncation, which lets the truncated estimators reset once per
      truncation instead of at every step (:class:`~learned_dco.meta.unroll.Unroll`) --
      otherwise as ``"step"``;
    * ``"none"`` (``False``): all at 0."""
    mode = stagger_mode("initial_states", stagger)
    aligned = mode == "truncation" and truncation is not None and horizon % truncation == 0

    def one(k):
        k_task, k_state, k_offset = jax.random.split(k, 3)
        task = sample_task(family, pool, k_task)
        if mode == "none":
            offset = 0
        elif aligned:
            offset = truncation * jax.random.randint(k_offset, (), 0, horizon // truncation)
        else:
            offset = jax.random.randint(k_offset, (), 0, horizon)
        return fresh_state(lopt, family, meta, task, k_state, offset)

    return jax.vmap(one)(jax.random.split(key, num_tasks))


def check_pool_size(num_tasks: int, pool_size: int, *, what: str = "a full unroll",
                    pool_name: str = "the task pool size") -> None:
    """Whole-episode starts from a pool draw ``num_tasks`` *distinct* pool tasks per
    meta-step (:func:`episode_starts`): a ``ValidationError`` (field ``num_tasks``) when the
    pool holds fewer."""
    if num_tasks > pool_size:
        raise ValidationError(
            f"{what} draws {num_tasks} distinct tasks per meta-step from the pool, but {pool_name} is {pool_size}",
                field="num_tasks",
            )


def episode_starts(lopt, family, meta, key, num_tasks: int, *, pool=None, init_seed: int = 0,
                   owner: str = "estimator") -> InnerState:
    """The starting states of one meta-step's whole-episode tasks.

    Without a pool: fresh tasks and initial parameters. With a ``pool`` of ``N`` tasks:
    ``num_tasks == N`` uses every pool task (the DCO paper's full-batch meta-epoch),
    otherwise a random subset; pool task ``i`` always starts from the same parameters
    (drawn from ``init_seed`` and ``i``), as in DCO Theorem 1.
    """
    if pool is None:
        return initial_states(lopt, family, meta, key, num_tasks)
    n = jax.tree.leaves(pool)[0].shape[0]
    check_pool_size(num_tasks, n, what=owner)
    index = jnp.arange(n) if num_tasks == n else jax.random.permutation(key, n)[:num_tasks]
    chosen = jax.tree.map(lambda x: x[index], pool)
    base = jax.random.PRNGKey(init_seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
    return jax.vmap(lambda t, k: fresh_state(lopt, family, meta, t, k))(chosen, keys)
