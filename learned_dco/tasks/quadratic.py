"""Noisy quadratic model (NQM), STAR paper Sec. 4, eq. (4), and Appendix B.1.

Math:
  At every step the minimum of the quadratic is redrawn,

      l_t(phi) = 1/2 (phi - xi_t)^T H (phi - xi_t),   xi_t ~ N(0, Sigma),

  so the stochastic gradient is ``H (phi - xi_t)``. ``sample_batch(key, task)`` draws
  ``xi_t`` and ``loss(phi, task, xi_t)`` evaluates ``l_t``. Because ``E xi = 0`` the expected
  loss has the closed form

      E_xi l(phi) = 1/2 phi^T H phi + 1/2 tr(H Sigma),

  which is what ``loss(phi, task)`` (``batch=None``) and ``val_loss`` return: the
  deterministic training loss of a stochastic family is its expectation. Its minimiser is
  ``phi = 0`` (``optimum``), with minimum value ``1/2 tr(H Sigma)`` (``min_loss``).

Families:

* ``NoisyQuadratic``: a fixed ``H``; the default is the 2-D matrix of STAR Appendix B.1,
  ``H = [[1.11, 0.596], [0.596, 0.486]]``, with ``phi_0 ~ N(0, 10 I)`` and
  ``xi ~ N(0, I)``. ``N(0, 10 I)`` is read in the usual ``N(mean, covariance)`` notation:
  covariance ``10 I``, i.e. per-coordinate standard deviation ``sqrt(10)`` (field
  ``init_var``). ``NoisyQuadratic.star()`` is this default spelled out.
* ``SpectralNoisyQuadratic``: ``d`` dimensions with a chosen spectrum (power law
  ``h_i = i^-alpha``, log-spaced, or log-uniform random per task) and optionally a random
  orthogonal eigenbasis per task.

* ``Quadratic`` (M-L2O / Andrychowicz et al. 2016): the deterministic least-squares
  quadratic ``||W x - y||^2`` with a random square ``W`` per task; its ``shift`` scales
  ``W -> exp(shift) W`` (curvature by ``exp(2 shift)``) for out-of-distribution tests.

In both NQM families, the task holds ``H``, a square root ``S`` of the noise covariance
(``Sigma = S S^T``) and the initial point ``phi_0``; ``init_params`` returns ``phi_0`` (its
key is unused), so tasks of the fixed-``H`` family differ by their starting point.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.tasks.base import TaskFamilyBase
from learned_dco.validation import check_choice, check_fields, ValidationError
from learned_dco.types import Array, Batch, Params, PRNGKey

STAR_HESSIAN: tuple[tuple[float, float], tuple[float, float]] = ((1.11, 0.596), (0.596, 0.486))
"""The 2-D Hessian of the STAR paper, Appendix B.1, eq. (A.30)."""


class NoisyQuadraticTask(NamedTuple):
    """One noisy quadratic ``1/2 (phi - xi)^T H (phi - xi)``, ``xi ~ N(0, S S^T)``."""

    hessian: Array  # (d, d) symmetric positive semi-definite H
    noise_sqrt: Array  # (d, d) S with Sigma = S S^T
    phi0: Array  # (d,) initial parameters phi_0 ~ N(0, init_var I)


class _NoisyQuadraticBase(TaskFamilyBase):
    """Loss, expected loss and noise draws shared by both NQM families."""

    source = "STAR (Harrison, Metz, Sohl-Dickstein) Sec. 4 eq. (4), Appendix B.1"
    has_optimum = True

    def init_params(self, key: PRNGKey, task: NoisyQuadraticTask) -> Array:
        """The task's initial point ``phi_0`` (``key`` is unused)."""
        del key
        return task.phi0

    def sample_batch(self, key: PRNGKey, task: NoisyQuadraticTask) -> Array:
        """One draw of the moving minimum ``xi ~ N(0, Sigma)``, shape ``(d,)``."""
        z = jax.random.normal(key, task.phi0.shape, task.phi0.dtype)
        return task.noise_sqrt @ z

    def loss(self, params: Params, task: NoisyQuadraticTask, batch: Batch | None = None) -> Array:
        """``1/2 (phi - xi)^T H (phi - xi)``, or its expectation over ``xi`` if ``batch`` is None."""
        if batch is None:
            return self.expected_loss(params, task)
        diff = params - batch
        return 0.5 * diff @ (task.hessian @ diff)

    def expected_loss(self, params: Params, task: NoisyQuadraticTask) -> Array:
        """``1/2 phi^T H phi + 1/2 tr(H Sigma)``."""
        return 0.5 * params @ (task.hessian @ params) + self.min_loss(task)

    def min_loss(self, task: NoisyQuadraticTask) -> Array:
        """``1/2 tr(H Sigma)``: the expected loss at the optimum ``phi = 0``."""
        sigma = task.noise_sqrt @ task.noise_sqrt.T
        return 0.5 * jnp.sum(task.hessian * sigma)

    def val_loss(self, params: Params, task: NoisyQuadraticTask) -> Array:
        """The expected loss (closed form)."""
        return self.expected_loss(params, task)

    def optimum(self, task: NoisyQuadraticTask) -> Array:
        """``phi = 0`` minimises the expected loss."""
        return jnp.zeros_like(task.phi0)


@dataclasses.dataclass(frozen=True)
class NoisyQuadratic(_NoisyQuadraticBase):
    """Noisy quadratic with a fixed Hessian; the default is STAR's 2-D problem (App. B.1).

    Math:
      ``l_t(phi) = 1/2 (phi - xi_t)^T H (phi - xi_t)``, ``xi_t ~ N(0, noise_std^2 I)``,
      ``phi_0 ~ N(0, init_var I)``. See the module docstring for the expected loss.

    Attributes:
      hessian: ``H`` as a tuple of rows; must be square, symmetric and positive
        semi-definite (default: STAR eq. (A.30)).
      noise_std: ``Sigma = noise_std^2 I`` (STAR: 1).
      init_var: variance of each coordinate of ``phi_0`` (STAR: 10).

    Params: a ``(d,)`` array (``d = 2`` by default).
    """

    hessian: tuple[tuple[float, ...], ...] = STAR_HESSIAN
    noise_std: float = 1.0
    init_var: float = 10.0

    def __post_init__(self):
        check_fields(self, nonnegative=("noise_std", "init_var"))
        try:
            h = np.asarray(self.hessian, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValidationError(f"NoisyQuadratic.hessian must be a square matrix, got {self.hessian!r}", field="hessian") from None
        if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] == 0:
            raise ValidationError(f"NoisyQuadratic.hessian must be a square matrix, got shape {h.shape}", field="hessian")
        if not np.allclose(h, h.T):
            raise ValidationError("NoisyQuadratic.hessian must be symmetric", field="hessian")
        if np.linalg.eigvalsh(h).min() < -1e-12:
            raise ValidationError("NoisyQuadratic.hessian must be positive semi-definite", field="hessian")
        object.__setattr__(self, "hessian", tuple(tuple(float(v) for v in row) for row in h))

    @classmethod
    def star(cls) -> "NoisyQuadratic":
        """STAR Appendix B.1: 2-D ``H`` of eq. (A.30), ``phi_0 ~ N(0, 10 I)``, ``xi ~ N(0, I)``."""
        return cls(hessian=STAR_HESSIAN, noise_std=1.0, init_var=10.0)

    @property
    def dim(self) -> int:
        return len(self.hessian)

    def sample(self, key: PRNGKey) -> NoisyQuadraticTask:
        phi0 = jnp.sqrt(self.init_var) * jax.random.normal(key, (self.dim,))
        hessian = jnp.asarray(self.hessian, phi0.dtype)
        noise_sqrt = self.noise_std * jnp.eye(self.dim, dtype=phi0.dtype)
        return NoisyQuadraticTask(hessian, noise_sqrt, phi0)


@dataclasses.dataclass(frozen=True)
class SpectralNoisyQuadratic(_NoisyQuadraticBase):
    """``d``-dimensional noisy quadratic with a chosen Hessian spectrum (STAR Sec. 4 model).

    Math:
      ``H = Q diag(h) Q^T`` with eigenvalues ``h``:

      * ``spectrum="power"``: ``h_i = eig_max * i^-alpha`` for ``i = 1..d`` (the
        ill-conditioned power-law spectra of the NQM literature, e.g. Zhang et al. 2019);
      * ``spectrum="logspace"``: ``h`` log-spaced from ``eig_max`` down to ``eig_min``;
      * ``spectrum="loguniform"``: ``h_i`` i.i.d. log-uniform on ``[eig_min, eig_max]``,
        redrawn per task.

      ``Q = I`` (axis-aligned) unless ``rotate=True``, which draws a Haar-random orthogonal
      ``Q`` per task. ``xi ~ N(0, noise_std^2 I)``, ``phi_0 ~ N(0, init_var I)``.

    Attributes:
      dim: dimension ``d`` (default 10).
      spectrum: ``"power"`` (default), ``"logspace"`` or ``"loguniform"``.
      alpha: power-law exponent (default 1).
      eig_min, eig_max: spectrum bounds (``eig_min`` unused by ``"power"``).
      rotate: random eigenbasis per task (default ``False``).
      noise_std: ``Sigma = noise_std^2 I`` (default 1).
      init_var: variance of each coordinate of ``phi_0`` (default 10, as in STAR B.1).

    Params: a ``(dim,)`` array.
    """

    dim: int = 10
    spectrum: str = "power"
    alpha: float = 1.0
    eig_min: float = 0.01
    eig_max: float = 1.0
    rotate: bool = False
    noise_std: float = 1.0
    init_var: float = 10.0

    def __post_init__(self):
        check_fields(
            self,
            integer=("dim",),
            positive=("dim", "eig_min", "eig_max"),
            nonnegative=("alpha", "noise_std", "init_var"),
        )
        check_choice(self, "spectrum", ("power", "logspace", "loguniform"))
        if self.eig_min > self.eig_max:
            raise ValidationError(
                f"SpectralNoisyQuadratic.eig_min must be <= eig_max, got {self.eig_min} > {self.eig_max}",
                field="eig_min",
            )

    def eigenvalues(self, key: PRNGKey | None = None) -> Array:
        """The spectrum ``h`` (descending for the deterministic spectra); ``key`` for loguniform."""
        if self.spectrum == "power":
            i = jnp.arange(1, self.dim + 1)
            return self.eig_max * i.astype(jnp.result_type(float)) ** (-self.alpha)
        if self.spectrum == "logspace":
            return jnp.geomspace(self.eig_max, self.eig_min, self.dim)
        if key is None:
            raise ValidationError("spectrum='loguniform' needs a key")
        log_h = jax.random.uniform(
            key, (self.dim,), minval=jnp.log(self.eig_min), maxval=jnp.log(self.eig_max)
        )
        return jnp.exp(log_h)

    def sample(self, key: PRNGKey) -> NoisyQuadraticTask:
        k_phi, k_eig, k_rot = jax.random.split(key, 3)
        phi0 = jnp.sqrt(self.init_var) * jax.random.normal(k_phi, (self.dim,))
        h = self.eigenvalues(k_eig).astype(phi0.dtype)
        if self.rotate:
            # Haar-random orthogonal Q: QR of a Gaussian matrix with the sign fix on diag(R).
            q, r = jnp.linalg.qr(jax.random.normal(k_rot, (self.dim, self.dim), phi0.dtype))
            q = q * jnp.sign(jnp.diagonal(r))
            hessian = (q * h) @ q.T
            hessian = 0.5 * (hessian + hessian.T)
        else:
            hessian = jnp.diag(h)
        noise_sqrt = self.noise_std * jnp.eye(self.dim, dtype=phi0.dtype)
        return NoisyQuadraticTask(hessian, noise_sqrt, phi0)


# --- M-L2O quadratic ---------------------------------------------------------------------


class QuadraticTask(NamedTuple):
    """One quadratic ``||W x - y||^2``."""

    W: Array  # (dim, dim)
    y: Array  # (dim,)


@dataclasses.dataclass(frozen=True)
class Quadratic(TaskFamilyBase):
    """Random quadratic ``min_x ||W x - y||_2^2`` (Andrychowicz et al. 2016; M-L2O).

    Math:
      ``W_ij ~ N(0, exp(2 shift))``, ``y_i ~ N(0, 1)``, ``W`` square ``dim x dim``;
      ``loss = ||W x - y||_2^2`` (sum, no 1/2, as in Andrychowicz et al.), minimiser
      ``W^{-1} y`` (``jnp.linalg.lstsq``).

    Attributes:
      dim: size of ``W`` and ``x`` (Andrychowicz et al.: 10).
      init_scale: ``x_0 ~ N(0, init_scale^2 I)`` (default 0.01).
      shift: ``W -> exp(shift) W`` (see the module docstring).

    Params: a ``(dim,)`` array.
    """

    dim: int = 10
    init_scale: float = 0.01
    shift: float = 0.0

    source = "M-L2O (Yang et al., ICLR 2023) quadratic; Andrychowicz et al. 2016 setting"
    has_optimum = True

    def __post_init__(self):
        check_fields(self, integer=("dim",), positive=("dim",), nonnegative=("init_scale",))
        if not math.isfinite(self.shift):
            raise ValidationError(f"Quadratic.shift must be finite, got {self.shift!r}", field="shift")

    def sample(self, key: PRNGKey) -> QuadraticTask:
        kw, ky = jax.random.split(key)
        W = math.exp(self.shift) * jax.random.normal(kw, (self.dim, self.dim))
        y = jax.random.normal(ky, (self.dim,))
        return QuadraticTask(W, y)

    def init_params(self, key: PRNGKey, task: QuadraticTask) -> Array:
        return self.init_scale * jax.random.normal(key, (self.dim,), task.W.dtype)

    def loss(self, params: Params, task: QuadraticTask, batch: Batch | None = None) -> Array:
        del batch  # deterministic
        return jnp.sum(jnp.square(task.W @ params - task.y))

    def optimum(self, task: QuadraticTask) -> Array:
        """``W^{-1} y`` via ``jnp.linalg.lstsq``."""
        return jnp.linalg.lstsq(task.W, task.y)[0]
