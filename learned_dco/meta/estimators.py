r"""Meta-gradient estimators: pure functions behind small frozen dataclasses.

Every estimator maps ``(meta, state, key)`` to a per-task gradient estimate of the
*episode* meta-loss :math:`J(\phi) = \mathbb{E}_\tau \sum_{t<T} m_t(\phi)` (see
:mod:`learned_dco.meta.unroll`), a new state and metrics. Tasks form a leading batch axis
and are handled with ``jax.vmap``; :class:`learned_dco.meta.trainer.MetaTrainer` averages
the per-task estimates (dropping non-finite ones) and shards the task axis over devices.

* :class:`FullUnroll` -- backpropagation through all ``T`` steps of fresh tasks
  (optionally with ``jax.checkpoint``): the exact gradient of the sampled objective.
* :class:`TruncatedBPTT` -- ``K`` of ``T`` steps per meta-step; inner states persist across
  truncations, episodes reset per task inside ``lax.cond``, and tasks start at random
  offsets so their phases are staggered. Cheap and low-variance but *biased*: it ignores
  how ``phi`` shaped the state a truncation starts from.
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
phases the *expected* estimate is the gradient of the whole-episode objective, whatever the
truncation length.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from learned_dco.meta.unroll import (
    TERMINAL_LOSSES,
    InnerState,
    check_meta_loss,
    fresh_state,
    sample_task,
    terminal_loss,
    unroll,
)
from learned_dco.types import Array, MetaParams, PRNGKey, Task

tree_map = jax.tree.map


class TaskEstimate(NamedTuple):
    """One task's contribution (the trainer averages these over tasks)."""

    grad: MetaParams  # per-task gradient estimate
    meta_loss: Array  # per-task meta-loss estimate (scaled like the gradient)
    train_loss: Array  # mean inner training loss over the unroll


def _identity(x):
    return x


def _check_common(est) -> None:
    name = type(est).__name__
    for field in ("horizon", "num_tasks"):
        value = getattr(est, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field} must be a positive integer, got {value!r}")
    check_meta_loss(est.meta_loss)


def _check_truncation(est) -> None:
    name = type(est).__name__
    k = est.truncation
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}.truncation must be a positive integer, got {k!r}")
    if k > est.horizon:
        raise ValueError(f"{name}.truncation ({k}) must be <= horizon ({est.horizon})")


def _initial_states(lopt, family, meta, key, pool, num_tasks, horizon, stagger) -> InnerState:
    """A batch of fresh inner states; with ``stagger`` the episode counters start at
    uniformly random offsets in ``[0, horizon)`` so episode ends are spread out."""

    def one(k):
        k_task, k_state, k_offset = jax.random.split(k, 3)
        task = sample_task(family, pool, k_task)
        offset = jax.random.randint(k_offset, (), 0, horizon) if stagger else 0
        return fresh_state(lopt, family, meta, task, k_state, offset)

    return jax.vmap(one)(jax.random.split(key, num_tasks))


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


def _scale(tree, s):
    return tree_map(lambda x: x * s, tree)


# ------------------------------------------------------------------------------------------


class Stateless:
    """For estimators that unroll a whole episode per meta-step: the truncation is the
    horizon and nothing persists between meta-steps (the state is ``()``)."""

    @property
    def truncation(self) -> int:
        return self.horizon

    def init(self, lopt, family, meta, key, pool=None) -> tuple:
        del lopt, family, meta, key, pool
        return ()


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
    meta_loss: str = "final_val"
    remat: bool = False
    init_seed: int = 0

    def __post_init__(self):
        _check_common(self)


    def tasks(self, lopt, family, meta, key, pool=None) -> InnerState:
        """The starting states of one meta-step's tasks."""
        if pool is None:
            return _initial_states(lopt, family, meta, key, None, self.num_tasks, self.horizon, False)
        n = jax.tree.leaves(pool)[0].shape[0]
        if self.num_tasks > n:
            raise ValueError(f"FullUnroll.num_tasks ({self.num_tasks}) exceeds the task pool size ({n})")
        index = jnp.arange(n) if self.num_tasks == n else jax.random.permutation(key, n)[: self.num_tasks]
        tasks = tree_map(lambda x: x[index], pool)
        base = jax.random.PRNGKey(self.init_seed)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
        return jax.vmap(lambda t, k: fresh_state(lopt, family, meta, t, k))(tasks, keys)

    def estimate(self, lopt, family, meta, state, key, pool=None, constrain=_identity):
        """Per-task gradients on fresh tasks; returns ``(TaskEstimate batch, ())``."""
        del state
        states = constrain(self.tasks(lopt, family, meta, key, pool))
        return self.estimate_from(lopt, family, meta, states, pool), ()

    def estimate_from(self, lopt, family, meta, states: InnerState, pool=None) -> TaskEstimate:
        """Per-task gradients from given starting states (a leading task axis)."""

        def loss_one(meta, s):
            terminal = self.meta_loss in TERMINAL_LOSSES
            s_end, out = unroll(
                lopt, family, meta, s, self.horizon, horizon=self.horizon, meta_loss=self.meta_loss,
                pool=pool, reset=False, remat=self.remat, terminal_inside=False,
            )
            total = out.loss_before + out.loss_after
            if terminal:
                total = total + terminal_loss(family, self.meta_loss, s_end.params, s_end.task, self.horizon)
            return total, out.train_loss

        def one(s):
            (value, train), grad = jax.value_and_grad(loss_one, has_aux=True)(meta, s)
            return TaskEstimate(grad, value, train)

        return jax.vmap(one)(states)


@dataclasses.dataclass(frozen=True)
class TruncatedBPTT:
    """Backpropagate through ``truncation`` steps of persistent, staggered tasks."""

    horizon: int = 100
    truncation: int = 10
    num_tasks: int = 8
    meta_loss: str = "mean_train"
    stagger: bool = True
    remat: bool = False

    def __post_init__(self):
        _check_common(self)
        _check_truncation(self)

    def init(self, lopt, family, meta, key, pool=None) -> InnerState:
        return _initial_states(lopt, family, meta, key, pool, self.num_tasks, self.horizon, self.stagger)

    def estimate(self, lopt, family, meta, states: InnerState, key, pool=None, constrain=_identity):
        del key
        states = constrain(states)
        scale = self.horizon / self.truncation

        def loss_one(meta, s):
            s = jax.lax.stop_gradient(s)
            s_next, out = unroll(
                lopt, family, meta, s, self.truncation, horizon=self.horizon, meta_loss=self.meta_loss,
                pool=pool, reset=True, remat=self.remat,
            )
            return scale * (out.loss_before + out.loss_after), (s_next, out.train_loss)

        def one(s):
            (value, (s_next, train)), grad = jax.value_and_grad(loss_one, has_aux=True)(meta, s)
            return TaskEstimate(grad, value, train), s_next

        return jax.vmap(one)(states)


class ESState(NamedTuple):
    """Antithetic pair of inner states plus the perturbation bookkeeping, per task."""

    plus: InnerState
    minus: InnerState
    noise: MetaParams  # ES: the episode's perturbation; PES: running sum xi since the episode began


def _antithetic_init(est, lopt, family, meta, key, pool) -> ESState:
    k_states, k_noise = jax.random.split(key)
    states = _initial_states(lopt, family, meta, k_states, pool, est.num_tasks, est.horizon, est.stagger)
    if isinstance(est, ES):
        noise = jax.vmap(lambda k: _perturbation(meta, k, est.sigma))(jax.random.split(k_noise, est.num_tasks))
        plus = _restart_opt_states(lopt, states, noise, meta, +1)
        minus = _restart_opt_states(lopt, states, noise, meta, -1)
    else:
        noise = jax.vmap(lambda k: tree_map(jnp.zeros_like, meta))(jax.random.split(k_noise, est.num_tasks))
        plus = minus = states
    return ESState(plus, minus, noise)


def _restart_opt_states(lopt, states: InnerState, noise, meta, sign) -> InnerState:
    """Re-initialise optimizer states with the perturbed meta-parameters (ES episodes)."""

    def one(s, eps):
        m = _add(meta, _scale(eps, sign))
        return s._replace(opt_state=lopt.opt_fn(m).init(s.params))

    return jax.vmap(one)(states, noise)


def _antithetic_estimate(est, lopt, family, meta, state: ESState, key, pool):
    """Shared ES / PES truncation (see the module docstring for the credit assignment)."""
    scale = est.horizon / est.truncation
    sigma2 = est.sigma**2
    pes = isinstance(est, PES)
    keys = jax.random.split(key, est.num_tasks)

    def one(plus, minus, noise, k):
        eps = _perturbation(meta, k, est.sigma)
        if pes:
            before, after = _add(noise, eps), eps  # accumulated xi + eps, new episode: eps
            meta_before_p, meta_before_m = _add(meta, eps), _sub(meta, eps)
            meta_after_p, meta_after_m = meta_before_p, meta_before_m
        else:
            before, after = noise, eps  # this episode's eps; a new episode draws eps
            meta_before_p, meta_before_m = _add(meta, noise), _sub(meta, noise)
            meta_after_p, meta_after_m = _add(meta, eps), _sub(meta, eps)
        run = lambda m0, m1, s: unroll(
            lopt, family, m0, s, est.truncation, horizon=est.horizon, meta_loss=est.meta_loss,
            pool=pool, reset=True, meta_after=m1,
        )
        plus_next, out_p = run(meta_before_p, meta_after_p, plus)
        minus_next, out_m = run(meta_before_m, meta_after_m, minus)
        d_before = out_p.loss_before - out_m.loss_before
        d_after = out_p.loss_after - out_m.loss_after
        grad = tree_map(lambda b, a: scale * (b * d_before + a * d_after) / (2 * sigma2), before, after)
        if pes:
            noise_next = tree_map(lambda b, e: jnp.where(out_p.reset, e, b), before, eps)
        else:
            noise_next = tree_map(lambda n, e: jnp.where(out_p.reset, e, n), noise, eps)
        value = scale * 0.5 * (out_p.loss_before + out_p.loss_after + out_m.loss_before + out_m.loss_after)
        train = 0.5 * (out_p.train_loss + out_m.train_loss)
        return TaskEstimate(grad, value, train), ESState(plus_next, minus_next, noise_next)

    return jax.vmap(one)(state.plus, state.minus, state.noise, keys)


@dataclasses.dataclass(frozen=True)
class _Antithetic:
    """Fields, checks and methods shared by :class:`ES` and :class:`PES`; the two differ
    in how ``_antithetic_init`` / ``_antithetic_estimate`` treat the perturbation."""

    horizon: int = 100
    truncation: int = 10
    num_tasks: int = 8
    sigma: float = 0.01
    meta_loss: str = "mean_train"
    stagger: bool = True

    def __post_init__(self):
        _check_common(self)
        _check_truncation(self)
        if not (isinstance(self.sigma, (int, float)) and self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"{type(self).__name__}.sigma must be a positive number, got {self.sigma!r}")

    def init(self, lopt, family, meta, key, pool=None) -> ESState:
        return _antithetic_init(self, lopt, family, meta, key, pool)

    def estimate(self, lopt, family, meta, state: ESState, key, pool=None, constrain=_identity):
        return _antithetic_estimate(self, lopt, family, meta, constrain(state), key, pool)


@dataclasses.dataclass(frozen=True)
class ES(_Antithetic):
    """Antithetic ES with a perturbation held for each whole episode (unbiased)."""


@dataclasses.dataclass(frozen=True)
class PES(_Antithetic):
    """Persistent evolution strategies (antithetic, unbiased; module docstring)."""


ESTIMATORS = {"full": FullUnroll, "truncated": TruncatedBPTT, "es": ES, "pes": PES}

