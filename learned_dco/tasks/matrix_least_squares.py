"""Multi-output least squares with correlated features: a weight *matrix* to fit.

A family where the curvature is Kronecker-structured, for MetaMD (Kronecker-factored mirror
descent) and the DCO rules. Every task shares one ill-conditioned, rotated feature
covariance (the "problem family" structure a learned optimizer can exploit); the data,
ground truth and noise are fresh per task.

Math:
  ``Sigma = R diag(s) R^T`` with ``s`` log-spaced from 1 down to ``1/condition`` and ``R`` a
  random rotation (both fixed by ``data_seed``); per task, inputs ``x ~ N(0, Sigma)``
  (``num_samples`` training and ``num_val`` validation rows), ``W* ~ N(0, 1/dim_in)``,
  ``b* ~ N(0, 1)`` and ``Y = X W* + 1 b*^T + noise_std E``. The loss is

      loss(W, b) = 1/(2n) ||X W + 1 b^T - Y||_F^2,

  whose Hessian in ``W`` is ``(X^T X / n) (x) I`` -- a Kronecker product whose left factor
  is close to ``Sigma`` for every task, so the ideal mirror map is ``Sigma^{-1} (x) I``
  (and a diagonal preconditioner cannot undo the rotation). ``val_loss`` is the same on the
  validation rows. The minimiser is ordinary least squares on ``[X, 1]``.

Attributes:
  num_samples: training rows ``n`` (default 64).
  num_val: validation rows (default 64).
  dim_in: features ``p`` (default 16).
  dim_out: outputs ``k`` (default 8).
  condition: ``cond(Sigma)`` (default 100).
  noise_std: output noise (default 0.1).
  data_seed: seed of ``Sigma``'s rotation (NumPy).
  init_scale: ``W_0 ~ N(0, init_scale^2)``, ``b_0 = 0`` (default 0: start at zero).

Params: ``{"w": (dim_in, dim_out), "b": (dim_out,)}``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.tasks.base import TaskFamilyBase
from learned_dco.validation import check_fields, ValidationError
from learned_dco.types import Array, Batch, Params, PRNGKey


class MatrixLeastSquaresTask(NamedTuple):
    X: Array  # (num_samples, dim_in)
    Y: Array  # (num_samples, dim_out)
    X_val: Array  # (num_val, dim_in)
    Y_val: Array  # (num_val, dim_out)


@dataclasses.dataclass(frozen=True)
class MatrixLeastSquares(TaskFamilyBase):
    """Multi-output least squares with a shared rotated, ill-conditioned feature covariance
    (see the module docstring for the maths, attributes and params)."""

    num_samples: int = 64
    num_val: int = 64
    dim_in: int = 16
    dim_out: int = 8
    condition: float = 100.0
    noise_std: float = 0.1
    data_seed: int = 0
    init_scale: float = 0.0

    source = "MetaMD (Kronecker-factored mirror descent) test family; built for this library"
    has_optimum = True

    def __post_init__(self):
        check_fields(
            self,
            integer=("num_samples", "num_val", "dim_in", "dim_out", "data_seed"),
            positive=("num_samples", "num_val", "dim_in", "dim_out"),
            nonnegative=("noise_std", "init_scale", "data_seed"),
        )
        if not (math.isfinite(self.condition) and self.condition >= 1):
            raise ValidationError(f"MatrixLeastSquares.condition must be a finite number >= 1, got {self.condition!r}", field="condition")

    @functools.cached_property
    def _sqrt_covariance(self) -> np.ndarray:
        rng = np.random.default_rng(self.data_seed)
        R, _ = np.linalg.qr(rng.standard_normal((self.dim_in, self.dim_in)))
        s = np.logspace(0.0, -math.log10(self.condition), self.dim_in)
        return (R * np.sqrt(s)) @ R.T

    def covariance(self) -> Array:
        """The shared feature covariance ``Sigma``."""
        root = self._sqrt_covariance
        return jnp.asarray(root @ root)

    def sample(self, key: PRNGKey) -> MatrixLeastSquaresTask:
        kx, kv, kw, kb, kn, km = jax.random.split(key, 6)
        root = jnp.asarray(self._sqrt_covariance, jnp.result_type(float))
        w_star = jax.random.normal(kw, (self.dim_in, self.dim_out)) / math.sqrt(self.dim_in)
        b_star = jax.random.normal(kb, (self.dim_out,))

        def rows(k_x, k_n, n):
            X = jax.random.normal(k_x, (n, self.dim_in)) @ root
            return X, X @ w_star + b_star + self.noise_std * jax.random.normal(k_n, (n, self.dim_out))

        X, Y = rows(kx, kn, self.num_samples)
        X_val, Y_val = rows(kv, km, self.num_val)
        return MatrixLeastSquaresTask(X, Y, X_val, Y_val)

    def init_params(self, key: PRNGKey, task: MatrixLeastSquaresTask) -> Params:
        dtype = task.X.dtype
        return {"w": self.init_scale * jax.random.normal(key, (self.dim_in, self.dim_out), dtype),
                "b": jnp.zeros((self.dim_out,), dtype)}

    @staticmethod
    def _loss(params, X, Y):
        r = X @ params["w"] + params["b"] - Y
        return 0.5 * jnp.sum(jnp.square(r)) / X.shape[0]

    def loss(self, params: Params, task: MatrixLeastSquaresTask, batch: Batch | None = None) -> Array:
        del batch  # deterministic
        return self._loss(params, task.X, task.Y)

    def val_loss(self, params: Params, task: MatrixLeastSquaresTask) -> Array:
        return self._loss(params, task.X_val, task.Y_val)

    def optimum(self, task: MatrixLeastSquaresTask) -> Params:
        """Least squares on ``[X, 1]`` (``jnp.linalg.lstsq``)."""
        Xa = jnp.concatenate([task.X, jnp.ones((task.X.shape[0], 1), task.X.dtype)], axis=1)
        sol = jnp.linalg.lstsq(Xa, task.Y)[0]
        return {"w": sol[:-1], "b": sol[-1]}
