"""Where inner optimisation starts: tasks drawn from a family or a pool, their initial
parameters and optimizer states (a leading task axis for a batch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned_dco.meta.inner import InnerState
from learned_dco.types import Array, MetaParams, PRNGKey, Task


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


def initial_states(lopt, family, meta, key, num_tasks: int, *, pool=None, horizon: int = 1,
                   stagger: bool = False) -> InnerState:
    """A batch of fresh inner states; with ``stagger`` the episode counters start at
    uniformly random offsets in ``[0, horizon)`` so episode ends are spread out."""

    def one(k):
        k_task, k_state, k_offset = jax.random.split(k, 3)
        task = sample_task(family, pool, k_task)
        offset = jax.random.randint(k_offset, (), 0, horizon) if stagger else 0
        return fresh_state(lopt, family, meta, task, k_state, offset)

    return jax.vmap(one)(jax.random.split(key, num_tasks))


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
    if num_tasks > n:
        raise ValueError(f"{owner}.num_tasks ({num_tasks}) exceeds the task pool size ({n})")
    index = jnp.arange(n) if num_tasks == n else jax.random.permutation(key, n)[:num_tasks]
    chosen = jax.tree.map(lambda x: x[index], pool)
    base = jax.random.PRNGKey(init_seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
    return jax.vmap(lambda t, k: fresh_state(lopt, family, meta, t, k))(chosen, keys)
