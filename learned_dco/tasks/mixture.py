r"""A mixture of task families with different parameter shapes.

Meta-training one optimizer on many kinds of problems needs tasks whose parameter pytrees
differ (an MLP of one width vs a ConvNet vs a quadratic). Such tasks cannot share one
``vmap``, so a meta-step works on one member at a time:

1. :meth:`Mixture.draw` picks a member :math:`i \sim \text{Categorical}(w)` and an inner
   horizon :math:`T` from ``horizons`` (so the optimizer does not overfit one horizon);
2. the caller vmaps tasks of ``mixture.members[i]`` and runs its meta-step for ``T``;
3. :class:`CompiledPerFamily` keeps one jitted program per ``(member, T)``, so after every
   pair has been seen once, further meta-steps compile nothing.

``horizons`` is a finite set on purpose: a horizon is a static loop length, and a finite
set bounds the number of compiled programs at ``len(members) * len(horizons)``.

Example::

    from learned_dco import tasks
    mix = tasks.Mixture((tasks.SoftmaxRegression(), *tasks.random_mlps(0, 3), tasks.Quadratic()),
                        horizons=(100, 300, 1000))
    step = tasks.CompiledPerFamily(mix, build=lambda family, horizon: make_meta_step(family, horizon))
    index, horizon = mix.draw(key)
    out = step(index, horizon)(meta, tasks_of_member, key)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from learned_dco.tasks.base import TaskFamily
from learned_dco.types import PRNGKey
from learned_dco.validation import ValidationError, positive_int


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Members (task families), their sampling weights and the inner horizons to draw from.

    Attributes:
      members: the task families (any shapes; each must be hashable).
      weights: unnormalised sampling weights, one per member (default: uniform).
      horizons: inner horizons (steps) drawn uniformly per meta-step.
    """

    members: tuple[Any, ...]
    weights: tuple[float, ...] | None = None
    horizons: tuple[int, ...] = (100,)

    def __post_init__(self):
        members = tuple(self.members)
        if not members:
            raise ValidationError("Mixture.members must hold at least one task family", field="members")
        for i, member in enumerate(members):
            if not isinstance(member, TaskFamily):
                raise ValidationError(f"Mixture.members[{i}] is not a task family: {member!r}", field="members")
            hash(member)  # families are static jit arguments
        object.__setattr__(self, "members", members)
        horizons = tuple(positive_int("Mixture", "horizons[]", h) for h in self.horizons)
        if not horizons:
            raise ValidationError("Mixture.horizons must hold at least one horizon", field="horizons")
        object.__setattr__(self, "horizons", horizons)
        if self.weights is not None:
            w = tuple(float(x) for x in self.weights)
            if len(w) != len(members) or not all(np.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
                raise ValidationError(
                    f"Mixture.weights must be {len(members)} finite numbers >= 0 with a positive sum, got {self.weights!r}",
                    field="weights",
                )
            object.__setattr__(self, "weights", w)

    @property
    def probabilities(self) -> np.ndarray:
        """Normalised member probabilities."""
        w = np.ones(len(self.members)) if self.weights is None else np.asarray(self.weights)
        return w / w.sum()

    def draw(self, key: PRNGKey) -> tuple[int, int]:
        """``(member index, horizon)`` for one meta-step (host values: they pick programs)."""
        km, kh = jax.random.split(key)
        index = int(jax.random.choice(km, len(self.members), p=self.probabilities))
        horizon = self.horizons[int(jax.random.randint(kh, (), 0, len(self.horizons)))]
        return index, horizon

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{i}:{m.name}" for i, m in enumerate(self.members))


class CompiledPerFamily:
    """One ``jax.jit`` program per ``(member, horizon)`` of a mixture, built on first use.

    ``build(family, horizon)`` returns the function to compile for that member (e.g. a
    meta-step that vmaps its tasks). Calls with the same pair reuse the same jitted
    function, whose own cache then hits for same-shaped arguments: a second pass over the
    mixture compiles nothing. ``built`` counts the functions built so far.
    """

    def __init__(self, mixture: Mixture, build: Callable[[Any, int], Callable], **jit_kwargs: Any):
        if not isinstance(mixture, Mixture):
            raise ValidationError(f"CompiledPerFamily needs a Mixture, got {type(mixture).__name__}")
        self.mixture = mixture
        self._build = build
        self._jit_kwargs = jit_kwargs
        self._cache: dict[tuple[int, int], Callable] = {}

    @property
    def built(self) -> int:
        return len(self._cache)

    def __call__(self, index: int, horizon: int) -> Callable:
        if not 0 <= index < len(self.mixture.members):
            raise ValidationError(f"member index must be in [0, {len(self.mixture.members)}), got {index}")
        if horizon not in self.mixture.horizons:
            raise ValidationError(f"horizon {horizon} is not one of the mixture's {self.mixture.horizons}")
        key = (index, horizon)
        if key not in self._cache:
            self._cache[key] = jax.jit(self._build(self.mixture.members[index], horizon), **self._jit_kwargs)
        return self._cache[key]


__all__ = ["CompiledPerFamily", "Mixture"]
