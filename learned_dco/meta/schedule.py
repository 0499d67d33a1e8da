r"""What each meta-step trains on: one problem, or a task mixture's drawn member.

A :class:`Schedule` holds the learned optimizer, the task family (or a
:class:`~learned_dco.tasks.Mixture` of families) and the estimator, and yields for each
meta-step a :class:`Stage`: the member index, the inner horizon, and the problem bound at
that horizon -- the member's family, the estimator at that horizon
(``estimator.with_horizon(T)``) and the learned optimizer at that horizon
(``lopt.with_horizon(T)`` for a horizon-aware optimizer, e.g.
:class:`~learned_dco.optimizers.ScheduledAdam`; the others apply to any horizon).

* One family: every meta-step has the same stage, the estimator as given, and its
  per-task state persists from one meta-step to the next.
* A mixture: meta-step ``k`` draws ``(member, T)`` on the host from
  ``fold_in(fold_in(key, k), 0x6D6978)`` (:meth:`Mixture.draw`), a function of the base key
  and the step only, so a resumed run draws the same. Members have different parameter
  shapes, so nothing per task persists (``Stage.fresh``): each meta-step runs whole
  episodes of fresh tasks of length ``T``; the estimator must unroll whole episodes
  (``estimator.whole_episodes``: ``FullUnroll``, ``ES``) and the meta-parameters must not
  depend on the model's shapes (checked on every member when the schedule is built).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from learned_dco.meta.estimators import BoundEstimator
from learned_dco.tasks.mixture import Mixture
from learned_dco.types import PRNGKey, Task
from learned_dco.validation import ValidationError

__all__ = ["Schedule", "Stage", "at_horizon"]

DRAW_STREAM = 0x6D6978  # folded into a meta-step's key for a mixture's draw


def at_horizon(lopt, horizon: int):
    """``lopt`` told the episode horizon: ``lopt.with_horizon(horizon)`` for a
    horizon-aware learned optimizer, ``lopt`` itself for one that has no horizon."""
    with_horizon = getattr(lopt, "with_horizon", None)
    return lopt if with_horizon is None else with_horizon(horizon)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One meta-step's problem.

    Attributes:
      index: the member (0 for a single family).
      horizon: the drawn inner horizon (``None``: the estimator's own).
      family, estimator, lopt: the problem at that horizon.
      fresh: the estimator's state starts afresh every meta-step (a mixture), instead of
        persisting in the training state.
    """

    index: int
    horizon: int | None
    family: Any
    estimator: Any
    lopt: Any
    fresh: bool = False

    def bind(self, pool: Task | None) -> BoundEstimator:
        return self.estimator.bind(self.lopt, self.family, pool)

    @property
    def labels(self) -> dict[str, int]:
        """What a metrics record says of the stage: the member and horizon of a mixture."""
        return {"member": self.index, "horizon": self.horizon} if self.fresh else {}


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """The stages of a meta-training run (module docstring)."""

    lopt: Any
    family: Any
    estimator: Any

    def __post_init__(self):
        object.__setattr__(self, "_stages", {})
        first = Stage(0, None, self.families[0], self.estimator, self.lopt, fresh=self.mixture is not None)
        object.__setattr__(self, "_initial", first)
        if self.mixture is not None:
            self._check_mixture()

    @property
    def mixture(self) -> Mixture | None:
        return self.family if isinstance(self.family, Mixture) else None

    @property
    def families(self) -> tuple:
        """The task families trained on: a mixture's members, else ``(family,)``."""
        return tuple(self.mixture.members) if self.mixture is not None else (self.family,)

    @property
    def initial(self) -> Stage:
        """The stage a training state is initialised for: the first member, the estimator
        as given."""
        return self._initial

    def draw(self, key: PRNGKey, step) -> tuple[int, int | None]:
        """``(member index, horizon)`` of meta-step ``step`` from the run's base ``key``;
        ``(0, None)`` for one family."""
        if self.mixture is None:
            return 0, None
        return self.mixture.draw(jax.random.fold_in(jax.random.fold_in(key, step), DRAW_STREAM))

    def stage(self, index: int, horizon: int | None) -> Stage:
        """The stage of member ``index`` at ``horizon`` (built once per pair)."""
        if (index, horizon) not in self._stages:
            self._stages[(index, horizon)] = self._make_stage(index, horizon)
        return self._stages[(index, horizon)]

    def _make_stage(self, index: int, horizon: int | None) -> Stage:
        if self.mixture is None:
            if (index, horizon) != (0, None):
                raise ValidationError(f"Schedule: one task family has the stage (0, None) only, got {(index, horizon)}")
            return self.initial
        if not 0 <= index < len(self.mixture.members):
            raise ValidationError(f"member index must be in [0, {len(self.mixture.members)}), got {index}")
        if horizon not in self.mixture.horizons:
            raise ValidationError(f"horizon {horizon} is not one of the mixture's {self.mixture.horizons}")
        return Stage(index, horizon, self.mixture.members[index], self.estimator.with_horizon(horizon),
                     at_horizon(self.lopt, horizon), fresh=True)

    def at(self, key: PRNGKey, step) -> Stage:
        """The stage of meta-step ``step``."""
        return self.stage(*self.draw(key, step))

    def check_pool(self, pool: Task | None) -> None:
        if self.mixture is not None and pool is not None:
            raise ValidationError("MetaTrainer: a task mixture samples fresh tasks; pool must be None")

    def _check_mixture(self) -> None:
        if not self.estimator.whole_episodes:
            raise ValidationError(
                f"MetaTrainer: a task mixture needs whole-episode estimates (FullUnroll or ES), got "
                f"{type(self.estimator).__name__}: members have different shapes, so no per-task state "
                "can persist between meta-steps"
            )
        key = jax.random.PRNGKey(0)

        def meta_shape(family):
            def init(k):
                k_task, k_init = jax.random.split(k)
                return self.lopt.init(k, family.init_params(k_init, family.sample(k_task)))

            return jax.tree.map(lambda x: x.shape, jax.eval_shape(init, key))

        shapes = [meta_shape(member) for member in self.mixture.members]
        for name, shape in zip(self.mixture.names[1:], shapes[1:]):
            if shape != shapes[0]:
                raise ValidationError(
                    f"MetaTrainer: {type(self.lopt).__name__}'s meta-parameters depend on the model's shapes "
                    f"(member {name} gives {shape}, member {self.mixture.names[0]} gives {shapes[0]}); "
                    "a task mixture needs an optimizer that applies to any parameter pytree"
                )
