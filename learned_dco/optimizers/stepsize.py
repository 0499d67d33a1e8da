r"""A learned scalar step size for gradient descent.

Wang, Sun, Ge et al., "Guarantees for Tuning the Step Size using a Learning-to-Learn
Approach" (ICML 2021) study the simplest learned optimizer: GD
:math:`\theta_{t+1} = \theta_t - \eta\,g_t` whose only meta-parameter is the step size,
log-parameterised here as :math:`\eta = \exp(\text{log\_lr})` so every real value is a
valid (positive) step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_dco.optimizers.base import check_grads, finish, is_python_number
from learned_dco.optimizers.dco import LOG_CLIP
from learned_dco.types import MetaParams, Params, PRNGKey
from learned_dco.validation import check_positive


class StepSizeState(NamedTuple):
    """Stateless (GD); kept as a NamedTuple for a uniform state contract."""


def step_size_gd(learning_rate: Any, *, weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
    r""":math:`u = -\eta\,(g + \lambda\theta)`: gradient descent with step ``learning_rate``
    :math:`\eta` (a number, a possibly traced scalar array, or an optax schedule) and
    decoupled weight decay ``weight_decay`` :math:`\lambda` (scaled by the step, as
    ``optax.adamw``; needs ``params`` when nonzero). An
    ``optax.GradientTransformationExtraArgs``; low-precision params keep their dtypes."""

    def init_fn(params):
        del params
        return StepSizeState()

    # Without a schedule or decay the step is folded into the rule, u = -eta g; otherwise the
    # rule is -g and scale_and_decay (via finish) forms eta (-g - lambda theta).
    folded = not callable(learning_rate) and is_python_number(weight_decay, 0.0)
    inner_lr = learning_rate if folded else 1.0

    def update_fn(grads, state, params=None):
        if params is not None:
            check_grads("step_size_gd", grads, params)
        lr = jnp.asarray(inner_lr)
        return jax.tree.map(lambda g: -lr.astype(g.dtype) * g, grads), state

    return finish(optax.GradientTransformation(init_fn, update_fn), learning_rate=1.0 if folded else learning_rate,
                  weight_decay=weight_decay, owner="step_size_gd")


@dataclasses.dataclass(frozen=True)
class LearnedStepSize:
    """GD with a learned step size: meta ``{"log_lr": ()}``, :math:`\\eta = e^{\\text{log\\_lr}}`."""

    learning_rate: float = 0.1

    def __post_init__(self):
        check_positive(self, "learning_rate")

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        del key
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        return {"log_lr": jnp.asarray(math.log(self.learning_rate), dtype)}

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
        r"""GD with the learned step :math:`e^{\text{log\_lr}}`; ``learning_rate`` (number, array
        or optax schedule) scales it and ``weight_decay`` adds decoupled decay scaled by
        ``learning_rate`` alone: :math:`u = \eta\,(-e^{\text{log\_lr}} g - \lambda\theta)`."""
        gd = step_size_gd(jnp.exp(jnp.clip(meta["log_lr"], -LOG_CLIP, LOG_CLIP)))
        return finish(gd, learning_rate=learning_rate, weight_decay=weight_decay, owner="LearnedStepSize")
