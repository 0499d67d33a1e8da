r"""The small shared network of the per-tensor and per-parameter learned optimizers.

A two-hidden-layer tanh MLP :math:`f(x) = W_3\,\tanh(W_2 \tanh(W_1 x + b_1) + b_2) + b_3`,
applied row-wise to features ``(..., F)``. Its last layer starts at zero, so an untrained
optimizer built on it is exactly its base rule (the property the designs' tests pin down).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from learned_dco.types import Array, MetaParams, PRNGKey
from learned_dco.validation import ValidationError


def mlp_init(key: PRNGKey, features: int, hidden: int, outputs: tuple[int, ...], init_scale: float) -> MetaParams:
    """``w1, b1, w2, b2`` scaled Gaussian / zero; ``w3 (hidden, *outputs)`` and ``b3 outputs`` zero."""
    k1, k2 = jax.random.split(key)
    return {
        "w1": init_scale * jax.random.normal(k1, (features, hidden)) / math.sqrt(features),
        "b1": jnp.zeros((hidden,)),
        "w2": init_scale * jax.random.normal(k2, (hidden, hidden)) / math.sqrt(hidden),
        "b2": jnp.zeros((hidden,)),
        "w3": jnp.zeros((hidden, *outputs)),
        "b3": jnp.zeros(outputs),
    }


def mlp_apply(meta: MetaParams, features: Array) -> Array:
    """:math:`f(x)` of the module docstring on ``(..., F)`` features."""
    h = jnp.tanh(features @ meta["w1"] + meta["b1"])
    h = jnp.tanh(h @ meta["w2"] + meta["b2"])
    return h @ meta["w3"] + meta["b3"]


def logit(p: float) -> float:
    """:math:`\\log(p / (1 - p))`, the stored form of a coefficient in (0, 1)."""
    return math.log(p / (1 - p))


def check_open_unit(owner: str, field: str, value) -> None:
    """``value`` is a real number in (0, 1), else a :class:`ValidationError` naming ``owner.field``."""
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise ValidationError(f"{owner}.{field} must be in (0, 1), got {value!r}", field=field)


__all__ = ["check_open_unit", "logit", "mlp_apply", "mlp_init"]
