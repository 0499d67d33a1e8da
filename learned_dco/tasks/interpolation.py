"""Smooth function interpolation, DCO Sec. VI-D (eq. (24)).

A task is one function ``g(x) = a cos(b x) exp(-c |x|)`` with ``a, b, c ~ U(0, 1)``; the
learner fits a 1-10-10-1 MLP to 500 training samples and is scored by the MSE on 100
validation samples.

Choices where the paper is ambiguous (all fields):

* Inputs ``x ~ U(-5, 5)`` (``x_range``; the paper gives no range). On ``[-5, 5]`` the
  function shows both its oscillation (``b`` up to 1 rad per unit) and its decay.
* Targets are noise-free (``noise_std = 0``; the paper adds no noise), for training and
  validation alike.
* Activation ``tanh`` (the target is smooth).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from learned_dco.validation import check_range
from learned_dco.tasks.regression import MLPRegression
from learned_dco.types import Array, PRNGKey


class SmoothInterpolationTask(NamedTuple):
    """Samples of one ``g``; inputs and targets have shape ``(N, 1)``."""

    x_train: Array  # (num_train, 1)
    y_train: Array  # (num_train, 1) g(x) (+ noise)
    x_val: Array  # (num_val, 1)
    y_val: Array  # (num_val, 1) g(x) (+ noise)
    a: Array  # () amplitude
    b: Array  # () frequency
    c: Array  # () decay rate


def smooth_function(x: Array, a: Array, b: Array, c: Array) -> Array:
    """``g(x) = a cos(b x) exp(-c |x|)`` (DCO eq. (24))."""
    return a * jnp.cos(b * x) * jnp.exp(-c * jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class SmoothInterpolation(MLPRegression):
    """Regress ``g(x) = a cos(b x) exp(-c|x|)`` with an MLP (DCO Sec. VI-D).

    Math:
      ``a ~ U(a_range)``, ``b ~ U(b_range)``, ``c ~ U(c_range)``, ``x ~ U(x_range)``,
      ``y = g(x) + noise_std * eps``; ``loss`` / ``val_loss`` are the MSEs on the
      training / validation points.

    Attributes:
      num_train: training points (paper: 500).
      num_val: validation points (paper: 100).
      a_range, b_range, c_range: uniform ranges of the coefficients (paper: ``(0, 1)``).
      x_range: uniform range of the inputs (default ``(-5, 5)``).
      noise_std: standard deviation of additive target noise (default 0).
      hidden: hidden widths (paper: ``(10, 10)``).
      activation: hidden activation (default ``"tanh"``).

    Params: ``{"layers": [{"w", "b"}] * 3}`` for a 1-10-10-1 MLP (141 parameters).
    """

    num_train: int = 500
    num_val: int = 100
    a_range: tuple[float, float] = (0.0, 1.0)
    b_range: tuple[float, float] = (0.0, 1.0)
    c_range: tuple[float, float] = (0.0, 1.0)
    x_range: tuple[float, float] = (-5.0, 5.0)
    noise_std: float = 0.0
    hidden: tuple[int, ...] = (10, 10)
    activation: str = "tanh"

    source = "DCO (Gautam, Pfrommer, Sojoudi) Sec. VI-D, eq. (24)"
    has_optimum = False

    def __post_init__(self):
        self._check_sizes("noise_std")
        for field in ("a_range", "b_range", "x_range"):
            check_range(self, field)
        check_range(self, "c_range", lower=0.0)  # c < 0 would make g blow up
        self._check_network()

    def sample(self, key: PRNGKey) -> SmoothInterpolationTask:
        ka, kb, kc, kxt, kxv, knt, knv = jax.random.split(key, 7)
        a = jax.random.uniform(ka, (), minval=self.a_range[0], maxval=self.a_range[1])
        b = jax.random.uniform(kb, (), minval=self.b_range[0], maxval=self.b_range[1])
        c = jax.random.uniform(kc, (), minval=self.c_range[0], maxval=self.c_range[1])
        lo, hi = self.x_range
        x_train, x_val = self._sample_inputs(kxt, kxv, lo, hi)
        y_train = smooth_function(x_train, a, b, c)
        y_val = smooth_function(x_val, a, b, c)
        if self.noise_std > 0:
            y_train = y_train + self.noise_std * jax.random.normal(knt, x_train.shape)
            y_val = y_val + self.noise_std * jax.random.normal(knv, x_val.shape)
        return SmoothInterpolationTask(x_train, y_train, x_val, y_val, a, b, c)
