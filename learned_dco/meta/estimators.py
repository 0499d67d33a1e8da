r"""Meta-gradient estimators: pure functions behind small frozen dataclasses.

An estimator is a frozen dataclass of options, validated when built. Bound once to what
it estimates, ``bound = estimator.bind(lopt, family, pool=None)``, it maps
``(meta, state, key)`` to a per-task gradient estimate of the *episode* meta-loss
:math:`J(\phi) = \mathbb{E}_\tau \sum_{t<T} m_t(\phi)` (see
:mod:`learned_dco.meta.losses`) and a new state: ``bound.init(meta, key)`` gives the first
state, ``bound(meta, state, key)`` one estimate. The call is two pure halves,
``bound.start(meta, state, key)`` (this meta-step's per-task starting states) and
``bound.estimate(meta, starts, key)``, so that the trainer can place the per-task states
on devices in between. Tasks form a leading batch axis
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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from learned_dco import validation
from learned_dco.meta.inner import InnerState
from learned_dco.meta.losses import MetaLoss, as_meta_loss
from learned_dco.meta.starts import episode_starts, initial_states, stagger_mode
from learned_dco.meta.unroll import Unroll, ends_aligned
from learned_dco.types import Array, MetaParams, PRNGKey, Task

tree_map = jax.tree.map


class TaskEstimate(NamedTuple):
    """One task's contribution (the trainer averages these over tasks)."""

    grad: MetaParams  # per-task gradient estimate
    meta_loss: Array  # per-task meta-loss estimate (scaled like the gradient)
    train_loss: Array  # mean inner training loss over the unroll


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
        raise validation.ValidationError(f"{name}.truncation ({est.truncation}) must be <= horizon ({est.horizon})")


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
# Bound estimators: what an estimator estimates, fixed once


@dataclasses.dataclass(frozen=True, eq=False)
class Bound:
    """An estimator bound to a learned optimizer, a task family and an optional task pool
    (leading axis). Calls carry only ``(meta, state, key)``."""

    estimator: Any
    lopt: Any
    family: Any
    pool: Task | None = None

    @property
    def num_tasks(self) -> int:
        return self.estimator.num_tasks

    def unroll(self, **options) -> Unroll:
        est = self.estimator
        return Unroll(self.lopt, self.family, est.horizon, est.meta_loss, self.pool, **options)

    def init(self, meta: MetaParams, key: PRNGKey) -> Any:
        """The estimator's first per-task state (``()`` when nothing persists)."""
        return ()

    def start(self, meta: MetaParams, state: Any, key: PRNGKey) -> Any:
        """This meta-step's per-task starting states (a leading task axis)."""
        return state

    def estimate(self, meta: MetaParams, starts: Any, key: PRNGKey) -> tuple[TaskEstimate, Any]:
        raise NotImplementedError

    def __call__(self, meta: MetaParams, state: Any, key: PRNGKey) -> tuple[TaskEstimate, Any]:
        """Per-task estimates and the next state."""
        return self.estimate(meta, self.start(meta, state, key), key)


class _Unbound:
    """Convenience calls without binding: ``est.init(lopt, family, meta, key, pool)`` and
    ``est.estimate(lopt, family, meta, state, key, pool)`` bind and call once."""

    def init(self, lopt, family, meta, key, pool=None):
        return self.bind(lopt, family, pool).init(meta, key)

    def estimate(self, lopt, family, meta, state, key, pool=None):
        return self.bind(lopt, family, pool)(meta, state, key)


class _Episodes(Bound):
    """Whole episodes of fresh tasks each meta-step (or tasks of the pool): nothing
    persists between meta-steps."""

    def start(self, meta, state, key) -> InnerState:
        del state
        est = self.estimator
        return episode_starts(self.lopt, self.family, meta, key, est.num_tasks, pool=self.pool,
                              init_seed=est.init_seed, owner=type(est).__name__)


class Stateless(_Unbound):
    """For estimators that unroll a whole episode per meta-step: the truncation is the
    horizon and nothing persists between meta-steps (the state is ``()``)."""

    @property
    def truncation(self) -> int:
        return self.horizon

    def tasks(self, lopt, family, meta, key, pool=None) -> InnerState:
        """The starting states of one meta-step's tasks."""
        return self.bind(lopt, family, pool).start(meta, (), key)


# ------------------------------------------------------------------------------------------


class _FullUnrollBound(_Episodes):
    def estimate(self, meta, starts: InnerState, key=None):
        """Per-task gradients from given starting states (a leading task axis)."""
        est = self.estimator
        run = self.unroll(reset=False, remat=est.remat, terminal_inside=False)

        def loss_one(meta, s):
            s_end, out = run(meta, s, est.horizon)
            total = out.loss_before + out.loss_after
            if est.meta_loss.terminal:
                total = total + run.terminal(s_end)
            return total, out.train_loss

        def one(s):
            (value, train), grad = jax.value_and_grad(loss_one, has_aux=True)(meta, s)
            return TaskEstimate(grad, value, train)

        return jax.vmap(one)(starts), ()


@dataclasses.dataclass(frozen=True)
class FullUnroll(Stateless):
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

    def bind(self, lopt, family, pool=None) -> Bound:
        return _FullUnrollBound(self, lopt, family, pool)

    def estimate_from(self, lopt, family, meta, states: InnerState, pool=None) -> TaskEstimate:
        """Per-task gradients from given starting states (a leading task axis)."""
        return self.bind(lopt, family, pool).estimate(meta, states)[0]


class _TruncatedBound(Bound):
    def init(self, meta, key) -> InnerState:
        est = self.estimator
        return initial_states(self.lopt, self.family, meta, key, est.num_tasks, pool=self.pool,
                              horizon=est.horizon, stagger=est.stagger, truncation=est.truncation)

    def estimate(self, meta, starts: InnerState, key=None):
        est = self.estimator
        run = self.unroll(remat=est.remat)
        scale = est.horizon / est.truncation

        def batch(inside):
            def loss_one(meta, s):
                s_next, out = run(meta, jax.lax.stop_gradient(s), est.truncation, boundary_inside=inside)
                return scale * (out.loss_before + out.loss_after), (s_next, out.train_loss)

            def one(s):
                (value, (s_next, train)), grad = jax.value_and_grad(loss_one, has_aux=True)(meta, s)
                return TaskEstimate(grad, value, train), s_next

            return jax.vmap(one)(starts)

        return _by_alignment(est, starts, batch)


@dataclasses.dataclass(frozen=True)
class TruncatedBPTT(_Unbound):
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

    def bind(self, lopt, family, pool=None) -> Bound:
        return _TruncatedBound(self, lopt, family, pool)


class ESState(NamedTuple):
    """Antithetic pair of inner states plus the perturbation bookkeeping, per task."""

    plus: InnerState
    minus: InnerState
    noise: MetaParams  # ES: the episode's perturbation; PES: running sum xi since the episode began


class _AntitheticBound(Bound):
    """Shared ES / PES truncation (module docstring for the credit assignment)."""

    def init(self, meta, key) -> ESState:
        est = self.estimator
        k_states, k_noise = jax.random.split(key)
        states = initial_states(self.lopt, self.family, meta, k_states, est.num_tasks, pool=self.pool,
                                horizon=est.horizon, stagger=est.stagger, truncation=est.truncation)
        noise_keys = jax.random.split(k_noise, est.num_tasks)
        if isinstance(est, PES):
            noise = jax.vmap(lambda k: tree_map(jnp.zeros_like, meta))(noise_keys)
            return ESState(states, states, noise)
        noise = jax.vmap(lambda k: _perturbation(meta, k, est.sigma))(noise_keys)

        def restart(sign):  # the episode's optimizer states under meta +- eps
            return jax.vmap(lambda s, e: s._replace(opt_state=self.lopt.opt_fn(
                tree_map(lambda m, x: m + sign * x, meta, e)).init(s.params)))(states, noise)

        return ESState(restart(1), restart(-1), noise)

    def estimate(self, meta, state: ESState, key):
        est = self.estimator
        run = self.unroll()
        scale = est.horizon / est.truncation
        sigma2 = est.sigma**2
        pes = isinstance(est, PES)

        def one(plus, minus, noise, k, inside):
            eps = _perturbation(meta, k, est.sigma)
            if pes:
                before, after = _add(noise, eps), eps  # accumulated xi + eps, new episode: eps
                held = eps  # PES perturbs each truncation by eps alone
            else:
                before, after = noise, eps  # this episode's eps; a new episode draws eps
                held = noise
            (plus_next, out_p), (minus_next, out_m) = run.antithetic(
                _add(meta, held), _sub(meta, held), plus, minus, est.truncation, _add(meta, eps), _sub(meta, eps),
                boundary_inside=inside)
            d_before = out_p.loss_before - out_m.loss_before
            d_after = out_p.loss_after - out_m.loss_after
            grad = tree_map(lambda b, a: scale * (b * d_before + a * d_after) / (2 * sigma2), before, after)
            kept = before if pes else noise
            noise_next = tree_map(lambda n, e: jnp.where(out_p.reset, e, n), kept, eps)
            value = scale * 0.5 * (out_p.loss_before + out_p.loss_after + out_m.loss_before + out_m.loss_after)
            train = 0.5 * (out_p.train_loss + out_m.train_loss)
            return TaskEstimate(grad, value, train), ESState(plus_next, minus_next, noise_next)

        keys = jax.random.split(key, est.num_tasks)

        def batch(inside):
            return jax.vmap(lambda p, m, n, k: one(p, m, n, k, inside))(state.plus, state.minus, state.noise, keys)

        return _by_alignment(est, state.plus, batch)


@dataclasses.dataclass(frozen=True)
class _Antithetic(_Unbound):
    """Fields, checks and binding shared by :class:`ES` and :class:`PES`; the two differ
    in how the bound estimator treats the perturbation."""

    horizon: int = 100
    truncation: int = 10
    num_tasks: int = 8
    sigma: float = 0.01
    meta_loss: str | MetaLoss = "mean_train"
    stagger: bool | str = True

    def __post_init__(self):
        _check_common(self)
        _check_truncation(self)
        stagger_mode(type(self).__name__, self.stagger)
        validation.check_positive(self, "sigma")

    def bind(self, lopt, family, pool=None) -> Bound:
        return _AntitheticBound(self, lopt, family, pool)


@dataclasses.dataclass(frozen=True)
class ES(_Antithetic):
    """Antithetic ES with a perturbation held for each whole episode (unbiased)."""


@dataclasses.dataclass(frozen=True)
class PES(_Antithetic):
    """Persistent evolution strategies (antithetic, unbiased; module docstring)."""


ESTIMATORS = {"full": FullUnroll, "truncated": TruncatedBPTT, "es": ES, "pes": PES}
"""Estimator classes by config name."""


def make_estimator(name: str, **options: Any):
    """``ESTIMATORS[name](**options)``, with a ``ValidationError`` listing the names if unknown."""
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise validation.ValidationError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}") from None
    return cls(**options)
