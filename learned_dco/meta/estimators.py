r"""Meta-gradient estimators: pure functions behind small frozen dataclasses.

An estimator is one frozen dataclass of options, validated when built, whose methods
take the *problem* it estimates for, a small value :class:`Problem` ``(lopt, family,
pool)``, and map ``(meta, state, key)`` to a per-task gradient estimate of the *episode*
meta-loss :math:`J(\phi) = \mathbb{E}_\tau \sum_{t<T} m_t(\phi)` (see
:mod:`learned_dco.meta.losses`) and a new state: ``first_state(problem, meta, key)``
gives the first state; one estimate is two pure halves, ``starts(problem, meta, state,
key)`` (this meta-step's per-task starting states) and ``per_task(problem, meta, starts,
key)``, so that the trainer can place the per-task states on devices in between.
``estimator.bind(lopt, family, pool)`` pairs an estimator with its problem
(:class:`BoundEstimator`: ``init(meta, key)``, ``start``, ``estimate``, and the call
``bound(meta, state, key)``). Every leaf of a state and of the starts carries the task
axis first. Tasks form a leading batch axis
and are handled with ``jax.vmap``; :class:`learned_dco.meta.trainer.MetaTrainer` averages
the per-task estimates (dropping non-finite ones) and shards the task axis over devices.

* :class:`FullUnroll` -- backpropagation through all ``T`` steps of fresh tasks
  (optionally with ``jax.checkpoint``): the exact gradient of the sampled objective.
* :class:`TruncatedBPTT` -- ``K`` of ``T`` steps per meta-step; inner states persist across
  truncations, episodes reset per task, and tasks start at random offsets so their phases
  are staggered (by default at multiples of ``K`` when ``K`` divides ``T``, so episodes end
  only at truncation ends and reset once per truncation; ``stagger="step"`` spreads them
  over every step and resets inside the scan). Cheap and low-variance but *biased*: it
  ignores how ``phi`` shaped the state a truncation starts from.
* :class:`ES` -- antithetic evolution strategies
  :math:`\hat g = \epsilon\,(L^+ - L^-)/(2\sigma^2)`, :math:`L^\pm` from ``phi ± eps``. The
  perturbation is held for a whole episode (two persistent trajectories per task) and
  resampled at the episode's reset, so the sum of a task's truncation estimates over an
  episode is the full-horizon antithetic ES estimate: unbiased for the gradient of the
  Gaussian-smoothed objective :math:`\mathbb{E}_\epsilon J(\phi+\epsilon)`.
* :class:`PES` -- persistent evolution strategies (Vicol, Metz & Sohl-Dickstein, 2021): a
  fresh antithetic perturbation :math:`\epsilon_k` every truncation and the per-task
  running sum :math:`\xi = \sum_{j \le k} \epsilon_j` since the episode began,
  :math:`\hat g = \xi\,(L^+_k - L^-_k)/(2\sigma^2)`. Unbiased for the gradient of the
  objective smoothed with an independent perturbation per truncation. At an episode
  boundary inside a truncation the steps up to and including the boundary are credited to
  the old episode (:math:`\xi + \epsilon`) and the steps after it to the new one
  (:math:`\epsilon` only), after which :math:`\xi \leftarrow \epsilon`.

Scaling: truncated estimators multiply by :math:`T/K`, so that with uniformly staggered
phases (uniform over the steps, or over the multiples of :math:`K` when :math:`K` divides
:math:`T`: the truncations then tile each episode) the *expected* estimate is the gradient
of the whole-episode objective, whatever the truncation length.

``stagger`` (persistent estimators): ``True`` / ``"truncation"`` (default), ``"step"`` or
``False`` / ``"none"`` (:func:`~learned_dco.meta.starts.initial_states`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from learned_dco import validation
from learned_dco.meta.inner import InnerState
from learned_dco.meta.losses import MetaLoss, as_meta_loss
from learned_dco.meta.starts import check_pool_size, episode_starts, initial_states, stagger_mode
from learned_dco.meta.unroll import Unroll, ends_aligned
from learned_dco.types import Array, MetaParams, PRNGKey, Task

tree_map = jax.tree.map


class TaskEstimate(NamedTuple):
    """One task's contribution (the trainer averages these over tasks)."""

    grad: MetaParams  # per-task gradient estimate
    meta_loss: Array  # per-task meta-loss estimate (scaled like the gradient)
    train_loss: Array  # mean inner training loss over the unroll


class Problem(NamedTuple):
    """What an estimator estimates for: a learned optimizer on a task family, with an
    optional fixed pool of tasks (leading axis)."""

    lopt: Any
    family: Any
    pool: Task | None = None


def _check_common(est) -> None:
    name = type(est).__name__
    for field in ("horizon", "num_tasks"):
        validation.positive_int(name, field, getattr(est, field))
    if hasattr(est, "meta_loss"):
        object.__setattr__(est, "meta_loss", as_meta_loss(est.meta_loss))


def _check_truncation(est) -> None:
    name = type(est).__name__
    validation.positive_int(name, "truncation", est.truncation)
    if est.truncation > est.horizon:
        raise validation.ValidationError(
            f"{name}.truncation ({est.truncation}) must be <= horizon ({est.horizon})", field="truncation")


def _by_alignment(est, states: InnerState, batch):
    """``batch(inside)`` for a persistent estimator's truncation: ``batch(False)`` (no
    per-step reset inside the scan) when no task's episode ends before the truncation's last
    step, else ``batch(True)``, chosen by one ``lax.cond`` on the whole batch. With the
    default ``stagger`` and ``truncation`` dividing ``horizon`` every boundary falls at the
    end of a truncation, so the cheap branch is the one taken; a state from elsewhere
    (another stagger, a restored run) is still handled exactly by the other branch."""
    if est.horizon % est.truncation or stagger_mode(type(est).__name__, est.stagger) == "step":
        return batch(True)
    return jax.lax.cond(ends_aligned(states, est.horizon, est.truncation),
                        lambda: batch(False), lambda: batch(True))


def _perturbation(meta: MetaParams, key: PRNGKey, sigma: float) -> MetaParams:
    leaves, treedef = jax.tree.flatten(meta)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [sigma * jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
    )


def _add(a, b):
    return tree_map(jnp.add, a, b)


def _sub(a, b):
    return tree_map(jnp.subtract, a, b)


# ------------------------------------------------------------------------------------------
# the estimator protocol and its pairing with a problem


class Estimator:
    """What every estimator has: the per-problem halves of an estimate (overridden by each
    estimator), binding, and the convenience calls ``est.init(lopt, family, meta, key,
    pool)`` and ``est.estimate(lopt, family, meta, state, key, pool)`` (bind and call once).

    ``whole_episodes``: the estimator unrolls whole episodes of fresh tasks every
    meta-step, so it can run at any horizon from one meta-step to the next
    (:meth:`with_horizon`; a task mixture needs this)."""

    whole_episodes: ClassVar[bool] = False

    def first_state(self, problem: Problem, meta: MetaParams, key: PRNGKey) -> Any:
        """The estimator's first per-task state (``()`` when nothing persists)."""
        return ()

    def starts(self, problem: Problem, meta: MetaParams, state: Any, key: PRNGKey) -> Any:
        """This meta-step's per-task starting states (a leading task axis)."""
        return state

    def per_task(self, problem: Problem, meta: MetaParams, starts: Any, key: PRNGKey) -> tuple[TaskEstimate, Any]:
        """Per-task estimates from this meta-step's starts, and the next state."""
        raise NotImplementedError

    def bind(self, lopt, family, pool=None) -> BoundEstimator:
        return BoundEstimator(self, Problem(lopt, family, pool))

    def with_horizon(self, horizon: int) -> Estimator:
        """The estimator unrolling whole episodes of ``horizon`` steps."""
        raise validation.ValidationError(
            f"{type(self).__name__} carries inner states across meta-steps, so it cannot change its horizon "
            "from one meta-step to the next; use a whole-episode estimator (FullUnroll or ES)"
        )

    def check_pool(self, pool_size: int, pool_name: str = "the task pool size") -> None:
        """Raise a ``ValidationError`` if a pool of ``pool_size`` tasks cannot serve this
        estimator (only whole episodes drawn without replacement can run short)."""

    def unroll(self, problem: Problem, **options) -> Unroll:
        return Unroll(problem.lopt, problem.family, self.horizon, self.meta_loss, problem.pool, **options)

    def init(self, lopt, family, meta, key, pool=None):
        return self.first_state(Problem(lopt, family, pool), meta, key)

    def estimate(self, lopt, family, meta, state, key, pool=None):
        return self.bind(lopt, family, pool)(meta, state, key)


@dataclasses.dataclass(frozen=True, eq=False)
class BoundEstimator:
    """An estimator paired with the problem it estimates for; calls carry only
    ``(meta, state, key)``."""

    estimator: Any
    problem: Problem

    @property
    def lopt(self):
        return self.problem.lopt

    @property
    def family(self):
        return self.problem.family

    @property
    def pool(self):
        return self.problem.pool

    @property
    def num_tasks(self) -> int:
        return self.estimator.num_tasks

    def unroll(self, **options) -> Unroll:
        return self.estimator.unroll(self.problem, **options)

    def init(self, meta: MetaParams, key: PRNGKey) -> Any:
        """The estimator's first per-task state (``()`` when nothing persists)."""
        return self.estimator.first_state(self.problem, meta, key)

    def start(self, meta: MetaParams, state: Any, key: PRNGKey) -> Any:
        """This meta-step's per-task starting states (a leading task axis)."""
        return self.estimator.starts(self.problem, meta, state, key)

    def estimate(self, meta: MetaParams, starts: Any, key: PRNGKey = None) -> tuple[TaskEstimate, Any]:
        return self.estimator.per_task(self.problem, meta, starts, key)

    def __call__(self, meta: MetaParams, state: Any, key: PRNGKey) -> tuple[TaskEstimate, Any]:
        """Per-task estimates and the next state."""
        return self.estimate(meta, self.start(meta, state, key), key)


class Episodic(Estimator):
    """Whole episodes of fresh tasks each meta-step (or tasks of the pool): the truncation
    is the horizon and nothing persists between meta-steps (the state is ``()``).
    Subclasses have ``horizon``, ``num_tasks`` and ``init_seed`` fields."""

    whole_episodes: ClassVar[bool] = True

    @property
    def truncation(self) -> int:
        return self.horizon

    def starts(self, problem, meta, state, key) -> InnerState:
        del state
        return episode_starts(problem.lopt, problem.family, meta, key, self.num_tasks, pool=problem.pool,
                              init_seed=self.init_seed, owner=type(self).__name__)

    def with_horizon(self, horizon: int) -> Episodic:
        return dataclasses.replace(self, horizon=horizon)

    def check_pool(self, pool_size: int, pool_name: str = "the task pool size") -> None:
        check_pool_size(self.num_tasks, pool_size, what="a full unroll", pool_name=pool_name)

    def tasks(self, lopt, family, meta, key, pool=None) -> InnerState:
        """The starting states of one meta-step's tasks."""
        return self.starts(Problem(lopt, family, pool), meta, (), key)


# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FullUnroll(Episodic):
    """Backpropagate through ``horizon`` steps of ``num_tasks`` fresh tasks per meta-step.

    With a task ``pool`` of size ``N``: ``num_tasks == N`` uses every pool task each
    meta-step (the DCO paper's full-batch meta-epoch), otherwise a random subset. The
    initial parameters of pool task ``i`` are fixed (drawn from ``init_seed`` and ``i``), as
    in DCO Theorem 1; without a pool both tasks and initial parameters are fresh.

    ``remat=True`` wraps each inner step in ``jax.checkpoint``: memory O(T) small carries
    instead of all intermediates, for one extra forward pass.
    """

    horizon: int = 1
    num_tasks: int = 8
    meta_loss: str | MetaLoss = "final_val"
    remat: bool = False
    init_seed: int = 0

    def __post_init__(self):
        _check_common(self)

    def per_task(self, problem, meta, starts: InnerState, key=None):
        """Per-task gradients from given starting states (a leading task axis)."""
        run = self.unroll(problem, reset=False, remat=self.remat, terminal_inside=False)

        def loss_one(meta, s):
            s_end, out = run(meta, s, self.horizon)
            total = out.loss_before + out.loss_after
            if self.meta_loss.terminal:
                total = total + run.terminal(s_end)
            return total, out.train_loss

        def one(s):
            (value, train), grad = jax.value_and_grad(loss_one, has_aux=True)(meta, s)
            return TaskEstimate(grad, value, train)

        return jax.vmap(one)(starts), ()

    def estimate_from(self, lopt, family, meta, states: InnerState, pool=None) -> TaskEstimate:
        """Per-task gradients from given starting states (a leading task axis)."""
        return self.per_task(Problem(lopt, family, pool), meta, states)[0]


@dataclasses.dataclass(frozen=True)
class TruncatedBPTT(Estimator):
    """Backpropagate through ``truncation`` steps of persistent, staggered tasks."""

    horizon: int = 100
    truncation: int = 10
    num_tasks: int = 8
    meta_loss: str | MetaLoss = "mean_train"
    stagger: bool | str = True
    remat: bool = False

    def __post_init__(self):
        _check_common(self)
        _check_truncation(self)
        stagger_mode(type(self).__name__, self.stagger)

    def first_state(self, problem, meta, key) -> InnerState:
        return initial_states(problem.lopt, problem.family, meta, key, self.num_tasks, pool=problem.pool,
                              horizon=self.horizon, stagger=self.stagger, truncation=self.truncation)

    def per_task(self, problem, meta, starts: InnerState, key=None):
        run = self.unroll(problem, remat=self.remat)
        scale = self.horizon / self.truncation

        def batch(inside):
            def loss_one(meta, s):
                s_next, out = run(meta, jax.lax.stop_gradient(s), self.truncation, boundary_inside=inside)
                return scale * (out.loss_before + out.loss_after), (s_next, out.train_loss)

            def one(s):
                (value, (s_next, train)), grad = jax.value_and_grad(loss_one, has_aux=True)(meta, s)
                return TaskEstimate(grad, value, train), s_next

            return jax.vmap(one)(starts)

        return _by_alignment(self, starts, batch)


class ESState(NamedTuple):
    """Antithetic pair of inner states plus the perturbation bookkeeping, per task."""

    plus: InnerState
    minus: InnerState
    noise: MetaParams  # ES: the episode's perturbation; PES: running sum xi since the episode began


@dataclasses.dataclass(frozen=True)
class ES(Estimator):
    """Antithetic evolution strategies over persistent, staggered tasks (module docstring).

    ``per_truncation`` (set by the class, not a config field) says how the perturbation is
    drawn: ``False`` (ES) holds one perturbation for each whole episode (unbiased for the
    Gaussian-smoothed episode objective); ``True`` (:class:`PES`) draws a fresh one every
    truncation and credits the running sum :math:`\\xi` since the episode began."""

    horizon: int = 100
    truncation: int = 10
    num_tasks: int = 8
    sigma: float = 0.01
    meta_loss: str | MetaLoss = "mean_train"
    stagger: bool | str = True
    per_truncation: bool = dataclasses.field(default=False, init=False, repr=False)

    whole_episodes: ClassVar[bool] = True

    def __post_init__(self):
        _check_common(self)
        _check_truncation(self)
        stagger_mode(type(self).__name__, self.stagger)
        validation.check_positive(self, "sigma")

    def with_horizon(self, horizon: int) -> ES:
        """Whole episodes of ``horizon`` steps: one truncation per episode, all tasks in phase."""
        return dataclasses.replace(self, horizon=horizon, truncation=horizon, stagger=False)

    def first_state(self, problem, meta, key) -> ESState:
        lopt = problem.lopt
        k_states, k_noise = jax.random.split(key)
        states = initial_states(lopt, problem.family, meta, k_states, self.num_tasks, pool=problem.pool,
                                horizon=self.horizon, stagger=self.stagger, truncation=self.truncation)
        noise_keys = jax.random.split(k_noise, self.num_tasks)
        if self.per_truncation:
            noise = jax.vmap(lambda k: tree_map(jnp.zeros_like, meta))(noise_keys)
            return ESState(states, states, noise)
        noise = jax.vmap(lambda k: _perturbation(meta, k, self.sigma))(noise_keys)

        def restart(sign):  # the episode's optimizer states under meta +- eps
            return jax.vmap(lambda s, e: s._replace(opt_state=lopt.opt_fn(
                tree_map(lambda m, x: m + sign * x, meta, e)).init(s.params)))(states, noise)

        return ESState(restart(1), restart(-1), noise)

    def per_task(self, problem, meta, state: ESState, key):
        run = self.unroll(problem)
        scale = self.horizon / self.truncation
        sigma2 = self.sigma**2
        per_truncation = self.per_truncation

        def one(plus, minus, noise, k, inside):
            eps = _perturbation(meta, k, self.sigma)
            if per_truncation:
                before, after = _add(noise, eps), eps  # accumulated xi + eps, new episode: eps
                held = eps  # PES perturbs each truncation by eps alone
            else:
                before, after = noise, eps  # this episode's eps; a new episode draws eps
                held = noise
            (plus_next, out_p), (minus_next, out_m) = run.antithetic(
                _add(meta, held), _sub(meta, held), plus, minus, self.truncation, _add(meta, eps), _sub(meta, eps),
                boundary_inside=inside)
            d_before = out_p.loss_before - out_m.loss_before
            d_after = out_p.loss_after - out_m.loss_after
            grad = tree_map(lambda b, a: scale * (b * d_before + a * d_after) / (2 * sigma2), before, after)
            kept = before if per_truncation else noise
            noise_next = tree_map(lambda n, e: jnp.where(out_p.reset, e, n), kept, eps)
            value = scale * 0.5 * (out_p.loss_before + out_p.loss_after + out_m.loss_before + out_m.loss_after)
            train = 0.5 * (out_p.train_loss + out_m.train_loss)
            return TaskEstimate(grad, value, train), ESState(plus_next, minus_next, noise_next)

        keys = jax.random.split(key, self.num_tasks)

        def batch(inside):
            return jax.vmap(lambda p, m, n, k: one(p, m, n, k, inside))(state.plus, state.minus, state.noise, keys)

        return _by_alignment(self, state.plus, batch)


@dataclasses.dataclass(frozen=True)
class PES(ES):
    """Persistent evolution strategies (antithetic, unbiased; module docstring): :class:`ES`
    with a fresh perturbation every truncation."""

    per_truncation: bool = dataclasses.field(default=True, init=False, repr=False)

    whole_episodes: ClassVar[bool] = False

    def with_horizon(self, horizon: int) -> PES:
        return Estimator.with_horizon(self, horizon)


ESTIMATORS = {"full": FullUnroll, "truncated": TruncatedBPTT, "es": ES, "pes": PES}
"""Estimator classes by config name."""


def make_estimator(name: str, **options: Any):
    """``ESTIMATORS[name](**options)``, with a ``ValidationError`` listing the names if unknown."""
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise validation.ValidationError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}") from None
    return cls(**options)


_DEPRECATED = {"Bound": ("BoundEstimator", BoundEstimator), "Stateless": ("Episodic", Episodic)}


def __getattr__(name: str):
    if name in _DEPRECATED:
        new, value = _DEPRECATED[name]
        warnings.warn(f"learned_dco.meta.estimators.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
