"""Shared helpers of the task-family test modules (tests/test_tasks.py and one
tests/test_<family>.py per module of learned_dco/tasks/).

Import the autouse fixture into a test module to use it there:
``from _task_helpers import fast_compiles  # noqa: F401``.
"""

from __future__ import annotations

import functools

import jax
import pytest

from learned_dco import tasks as T


@pytest.fixture(autouse=True, scope="module")
def fast_compiles():
    """Skip XLA's expensive LLVM passes while the importing module runs.

    On a small CPU box most of these modules' time is XLA compiling vmapped threefry
    (a 64-key vmap of a 3-line sampler takes seconds at full optimisation, a tenth of
    that without); the programs here are tiny, so execution speed does not matter.
    """
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@functools.lru_cache(maxsize=None)
def jitted(family, method):
    """One persistent ``jax.jit`` of ``family.<method>`` (bound methods are new objects on
    every access, so ``jax.jit(family.sample)`` inline would recompile every time)."""
    return jax.jit(getattr(family, method))


@functools.lru_cache(maxsize=None)
def task_sampler(family, num_tasks):
    """Jitted ``key -> sample_tasks(family, key, num_tasks)``."""
    return jax.jit(lambda key: T.sample_tasks(family, key, num_tasks))


def sample(family, seed):
    return jitted(family, "sample")(jax.random.PRNGKey(seed))


def sample_many(family, seed, num_tasks):
    return task_sampler(family, num_tasks)(jax.random.PRNGKey(seed))
