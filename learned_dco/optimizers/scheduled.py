r"""Horizon-aware learned optimizers: a hand-designed update with a *learned schedule*.

Two designs for the pretrained optimizer, both with a handful of meta-parameters that
do not depend on the model's shapes (so one set of weights applies to any parameter pytree)
and both told the run's length ``num_steps`` :math:`T` (a task mixture tells them each
episode's horizon; ``ldco.pretrained.load(name, num_steps=...)`` tells them yours):

* :class:`ScheduledAdam`: Adam (Kingma & Ba, 2015) with step size
  :math:`\eta_t = \exp s(t/T)` and learned :math:`\beta_1, \beta_2`;
* :class:`LearnedProdigy`: Prodigy (Mishchenko & Defazio, 2023; :func:`prodigy`, the maths of
  ``optax.contrib.prodigy``),
  Adam whose base step size is the running distance-to-solution estimate :math:`d_t`
  (D-Adaptation), scaled by the learned :math:`\exp s(t/T)`, with learned betas and a
  learned coefficient :math:`c` on the estimate. The estimate adapts the step size to the
  problem's scale; the schedule is what meta-training learns.

The schedule :math:`s` is piecewise linear in the fraction of the run done,
:math:`u = \min(t/T, 1)`, through ``knots`` values at :math:`u = 0, 1/(K-1), \dots, 1`; past
:math:`T` it holds its last value (so running 10x longer than told is a constant-rate run,
not an extrapolation). Meta-parameters::

    {"log_lr": (K,), "b1_logit": (), "b2_logit": ()}              # ScheduledAdam
    {"log_lr": (K,), "b1_logit": (), "b2_logit": (), "log_coef": ()}   # LearnedProdigy

Every real value is valid: rates are exponentials, betas sigmoids, and ``log_lr`` is clipped
to :math:`\pm` ``LOG_CLIP`` before the exponential.

Both take their square roots with :func:`learned_dco.optimizers.base.safe_sqrt` (Adam through
optax's ``eps_root``, set to the dtype's smallest normal number), so the meta-gradient stays
finite on models with parameters that never receive a gradient.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_dco.optimizers.base import finish, safe_sqrt
from learned_dco.types import Array, MetaParams, Params, PRNGKey
from learned_dco.validation import ValidationError, check_positive, is_concrete, positive_int

LOG_CLIP = 30.0


def knot_schedule(log_values: Array, num_steps: int | Array) -> Callable[[Array], Array]:
    r"""``count -> exp(s(min(count / num_steps, 1)))``, ``s`` piecewise linear through
    ``log_values`` at evenly spaced fractions of the run (module docstring). ``num_steps``
    may be a Python int or a (traced) scalar array."""
    log_values = jnp.clip(jnp.asarray(log_values), -LOG_CLIP, LOG_CLIP)
    knots = log_values.shape[0]

    def schedule(count: Array) -> Array:
        u = jnp.minimum(jnp.asarray(count, log_values.dtype) / num_steps, 1.0)
        return jnp.exp(jnp.interp(u, jnp.linspace(0.0, 1.0, knots, dtype=log_values.dtype), log_values))

    return schedule


def _checked(tx, learning_rate: Any, weight_decay: Any, owner: str) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose ``update`` raises ``ValueError`` when the gradients do not match the
    parameters (structure or shapes), as every learned optimizer's contract asks, as the
    public transformation (:func:`learned_dco.optimizers.base.finish`: params' dtypes,
    learning-rate scale, weight decay, extra arguments)."""

    def update(grads, state, params=None):
        if params is not None:
            same = jax.tree.structure(grads) == jax.tree.structure(params) and all(
                jnp.shape(g) == jnp.shape(p) for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)))
            if not same:
                raise ValueError("gradients do not match the parameters (pytree structure or leaf shapes differ)")
        return tx.update(grads, state, params)

    return finish(optax.GradientTransformation(tx.init, update), learning_rate=learning_rate,
                  weight_decay=weight_decay, owner=owner)


def check_num_steps(owner: str, num_steps: Any) -> None:
    """``num_steps`` is a Python int >= 1 or a scalar integer/floating array (checked >= 1
    when concrete; a traced value passes unchecked)."""
    if isinstance(num_steps, (jax.Array, np.ndarray, np.generic)) and not isinstance(num_steps, bool):
        dtype = jnp.result_type(num_steps)
        if jnp.ndim(num_steps) != 0 or not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
            raise ValidationError(f"{owner}.num_steps must be a scalar (got shape {jnp.shape(num_steps)}, dtype {dtype})", field="num_steps")
        if is_concrete(num_steps) and not float(num_steps) >= 1:
            raise ValidationError(f"{owner}.num_steps must be >= 1, got {num_steps!r}", field="num_steps")
        return
    positive_int(owner, "num_steps", num_steps)


class ProdigyState(NamedTuple):
    """State of :func:`prodigy` (leaves of the first four follow the params tree)."""

    exp_avg: Params  # m: EMA of d_t g
    exp_avg_sq: Params  # v: EMA of (d_t g)^2
    grad_sum: Params  # s: beta3-discounted sum of d_t * eta_t * d_t g / d_0
    params0: Params  # x_0
    estim_lr: Array  # d_t, the distance estimate (never decreases)
    numerator_weighted: Array  # r_t, the estimate's numerator
    count: Array  # int32: updates taken


def prodigy(
    learning_rate: Callable[[Array], Array], b1: Array, b2: Array, eps: float, estim_lr0: float, estim_lr_coef: Array
) -> optax.GradientTransformation:
    r"""Prodigy (Mishchenko & Defazio, 2023, Algorithm 3 with Adam; no weight decay, no
    safeguard warm-up), the same maths as ``optax.contrib.prodigy``, written here so its
    square root is :func:`~learned_dco.optimizers.base.safe_sqrt` (optax's gives NaN
    meta-gradients where :math:`v = 0`). With :math:`\eta_t` = ``learning_rate(t)``,
    :math:`\beta_3 = \sqrt{\beta_2}`, :math:`c` = ``estim_lr_coef`` and step
    :math:`t = 1, 2, \dots`:

    .. math::
        \lambda_t &= d_{t-1}\,\eta_t\,\sqrt{1-\beta_2^t}/(1-\beta_1^t), \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, d_{t-1} g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, d_{t-1}^2 g_t^2, \\
        r_t &= \beta_3 r_{t-1} + (d_{t-1}/d_0)\,\lambda_t\, \langle g_t, x_0 - x_t\rangle, \quad
        s_t = \beta_3 s_{t-1} + \lambda_t\, d_{t-1} g_t / d_0, \\
        d_t &= \max(d_{t-1},\; c\, r_t / \lVert s_t \rVert_1), \quad
        u_t = -\lambda_t\, m_t / (\sqrt{v_t} + d_t\, \epsilon).
    """
    b3 = b2**0.5

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        dtype = min((jnp.result_type(x) for x in leaves), key=lambda d: jnp.finfo(d).bits) if leaves else jnp.float32
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return ProdigyState(zeros(), zeros(), zeros(), params, jnp.asarray(estim_lr0, dtype),
                            jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("prodigy needs params (its estimate uses x_0 - x_t)")
        count = state.count + 1
        d = state.estim_lr
        bias = (1 - b2**count) ** 0.5 / (1 - b1**count)  # this order and form: optax's rounding
        lam = (d * learning_rate(state.count) * bias).astype(d.dtype)
        dg = jax.tree.map(lambda g: d * g, grads)
        inner = sum(jnp.vdot(g, p0 - p) for g, p0, p in zip(
            jax.tree.leaves(grads), jax.tree.leaves(state.params0), jax.tree.leaves(params)))
        m = jax.tree.map(lambda a, x: b1 * a + (1 - b1) * x, state.exp_avg, dg)
        v = jax.tree.map(lambda a, x: b2 * a + (1 - b2) * x * x, state.exp_avg_sq, dg)
        s = jax.tree.map(lambda a, x: b3 * a + lam * x / estim_lr0, state.grad_sum, dg)
        r = b3 * state.numerator_weighted + (d / estim_lr0) * lam * inner
        l1 = sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(s))
        d_new = jnp.maximum(d, estim_lr_coef * r / l1)
        updates = jax.tree.map(lambda a, b: -(lam * a / (safe_sqrt(b) + d_new * eps)), m, v)
        return updates, ProdigyState(m, v, s, state.params0, d_new, r, count)

    return optax.GradientTransformation(init_fn, update_fn)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _dtype(params: Params):
    leaves = jax.tree.leaves(params)
    return jnp.result_type(*leaves) if leaves else jnp.float32


@dataclasses.dataclass(frozen=True)
class _Scheduled:
    """Fields and checks shared by the scheduled designs."""

    num_steps: int | Array = 1000
    knots: int = 6
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def _check(self) -> None:
        name = type(self).__name__
        check_num_steps(name, self.num_steps)
        positive_int(name, "knots", self.knots)
        if self.knots < 2:
            raise ValidationError(f"{name}.knots must be >= 2 (a schedule needs two ends), got {self.knots}", field="knots")
        for field in ("b1", "b2"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise ValidationError(f"{name}.{field} must be in (0, 1), got {value!r}")
        check_positive(self, "eps")

    def with_horizon(self, horizon: int):
        """The same optimizer told a run of ``horizon`` steps (``num_steps``)."""
        return dataclasses.replace(self, num_steps=horizon)

    def _meta(self, params: Params, log_lr0: float) -> MetaParams:
        dtype = _dtype(params)
        return {
            "log_lr": jnp.full((self.knots,), log_lr0, dtype),
            "b1_logit": jnp.asarray(_logit(self.b1), dtype),
            "b2_logit": jnp.asarray(_logit(self.b2), dtype),
        }

    def schedule(self, meta: MetaParams, num_steps: int | Array | None = None) -> Callable[[Array], Array]:
        """The learned step-size (or multiplier) schedule of ``meta`` over ``num_steps``
        (default the field)."""
        if num_steps is None:
            return knot_schedule(meta["log_lr"], self.num_steps)
        check_num_steps(type(self).__name__, num_steps)
        return knot_schedule(meta["log_lr"], num_steps)

    @staticmethod
    def betas(meta: MetaParams) -> tuple[Array, Array]:
        return jax.nn.sigmoid(meta["b1_logit"]), jax.nn.sigmoid(meta["b2_logit"])


@dataclasses.dataclass(frozen=True)
class ScheduledAdam(_Scheduled):
    r"""Adam with a learned step-size schedule over the run and learned betas.

    ``learning_rate`` is the initial (constant) schedule; meta-training reshapes it.
    """

    learning_rate: float = 1e-3

    def __post_init__(self):
        self._check()
        check_positive(self, "learning_rate")

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        del key
        return self._meta(params, math.log(self.learning_rate))

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0,
               num_steps: int | Array | None = None) -> optax.GradientTransformationExtraArgs:
        r"""Adam with the learned schedule of ``meta`` over ``num_steps`` (default the field; a
        Python int or a traced array); ``learning_rate`` (number, array or optax schedule)
        scales every update and ``weight_decay`` adds decoupled decay,
        :math:`u = \eta\,(u^{adam} - \lambda\theta)`."""
        b1, b2 = self.betas(meta)
        eps_root = float(jnp.finfo(jnp.result_type(meta["log_lr"])).tiny)  # finite meta-gradients at v = 0
        adam = optax.adam(self.schedule(meta, num_steps), b1=b1, b2=b2, eps=self.eps, eps_root=eps_root)
        return _checked(adam, learning_rate, weight_decay, "ScheduledAdam")


@dataclasses.dataclass(frozen=True)
class LearnedProdigy(_Scheduled):
    r"""Prodigy (distance-adaptive Adam) with a learned multiplier schedule, betas and
    estimate coefficient.

    ``estim_lr0`` is Prodigy's initial under-estimate :math:`d_0` of the distance to the
    solution. The initial meta-parameters are Prodigy's defaults (multiplier 1, :math:`c = 1`).
    """

    estim_lr0: float = 1e-6

    def __post_init__(self):
        self._check()
        check_positive(self, "estim_lr0")

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        del key
        meta = self._meta(params, 0.0)
        meta["log_coef"] = jnp.zeros((), meta["log_lr"].dtype)
        return meta

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0,
               num_steps: int | Array | None = None) -> optax.GradientTransformationExtraArgs:
        r"""Prodigy with the learned multiplier schedule of ``meta`` over ``num_steps`` (default
        the field; a Python int or a traced array). ``learning_rate`` (number, array or optax
        schedule) scales every update *after* the distance estimate (which it leaves
        unchanged) and ``weight_decay`` adds decoupled decay,
        :math:`u = \eta\,(u^{prodigy} - \lambda\theta)` (``optax.adamw``'s form)."""
        b1, b2 = self.betas(meta)
        coef = jnp.exp(jnp.clip(meta["log_coef"], -LOG_CLIP, LOG_CLIP))
        rule = prodigy(self.schedule(meta, num_steps), b1, b2, self.eps, self.estim_lr0, coef)
        return _checked(rule, learning_rate, weight_decay, "LearnedProdigy")


__all__ = ["LOG_CLIP", "LearnedProdigy", "ProdigyState", "ScheduledAdam", "check_num_steps", "knot_schedule", "prodigy"]
