"""The learned-optimizer protocol.

A learned optimizer is a pair of pure functions, the same split as learned_optimization's
``LearnedOptimizer``:

* ``init(key, params) -> meta``: an *unconstrained* pytree of meta-parameters. Every real
  value of ``meta`` must give a well-posed optimizer (the builder maps it into the valid
  set: positive curvature, momentum in [0, 1], ...). ``params`` is passed so per-parameter
  meta-parameters can take its shapes.
* ``opt_fn(meta) -> optax.GradientTransformation``: the update rule with ``meta`` closed
  over, so ``jax.grad`` of any meta-loss built from its updates flows into ``meta``. The
  library's optimizers return an ``optax.GradientTransformationExtraArgs`` and take two
  keyword options, ``learning_rate`` (a scale: number, array or optax schedule) and
  ``weight_decay`` (decoupled, scaled by ``learning_rate``), defaults 1 and 0 (the rule as
  meta-trained), so ``optax.inject_hyperparams(functools.partial(lopt.opt_fn, meta))`` works.

Concrete optimizers are frozen dataclasses of their (non-learned) hyperparameters, so they
are hashable, can be static arguments of ``jax.jit``, and are cheap to copy.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import optax

from learned_dco.types import MetaParams, Params, PRNGKey


@runtime_checkable
class LearnedOptimizer(Protocol):
    """An update rule with learnable meta-parameters (see module docstring)."""

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        """Initial (unconstrained) meta-parameters for a model with these ``params``."""
        ...

    def opt_fn(self, meta: MetaParams) -> optax.GradientTransformation:
        """The optax transformation defined by ``meta``."""
        ...
