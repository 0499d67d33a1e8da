r"""The meta-training loop: one jitted meta-step over a sharded batch of tasks.

A meta-step is one jitted function of the :class:`TrainState` (meta-parameters, the
meta-optimizer state, the estimator's per-task state and a key):

1. the estimator returns per-task estimates for a batch of tasks (``jax.vmap``; the task
   axis is sharded over every device of a 1-D ``jax.sharding.Mesh``, so the same code runs
   on one CPU, several GPUs or a TPU host);
2. tasks whose meta-loss or gradient is non-finite are dropped from the average, counted,
   and their persistent inner states restarted;
3. the meta-optimizer (any optax transformation; RMSProp with PyTorch's defaults, as in the
   DCO paper, by default) updates the meta-parameters -- unless the averaged gradient is
   non-finite or no task was finite, in which case the update is skipped, the last good
   meta-parameters are kept and the skip is counted.

Meta-step ``k`` uses the key ``fold_in(key, k)``, so a run restored from a checkpoint at
step ``k`` continues exactly as the uninterrupted run would (:func:`learned_dco.app.runs.run`).
:meth:`MetaTrainer.train` is the same loop as a pure ``lax.scan``, so a grid of seeds can
be meta-trained in one ``jax.vmap``-ed call.

What a meta-step trains on comes from a :class:`~learned_dco.meta.schedule.Schedule`:
with one task family every meta-step has the same stage and one compiled program; with a
task mixture (:class:`learned_dco.tasks.Mixture`) meta-step ``k`` draws a member and an
inner horizon :math:`T` on the host and runs that stage's compiled program (one program
per ``(member, T)``, built on first use and reused after). Every leaf of the estimator's
state and of a meta-step's starting states carries the task axis first; that axis is the
one sharded.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from learned_dco.optimizers.base import global_norm
from learned_dco.meta.estimators import TaskEstimate
from learned_dco.meta.schedule import Schedule, Stage
from learned_dco.meta.starts import sample_task
from learned_dco.validation import ValidationError
from learned_dco.types import Array, MetaParams, PRNGKey, Task

tree_map = jax.tree.map


def rmsprop_pytorch(learning_rate: float = 1e-2) -> optax.GradientTransformation:
    """RMSProp with PyTorch's defaults (alpha 0.99, eps 1e-8 outside the square root): the
    DCO paper's meta-optimizer (section VI-A)."""
    return optax.rmsprop(learning_rate, decay=0.99, eps=1e-8, eps_in_sqrt=False)


class TrainState(NamedTuple):
    step: Array  # int32 meta-steps taken
    meta: MetaParams
    opt_state: Any  # meta-optimizer state
    estimator_state: Any  # per-task persistent state (leading task axis), or ()
    key: PRNGKey  # base key; meta-step k uses fold_in(key, k)
    skipped: Array  # int32 meta-updates skipped (non-finite meta-gradient)


class Metrics(NamedTuple):
    meta_loss: Array  # mean per-task meta-loss estimate over finite tasks
    train_loss: Array  # mean inner training loss
    grad_norm: Array  # global norm of the averaged meta-gradient
    nonfinite_tasks: Array  # int32 tasks dropped this step
    skipped: Array  # bool: this meta-update was skipped


def _task_mask(leaf: Array, ok: Array) -> Array:
    return ok.reshape(ok.shape + (1,) * (leaf.ndim - 1))


class Average(NamedTuple):
    """Per-task estimates averaged over the finite tasks."""

    grad: MetaParams
    meta_loss: Array
    train_loss: Array
    ok: Array  # (num_tasks,) bool: the task's meta-loss and gradient are finite
    n_ok: Array  # int: finite tasks


def finite_average(est: TaskEstimate) -> Average:
    r"""Average per-task estimates over the tasks whose meta-loss and gradient are finite:
    :math:`\bar g = \sum_{i \in F} g_i / \max(|F|, 1)`. (Training losses are averaged over
    the tasks whose training loss is finite.)"""
    ok = jnp.isfinite(est.meta_loss)
    for g in jax.tree.leaves(est.grad):
        ok &= jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)
    n_ok = jnp.sum(ok)
    denom = jnp.maximum(n_ok, 1).astype(est.meta_loss.dtype)

    def masked_mean(x):
        return jnp.sum(jnp.where(_task_mask(x, ok), x, 0), axis=0) / denom.astype(x.dtype)

    finite_train = jnp.isfinite(est.train_loss)
    train_loss = jnp.sum(jnp.where(finite_train, est.train_loss, 0)) / jnp.maximum(jnp.sum(finite_train), 1)
    return Average(tree_map(masked_mean, est.grad), masked_mean(est.meta_loss), train_loss, ok, n_ok)


class MetaTrainer:
    """Meta-train a learned optimizer on a task family with a gradient estimator.

    Args:
      lopt: a learned optimizer (``init(key, params)``, ``opt_fn(meta)``).
      family: a task family (``learned_dco.tasks``), or a :class:`~learned_dco.tasks.Mixture`.
      estimator: ``FullUnroll``, ``TruncatedBPTT``, ``ES`` or ``PES``.
      meta_optimizer: an optax transformation for the meta-parameters (default
        :func:`rmsprop_pytorch`).
      pool: optional fixed training tasks (leading axis), e.g. the DCO paper's 100
        meta-training tasks; otherwise tasks are sampled fresh from the family.
      devices: devices to shard the task batch over (default: all of ``jax.devices()``);
        the estimator's ``num_tasks`` must be a multiple of their number.
    """

    def __init__(
        self,
        lopt,
        family,
        estimator,
        meta_optimizer: optax.GradientTransformation | None = None,
        *,
        pool: Task | None = None,
        devices: list | None = None,
    ):
        self.lopt, self.family, self.estimator = lopt, family, estimator
        self.meta_optimizer = meta_optimizer if meta_optimizer is not None else rmsprop_pytorch()
        self.pool = pool
        devices = list(jax.devices()) if devices is None else list(devices)
        if estimator.num_tasks % len(devices):
            raise ValueError(
                f"num_tasks ({estimator.num_tasks}) must be a multiple of the number of devices "
                f"({len(devices)}) to shard the task batch"
            )
        self.schedule = Schedule(lopt, family, estimator)
        self.schedule.check_pool(pool)
        self.mesh = Mesh(np.array(devices), ("tasks",))
        self._task_sharding = NamedSharding(self.mesh, PartitionSpec("tasks"))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        if pool is not None:
            self.pool = jax.device_put(pool, self._replicated)
        self._programs: dict[tuple[int, int | None], Callable] = {}
        self._step = self.program(self.schedule.initial)
        self._init = jax.jit(self._init_state)

    @property
    def mixture(self):
        """The task mixture trained on, or ``None``."""
        return self.schedule.mixture

    # --- sharding -------------------------------------------------------------------------
    def _constrain(self, tree):
        """Shard every leaf of a per-task tree (the estimator's state, a meta-step's
        starts) along its leading task axis."""
        return tree_map(lambda x: jax.lax.with_sharding_constraint(x, self._task_sharding) if jnp.ndim(x) else x, tree)

    def _state_shardings(self, state: TrainState) -> TrainState:
        """Where each leaf of a training state lives: the estimator's per-task state split
        along the task axis, everything else replicated. ``init`` places states there and
        every meta-step's output is constrained there, so the jitted step sees the same
        input shardings on every call and compiles once."""
        per_task = lambda x: self._task_sharding if jnp.ndim(x) else self._replicated  # noqa: E731
        replicated = tree_map(lambda _: self._replicated, state._replace(estimator_state=()))
        return replicated._replace(estimator_state=tree_map(per_task, state.estimator_state))

    # --- state ------------------------------------------------------------------------------
    def example_params(self, key: PRNGKey, family=None):
        """Parameters of one task (shapes the learned optimizer's meta-parameters); for a
        mixture, of its first member unless ``family`` is given."""
        if family is None:
            family = self.schedule.families[0]
        k_task, k_init = jax.random.split(key)
        task = sample_task(family, self.pool, k_task)
        return family.init_params(k_init, task)

    def stage(self, state: TrainState) -> Stage:
        """The stage (member, horizon and the problem there) of ``state``'s next meta-step."""
        return self.schedule.at(state.key, state.step)

    def draw(self, state: TrainState) -> tuple[int, int | None]:
        """``(member index, horizon)`` of ``state``'s next meta-step (a function of the
        base key and the step only, so a resumed run draws the same)."""
        return self.schedule.draw(state.key, state.step)

    def member(self, index: int, horizon: int):
        """``(family, estimator, lopt)`` of a mixture's member ``index`` at inner horizon
        ``horizon``."""
        stage = self.schedule.stage(index, horizon)
        return stage.family, stage.estimator, stage.lopt

    def _init_state(self, key: PRNGKey, pool) -> TrainState:
        k_params, k_meta, k_est, k_run = jax.random.split(key, 4)
        meta = self.lopt.init(k_meta, self.example_params(k_params))
        stage = self.schedule.initial
        est_state = () if stage.fresh else stage.bind(pool).init(meta, k_est)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            meta=meta,
            opt_state=self.meta_optimizer.init(meta),
            estimator_state=self._constrain(est_state),
            key=k_run,
            skipped=jnp.zeros((), jnp.int32),
        )

    def init(self, key: PRNGKey, meta: MetaParams | None = None) -> TrainState:
        """A fresh training state (optionally starting from given meta-parameters)."""
        state = self._init(key, self.pool)
        if meta is not None:
            meta = tree_map(jnp.asarray, meta)
            state = state._replace(meta=meta, opt_state=self.meta_optimizer.init(meta))
        return jax.device_put(state, self._state_shardings(state))

    # --- one meta-step ----------------------------------------------------------------------
    def _estimate(self, stage: Stage, meta, est_state, key, pool):
        """Per-task estimates, with the per-task starting states sharded over devices; a
        fresh stage starts its estimator's state afresh."""
        bound = stage.bind(pool)
        if stage.fresh:
            est_state = bound.init(meta, jax.random.fold_in(key, 1))
        starts = self._constrain(bound.start(meta, est_state, key))
        est, est_state = bound.estimate(meta, starts, key)
        return est, (() if stage.fresh else est_state)

    def _meta_step(self, state: TrainState, pool, stage: Stage | None = None) -> tuple[TrainState, Metrics]:
        stage = self.schedule.initial if stage is None else stage
        key = jax.random.fold_in(state.key, state.step)
        k_est, k_reset = jax.random.split(key)
        est, est_state = self._estimate(stage, state.meta, state.estimator_state, k_est, pool)
        avg = finite_average(est)
        ok, n_ok, grad = avg.ok, avg.n_ok, avg.grad

        # Restart the persistent inner states of tasks that went non-finite.
        if jax.tree.leaves(est_state):
            def restart(s):
                fresh = self._constrain(stage.bind(pool).init(state.meta, k_reset))
                return tree_map(lambda a, b: jnp.where(_task_mask(a, ok), a, b), s, fresh)

            est_state = jax.lax.cond(jnp.all(ok), lambda s: s, restart, est_state)

        grad_norm = global_norm(grad)
        good = (n_ok > 0) & jnp.isfinite(grad_norm)
        updates, opt_state = self.meta_optimizer.update(grad, state.opt_state, state.meta)
        meta = optax.apply_updates(state.meta, updates)
        keep = lambda new, old: tree_map(lambda a, b: jnp.where(good, a, b), new, old)
        new_state = TrainState(
            step=state.step + 1,
            meta=keep(meta, state.meta),
            opt_state=keep(opt_state, state.opt_state),
            estimator_state=est_state,
            key=state.key,
            skipped=state.skipped + (~good).astype(jnp.int32),
        )
        new_state = jax.lax.with_sharding_constraint(new_state, self._state_shardings(new_state))
        metrics = Metrics(avg.meta_loss, avg.train_loss, grad_norm, (ok.size - n_ok).astype(jnp.int32), ~good)
        return new_state, metrics

    def program(self, stage: Stage) -> Callable:
        """The jitted meta-step of ``stage`` (built on first use, then reused)."""
        key = (stage.index, stage.horizon)
        if key not in self._programs:
            self._programs[key] = jax.jit(functools.partial(self._meta_step, stage=stage))
        return self._programs[key]

    def step(self, state: TrainState) -> tuple[TrainState, Metrics]:
        """One jitted meta-step, of the stage :meth:`stage` gives."""
        return self.program(self.stage(state))(state, self.pool)

    def meta_gradient(self, state: TrainState) -> MetaParams:
        """The averaged meta-gradient the next step would apply (for tests and analysis):
        the mean over the tasks whose estimate is finite, as in the step."""
        stage = self.stage(state)

        def grad_of(state, pool):
            key = jax.random.fold_in(state.key, state.step)
            est, _ = self._estimate(stage, state.meta, state.estimator_state, jax.random.split(key)[0], pool)
            return finite_average(est).grad

        return jax.jit(grad_of)(state, self.pool)

    # --- pure training loop (vmappable over seeds) ------------------------------------------
    def train(
        self,
        key: PRNGKey,
        num_steps: int,
        *,
        meta: MetaParams | None = None,
        record: Callable[[TrainState], Any] | None = None,
    ) -> tuple[TrainState, Metrics] | tuple[TrainState, tuple[Metrics, Any]]:
        """``num_steps`` meta-steps from a fresh state as one jitted ``lax.scan``.

        Pure in ``key`` and ``meta``, so ``jax.vmap(lambda k: trainer.train(k, n))(keys)``
        meta-trains a grid of seeds in one call. ``meta`` replaces the initial
        meta-parameters; ``record(state)``, if given, is evaluated after every meta-step and
        stacked (e.g. the meta-parameter trajectory), and the result is then
        ``(state, (metrics, records))``. The task pool is passed to the compiled program as
        an argument (not baked in as a constant).
        """
        if self.mixture is not None:
            raise ValidationError(
                "MetaTrainer.train: a task mixture picks a compiled program per meta-step on the host; "
                "loop over MetaTrainer.step instead (learned_dco.app.runs.run does)",
                field="train",
            )
        return self._train_jit(key, self.pool, meta, num_steps=num_steps, record=record)

    @functools.partial(jax.jit, static_argnums=0, static_argnames=("num_steps", "record"))
    def _train_jit(self, key, pool, meta, *, num_steps, record):
        state = self._init_state(key, pool)
        if meta is not None:
            state = state._replace(meta=meta, opt_state=self.meta_optimizer.init(meta))

        def body(s, _):
            s, metrics = self._meta_step(s, pool)
            return s, (metrics if record is None else (metrics, record(s)))

        return jax.lax.scan(body, state, length=num_steps)
