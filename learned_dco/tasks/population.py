"""Beverton–Holt system identification, DCO Sec. VI-C (eq. (23)).

A task is one population model ``n_{t+1} = f(n_t) = R0 n_t / (K + n_t)`` with
``R0, K ~ U(1, 2)``; the learner fits a 1-5-5-1 MLP to samples ``{(n, f(n) + d)}`` with
``n ~ U(0, 10)`` and additive disturbance ``d``.

Choices where the paper is ambiguous (all fields):

* ``d ~ N(0, 0.1)``: read as mean 0 and *variance* 0.1 (the usual ``N(mu, sigma^2)``
  notation), i.e. standard deviation ``sqrt(0.1) ~ 0.316`` (field ``noise_var``).
* Validation targets are noise-free ``f(n)`` (``noisy_val=False``): the validation MSE then
  measures how well the dynamics were identified rather than the irreducible noise
  (the paper writes the samples as ``{n, f(n)}``). Training targets are noisy.
* Activation ``tanh`` (smooth, saturating like ``f``); inputs are the raw ``n`` in
  ``[0, 10]`` (no normalisation, as in the paper).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from learned_dco.validation import ValidationError, check_range
from learned_dco.tasks.regression import MLPRegression
from learned_dco.types import Array, PRNGKey


class BevertonHoltTask(NamedTuple):
    """Samples of one Beverton–Holt map; inputs and targets have shape ``(N, 1)``."""

    x_train: Array  # (num_train, 1) population densities n
    y_train: Array  # (num_train, 1) f(n) + d
    x_val: Array  # (num_val, 1)
    y_val: Array  # (num_val, 1) f(n) (+ d if noisy_val)
    r0: Array  # () proliferation rate R0
    k: Array  # () carrying capacity K


def beverton_holt(n: Array, r0: Array, k: Array) -> Array:
    """``f(n) = R0 n / (K + n)`` (DCO eq. (23))."""
    return r0 * n / (k + n)


@dataclasses.dataclass(frozen=True)
class BevertonHolt(MLPRegression):
    """Identify ``f(n) = R0 n / (K + n)`` from noisy samples with an MLP (DCO Sec. VI-C).

    Math:
      ``R0 ~ U(r0_range)``, ``K ~ U(k_range)``, ``n ~ U(n_range)``,
      ``y = f(n) + d`` with ``d ~ N(0, noise_var)``;
      ``loss = mean_j (MLP(n_j) - y_j)^2`` on the training set, ``val_loss`` the same on
      the validation set.

    Attributes:
      num_train: training points (paper: 500).
      num_val: validation points (paper: 100).
      r0_range, k_range: uniform ranges of ``R0`` and ``K`` (paper: ``(1, 2)``).
      n_range: uniform range of the inputs ``n`` (paper: ``(0, 10)``).
      noise_var: variance of the disturbance ``d`` (paper: 0.1).
      noisy_val: whether validation targets also carry ``d`` (default: clean).
      hidden: hidden widths (paper: ``(5, 5)``).
      activation: hidden activation (default ``"tanh"``).

    Params: ``{"layers": [{"w", "b"}] * 3}`` for a 1-5-5-1 MLP (46 parameters).
    """

    num_train: int = 500
    num_val: int = 100
    r0_range: tuple[float, float] = (1.0, 2.0)
    k_range: tuple[float, float] = (1.0, 2.0)
    n_range: tuple[float, float] = (0.0, 10.0)
    noise_var: float = 0.1
    noisy_val: bool = False
    hidden: tuple[int, ...] = (5, 5)
    activation: str = "tanh"

    source = "DCO (Gautam, Pfrommer, Sojoudi) Sec. VI-C, eq. (23)"
    has_optimum = False

    def __post_init__(self):
        self._check_sizes("noise_var")
        check_range(self, "r0_range", lower=0.0)
        check_range(self, "k_range", lower=0.0)
        if not self.k_range[0] > 0:
            raise ValidationError(f"BevertonHolt.k_range must be > 0 (K divides), got {self.k_range!r}", field="k_range")
        check_range(self, "n_range", lower=0.0)
        self._check_network()

    def sample(self, key: PRNGKey) -> BevertonHoltTask:
        kr, kk, kxt, kxv, knt, knv = jax.random.split(key, 6)
        r0 = jax.random.uniform(kr, (), minval=self.r0_range[0], maxval=self.r0_range[1])
        k = jax.random.uniform(kk, (), minval=self.k_range[0], maxval=self.k_range[1])
        lo, hi = self.n_range
        x_train, x_val = self._sample_inputs(kxt, kxv, lo, hi)
        std = math.sqrt(self.noise_var)
        y_train = beverton_holt(x_train, r0, k) + std * jax.random.normal(knt, x_train.shape)
        y_val = beverton_holt(x_val, r0, k)
        if self.noisy_val:
            y_val = y_val + std * jax.random.normal(knv, x_val.shape)
        return BevertonHoltTask(x_train, y_train, x_val, y_val, r0, k)

    def clean_val_loss(self, params, task: BevertonHoltTask) -> Array:
        """Validation MSE against the noise-free ``f(n)``, whatever ``noisy_val`` says."""
        target = beverton_holt(task.x_val, task.r0, task.k)
        return jnp.mean(jnp.square(self.predict(params, task.x_val) - target))
