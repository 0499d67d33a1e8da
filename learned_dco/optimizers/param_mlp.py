r"""A per-parameter learned optimizer over Prodigy, with normalised inputs and a small,
bounded output (in the style of small_fc_lopt / Celo2).

A tiny MLP shared by every scalar parameter reads features of that parameter that do not
depend on the scale of the loss, and returns two numbers: a log-magnitude :math:`s_j` and a
direction :math:`\delta_j`. With Prodigy's update :math:`u_j` (Adam's direction scaled by
Prodigy's distance estimate, :func:`~learned_dco.optimizers.scheduled.prodigy`) and its
current step size :math:`\lambda_t = d_{t-1}\sqrt{1-\beta_2^t}/(1-\beta_1^t)`:

.. math::
    \Delta\theta_j = e^{L\tanh s_j}\,u_j \;-\; \alpha\,\lambda_t \tanh\delta_j ,

so the learned part can rescale each coordinate's Prodigy step by at most :math:`e^{\pm L}`
and add a bounded extra move of at most :math:`\alpha` Prodigy steps (``max_log_mult``
:math:`L`, ``direction_scale`` :math:`\alpha`). The network's last layer starts at zero, so
the untrained optimizer *is* Prodigy (optax.contrib.prodigy's defaults).

Per-parameter inputs (``NUM_PARAM_FEATURES``), every one clipped to :math:`[-C, C]`,
:math:`C` = ``feature_clip``; with Prodigy's :math:`m, v` (moments of :math:`d\,g`) and a
slow momentum :math:`m^{s} \leftarrow 0.99\,m^{s} + 0.01\,d\,g`:

.. math::
    \frac{d\,g_j}{\sqrt{v_j}+d\epsilon},\quad \frac{m_j}{\sqrt{v_j}+d\epsilon},\quad
    \frac{m^{s}_j}{\sqrt{v_j}+d\epsilon},\quad
    \frac{\theta_j}{\mathrm{rms}(\theta)+10^{-8}}

(the first three are Adam-normalised gradient and momenta at two timescales, scale-free in
the loss; the last is the parameter normalised over its tensor), and the per-tensor and
global inputs :math:`\log_{10}(\text{size})/6`, :math:`\min(t/T, 1)` and
:math:`\tanh(t/\tau)` for :math:`\tau = 10, 100, 1000`. Meta-parameters (model-agnostic)::

    {"w1": (F, H), "b1": (H,), "w2": (H, H), "b2": (H,), "w3": (H, 2), "b3": (2,),
     "b1_logit": (), "b2_logit": (), "log_coef": ()}

References: Metz et al. (2022), *Practical tradeoffs between memory, compute, and
performance in learned optimizers* (small_fc_lopt); Therien et al. (2025), Celo2 (a
per-parameter MLP with normalised inputs and a small output scale); Mishchenko & Defazio
(2023), Prodigy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_dco.optimizers.base import check_grads, finish, safe_sqrt
from learned_dco.optimizers.nets import check_open_unit, logit, mlp_apply, mlp_init
from learned_dco.optimizers.scheduled import LOG_CLIP, ProdigyState, check_num_steps, prodigy
from learned_dco.types import Array, MetaParams, Params, PRNGKey
from learned_dco.validation import check_positive, positive_int

NUM_PARAM_FEATURES = 4
NUM_SHARED_FEATURES = 5
NUM_FEATURES = NUM_PARAM_FEATURES + NUM_SHARED_FEATURES
CLOCKS = (10.0, 100.0, 1000.0)
SLOW_BETA = 0.99


class ParamMLPState(NamedTuple):
    """State of :func:`prodigy_param_mlp`: Prodigy's state and the slow momentum of :math:`d\\,g`."""

    base: ProdigyState
    slow: Params


def param_features(g: Array, m: Array, slow: Array, v: Array, p: Array, d: Array, eps: float, clip: float) -> Array:
    """The ``NUM_PARAM_FEATURES`` per-parameter inputs of one tensor, shape ``p.shape + (4,)``, float32."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    g, m, slow, v, p, d = map(f32, (g, m, slow, v, p, d))
    den = safe_sqrt(v) + d * eps
    den = jnp.where(den > 0, den, 1.0)
    rms_p = safe_sqrt(jnp.mean(p * p))
    feats = jnp.stack([d * g / den, m / den, slow / den, p / (rms_p + 1e-8)], axis=-1)
    return jnp.clip(feats, -clip, clip)


def shared_features(size: int, count: Array, num_steps) -> Array:
    """The ``NUM_SHARED_FEATURES`` inputs common to a tensor: log size, progress, clocks."""
    t = jnp.asarray(count, jnp.float32)
    progress = jnp.minimum(t / jnp.asarray(num_steps, jnp.float32), 1.0)
    return jnp.stack([jnp.asarray(math.log10(max(size, 1)) / 6.0, jnp.float32), progress,
                      *[jnp.tanh(t / tau) for tau in CLOCKS]])


def param_mlp(meta: MetaParams, features: Array) -> tuple[Array, Array]:
    """Shared network on ``(..., F)`` inputs -> (log-magnitude, direction) pre-activations."""
    out = mlp_apply(meta, features)
    return out[..., 0], out[..., 1]


def prodigy_param_mlp(
    meta: MetaParams,
    num_steps,
    *,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    max_log_mult: float = 2.0,
    direction_scale: float = 0.1,
    feature_clip: float = 10.0,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Prodigy with a per-parameter learned correction (module docstring); ``num_steps`` is
    the budget :math:`T` (int or array, traced or not); ``learning_rate`` and ``weight_decay``
    act after the network (:func:`~learned_dco.optimizers.base.finish`)."""
    check_num_steps("prodigy_param_mlp", num_steps)
    b1, b2 = jax.nn.sigmoid(meta["b1_logit"]), jax.nn.sigmoid(meta["b2_logit"])
    coef = jnp.exp(jnp.clip(meta["log_coef"], -LOG_CLIP, LOG_CLIP))
    base = prodigy(lambda count: jnp.ones((), jnp.result_type(meta["w3"])), b1, b2, eps, estim_lr0, coef)
    net_dtype = jnp.result_type(meta["w1"])

    def init_fn(params):
        return ParamMLPState(base.init(params), jax.tree.map(jnp.zeros_like, params))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("prodigy_param_mlp: update() needs params (Prodigy's estimate uses x_0 - x_t); "
                             "call tx.update(grads, state, params)")
        check_grads("prodigy_param_mlp", grads, params)
        updates, new = base.update(grads, state.base, params)
        d = state.base.estim_lr
        count = new.count
        lam = d * (1 - b2**count) ** 0.5 / (1 - b1**count)
        slow = jax.tree.map(lambda s, g: SLOW_BETA * s + (1 - SLOW_BETA) * d * g, state.slow, grads)

        def one(g, m, sl, v, p, u):
            feats = param_features(g, m, sl, v, p, d, eps, feature_clip)
            shared = jnp.broadcast_to(shared_features(int(p.size), state.base.count, num_steps),
                                      feats.shape[:-1] + (NUM_SHARED_FEATURES,))
            mag, direction = param_mlp(meta, jnp.concatenate([feats, shared], axis=-1).astype(net_dtype))
            out = jnp.exp(max_log_mult * jnp.tanh(mag)) * u - direction_scale * lam * jnp.tanh(direction)
            return out.astype(jnp.result_type(u))

        out = jax.tree.map(one, grads, new.exp_avg, slow, new.exp_avg_sq, params, updates)
        return out, ParamMLPState(new, slow)

    return finish(optax.GradientTransformation(init_fn, update_fn), learning_rate=learning_rate,
                  weight_decay=weight_decay, owner="prodigy_param_mlp")


@dataclasses.dataclass(frozen=True)
class ProdigyParamMLP:
    r"""Learned optimizer: :func:`prodigy_param_mlp` with a meta-learned per-parameter network,
    betas and estimate coefficient (module docstring). Horizon-aware: ``num_steps`` is the
    budget it is told."""

    num_steps: Any = 1000
    hidden: int = 8
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    estim_lr0: float = 1e-6
    max_log_mult: float = 2.0
    direction_scale: float = 0.1
    feature_clip: float = 10.0
    init_scale: float = 0.5

    def __post_init__(self):
        name = type(self).__name__
        check_num_steps(name, self.num_steps)
        positive_int(name, "hidden", self.hidden)
        for field in ("b1", "b2"):
            check_open_unit(name, field, getattr(self, field))
        for field in ("eps", "estim_lr0", "max_log_mult", "direction_scale", "feature_clip", "init_scale"):
            check_positive(self, field)

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        """Random hidden layers (scaled Gaussian), a zero last layer: the untrained optimizer is Prodigy."""
        del params
        return {
            **mlp_init(key, NUM_FEATURES, self.hidden, (2,), self.init_scale),
            "b1_logit": jnp.asarray(logit(self.b1)),
            "b2_logit": jnp.asarray(logit(self.b2)),
            "log_coef": jnp.zeros(()),
        }

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0,
               num_steps: Any = None) -> optax.GradientTransformationExtraArgs:
        """:func:`prodigy_param_mlp` of ``meta`` told ``num_steps`` (default: the field)."""
        return prodigy_param_mlp(meta, self.num_steps if num_steps is None else num_steps, eps=self.eps,
                                 estim_lr0=self.estim_lr0, max_log_mult=self.max_log_mult,
                                 direction_scale=self.direction_scale, feature_clip=self.feature_clip,
                                 learning_rate=learning_rate, weight_decay=weight_decay)


__all__ = ["NUM_FEATURES", "ParamMLPState", "ProdigyParamMLP", "param_features", "param_mlp",
           "prodigy_param_mlp", "shared_features"]
