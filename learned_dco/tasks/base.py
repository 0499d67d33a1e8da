"""The task-family protocol: a distribution over optimisation problems.

Meta-learning needs many related problems. A ``TaskFamily`` is a frozen dataclass of
hyperparameters (sizes, noise levels, shift knobs) and pure, array-only functions:

* ``sample(key) -> task``: one problem, a pytree of arrays (data, targets, constants), so
  ``jax.vmap(family.sample)(keys)`` gives a batch of tasks with a leading axis;
* ``init_params(key, task) -> params``: the inner optimiser's starting point;
* ``loss(params, task, batch=None)``: the training loss; ``batch`` comes from
  ``sample_batch`` for stochastic families and ``None`` means the full (deterministic) loss;
* ``val_loss(params, task)``: the evaluation loss (held-out data where the family has it);
* ``sample_batch(key, task)``: a minibatch / noise draw, or ``None`` for deterministic tasks;
* ``optimum(task)``: the known minimiser where one exists (raises ``NotImplementedError``
  otherwise);
* ``info``: static metadata (parameter count, paper source, whether an optimum is known).

Families whose objective is the same for every task (``ShiftedLeastSquares``,
``NoisyQuadratic``, ``Rosenbrock``) keep the starting point in the task itself, so that
"a task" is a (problem, start) pair as in DCO's Theorem 1; their ``init_params`` returns it
and ignores its key.

The split follows learned_optimization's ``TaskFamily.sample`` / ``Task`` with the task
state kept as plain arrays so that every function is jit- and vmap-compatible.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from learned_dco import validation
from learned_dco.types import Array, Batch, Params, PRNGKey, Task


class TaskInfo(NamedTuple):
    """Static facts about a task family."""

    name: str
    num_params: int  # size of the ravelled parameter vector
    source: str  # paper and section the family comes from
    has_optimum: bool  # whether ``optimum(task)`` is implemented
    stochastic: bool  # whether ``sample_batch`` returns something other than None


@runtime_checkable
class TaskFamily(Protocol):
    """What the meta-training loop needs from a task family (see the module docstring).

    Structural: any object with these members is a task family; the concrete families of
    this package also inherit the defaults of :class:`TaskFamilyBase`. Families must be
    hashable (frozen dataclasses), since estimators pass them to ``jax.jit`` as static
    arguments.
    """

    @property
    def name(self) -> str: ...

    @property
    def info(self) -> TaskInfo: ...

    def sample(self, key: PRNGKey) -> Task: ...

    def init_params(self, key: PRNGKey, task: Task) -> Params: ...

    def loss(self, params: Params, task: Task, batch: Batch | None = None) -> Array: ...

    def val_loss(self, params: Params, task: Task) -> Array: ...

    def sample_batch(self, key: PRNGKey, task: Task) -> Batch | None: ...

    def optimum(self, task: Task) -> Params: ...


class TaskFamilyBase:
    """Defaults shared by the concrete families (subclasses are frozen dataclasses).

    Subclasses implement ``sample``, ``init_params`` and ``loss``; they override
    ``val_loss``, ``sample_batch`` and ``optimum`` where the family has them, and set the
    class attributes ``source`` and ``has_optimum``.
    """

    source: str = ""
    has_optimum: bool = False

    # --- to implement -------------------------------------------------------------------
    def sample(self, key: PRNGKey) -> Task:
        raise NotImplementedError

    def init_params(self, key: PRNGKey, task: Task) -> Params:
        raise NotImplementedError

    def loss(self, params: Params, task: Task, batch: Batch | None = None) -> Array:
        raise NotImplementedError

    # --- defaults ------------------------------------------------------------------------
    def val_loss(self, params: Params, task: Task) -> Array:
        """Evaluation loss; by default the full training loss."""
        return self.loss(params, task, None)

    def sample_batch(self, key: PRNGKey, task: Task) -> Batch | None:
        """A minibatch / noise draw for one inner step; ``None`` for deterministic tasks."""
        del key, task
        return None

    def optimum(self, task: Task) -> Params:
        raise NotImplementedError(f"{type(self).__name__} has no known optimum")

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def info(self) -> TaskInfo:
        key = jax.random.PRNGKey(0)
        task = jax.eval_shape(self.sample, key)
        params = jax.eval_shape(self.init_params, key, task)
        batch = jax.eval_shape(self.sample_batch, key, task)
        num_params = int(sum(np.prod(p.shape, dtype=int) for p in jax.tree.leaves(params)))
        return TaskInfo(
            name=self.name,
            num_params=num_params,
            source=self.source,
            has_optimum=self.has_optimum,
            stochastic=batch is not None,
        )


def sample_tasks(family: TaskFamily, key: PRNGKey, num_tasks: int) -> Task:
    """``num_tasks`` tasks stacked on a leading axis (one ``jax.vmap`` of ``sample``)."""
    validation.positive_int("sample_tasks", "num_tasks", num_tasks)
    return jax.vmap(family.sample)(jax.random.split(key, num_tasks))

