r"""A model-agnostic learned DCO step: DCOM whose per-tensor curvature :math:`\Lambda_i` and
momentum weight :math:`M_i` come from a small network shared by all tensors.

DCOM (Gautam, Pfrommer & Sojoudi, eqs. 15-16; :func:`~learned_dco.optimizers.dco.dcom_transform`)
takes the step

.. math::
    s^+_i = M_i\, g_i + (1 - M_i)\, s_i, \qquad
    \theta^+_i = \arg\min_\theta\, (s^+_i)^\top \theta + \tfrac12 \Lambda_i^2
        \lVert\theta - \theta_{t,i}\rVert^2 = \theta_{t,i} - s^+_i / \Lambda_i^2

with :math:`\Lambda, M` stored per task family. Here they are *outputs*: for every parameter
tensor :math:`i` a network reads scale-free features and returns :math:`(\ell_i, \mu_i)`, and

.. math::
    \Lambda_i^2 = e^{-L\tanh \ell_i}\, \frac{\sqrt{G_i}}{\bar r_i}, \qquad
    M_i = \sigma(\mu_0 + \mu_i),

where :math:`\bar r_i = \max(r_\epsilon (1 + \lVert x_{0,i}\rVert), \max_{k\le t}\lVert
x_{k,i} - x_{0,i}\rVert)` is the tensor's distance from its start and :math:`G_i = \sum_{k\le
t} \lVert g_{k,i}\rVert^2` (layer-wise DoG's scale, Ivgi, Hinder & Carmon 2023). The step is
therefore :math:`e^{L\tanh \ell_i}\, \bar r_i\, s^+_i / \sqrt{G_i}`: invariant to the scale of
the loss, equivariant to the scale of the parameters, with no learning rate to tune. The last
layer starts at zero, so the untrained rule is layer-wise DoG with momentum
:math:`1 - \sigma(\mu_0)` (0.9 by default).

Per-tensor features (``NUM_FEATURES``): gradient agreement :math:`\cos(g_i, s_i)`, the
growth of :math:`\bar r_i` in this step :math:`\tanh(10\log(\bar r_i / \bar r_i^{prev}))`, the
relative distance :math:`\log_{10}(\bar r_i / (\lVert x_i \rVert + 10^{-8}))/4` (clipped to
:math:`[-2, 0.5]`), :math:`\log_{10}(\text{size}_i)/6`, :math:`[\text{ndim}_i \le 1]`, and the
global progress :math:`\min(t/T, 1)`, clocks :math:`\tanh(t/\tau)` (:math:`\tau = 10, 100,
1000`) and the size-weighted mean agreement. Meta-parameters::

    {"w1": (F, H), "b1": (H,), "w2": (H, H), "b2": (H,), "w3": (H, 2), "b3": (2,), "m_logit": ()}
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
from learned_dco.optimizers.scheduled import check_num_steps
from learned_dco.types import Array, MetaParams, Params, PRNGKey
from learned_dco.validation import check_positive, positive_int

NUM_FEATURES = 10
CLOCKS = (10.0, 100.0, 1000.0)


class DCOControllerState(NamedTuple):
    """State of :func:`dcom_controller` (per-tensor quantities are ``()`` leaves)."""

    momentum: Params  # s, like params
    params0: Params  # x_0
    rbar: Params  # per tensor: max distance from x_0 so far (floored at r_eps (1 + |x_0|))
    grad_sq_sum: Params  # per tensor: G = sum of squared gradient norms
    count: Array


def _up(x: Array) -> Array:
    """``x`` in float32 or wider (float16/bfloat16 are upcast, float64 is kept)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _norm(x: Array) -> Array:
    return safe_sqrt(jnp.sum(jnp.square(_up(x))))


def _cos(a: Array, b: Array) -> Array:
    a, b = _up(a), _up(b)
    den = safe_sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.where(den > 0, jnp.sum(a * b) / jnp.where(den > 0, den, 1.0), 0.0)


def dco_net(meta: MetaParams, features: Array) -> tuple[Array, Array]:
    """Shared network: ``(L, F)`` features -> per-tensor (curvature logit, momentum logit)."""
    out = mlp_apply(meta, features)
    return out[:, 0], out[:, 1]


def dcom_controller(
    meta: MetaParams,
    num_steps,
    *,
    r_eps: float = 1e-4,
    max_log_mult: float = 3.0,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""DCOM with network-set per-tensor :math:`\Lambda_i, M_i` (module docstring);
    ``num_steps`` is the budget :math:`T` (int or array, traced or not)."""
    check_num_steps("dcom_controller", num_steps)
    net_dtype = jnp.result_type(meta["w1"])

    def init_fn(params):
        scalar = lambda x: jnp.zeros((), jnp.result_type(x))
        rbar0 = jax.tree.map(lambda p: (r_eps * (1.0 + _norm(p))).astype(jnp.result_type(p)), params)
        return DCOControllerState(jax.tree.map(jnp.zeros_like, params), params, rbar0,
                                  jax.tree.map(scalar, params), jnp.zeros((), jnp.int32))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("dcom_controller: update() needs params (its scale is the distance from x_0); "
                             "call tx.update(grads, state, params)")
        check_grads("dcom_controller", grads, params)
        leaves = jax.tree.leaves
        treedef = jax.tree.structure(params)
        gs, ss, ps, p0s = leaves(grads), leaves(state.momentum), leaves(params), leaves(state.params0)
        rbar_prev, gsq_prev = leaves(state.rbar), leaves(state.grad_sq_sum)
        rbar = [jnp.maximum(_up(r), _norm(_up(p) - _up(p0)))
                for r, p, p0 in zip(rbar_prev, ps, p0s)]
        gsq = [_up(G) + jnp.sum(jnp.square(_up(g))) for G, g in zip(gsq_prev, gs)]
        agree = [_cos(g, s) for g, s in zip(gs, ss)]
        agree = jnp.stack(agree)
        sizes = jnp.asarray([max(int(p.size), 1) for p in ps], agree.dtype)
        mean_agree = jnp.sum(agree * sizes) / jnp.sum(sizes)
        t = jnp.asarray(state.count, agree.dtype)
        glob = jnp.stack([jnp.minimum(t / jnp.asarray(num_steps, t.dtype), 1.0),
                          *[jnp.tanh(t / tau) for tau in CLOCKS], mean_agree])
        per = []
        for a, r, r0, p in zip(agree, rbar, rbar_prev, ps):
            growth = jnp.tanh(10.0 * jnp.log(r / _up(r0)))
            rel = jnp.clip(jnp.log10(r / (_norm(p) + 1e-8)), -8.0, 2.0) / 4.0
            per.append(jnp.stack([a, growth, rel, jnp.asarray(math.log10(max(int(p.size), 1)) / 6.0, a.dtype),
                                  jnp.asarray(float(p.ndim <= 1), a.dtype)]))
        feats = jnp.concatenate([jnp.stack(per), jnp.broadcast_to(glob, (len(per), glob.shape[0]))], axis=1)
        curv, mom = dco_net(meta, feats.astype(net_dtype))
        weight = jax.nn.sigmoid(meta["m_logit"] + mom)
        out, new_s = [], []
        for i, (g, s, r, G) in enumerate(zip(gs, ss, rbar, gsq)):
            s_new = weight[i] * g + (1 - weight[i]) * s
            lam_sq = jnp.exp(-max_log_mult * jnp.tanh(curv[i])) * safe_sqrt(G) / r
            lam_sq = jnp.where(lam_sq > 0, lam_sq, 1.0)
            out.append((-s_new / lam_sq).astype(jnp.result_type(g)))
            new_s.append(s_new.astype(jnp.result_type(s)))
        unflat = lambda xs, like: jax.tree.unflatten(treedef, [jnp.asarray(x, jnp.result_type(y)) for x, y in zip(xs, like)])
        new_state = DCOControllerState(jax.tree.unflatten(treedef, new_s), state.params0, unflat(rbar, rbar_prev),
                                       unflat(gsq, gsq_prev), state.count + 1)
        return jax.tree.unflatten(treedef, out), new_state

    return finish(optax.GradientTransformation(init_fn, update_fn), learning_rate=learning_rate,
                  weight_decay=weight_decay, owner="dcom_controller")


@dataclasses.dataclass(frozen=True)
class DCOController:
    r"""Learned optimizer: :func:`dcom_controller` with a meta-learned network and base
    momentum weight (module docstring). Horizon-aware: ``num_steps`` is the budget it is told."""

    num_steps: Any = 1000
    hidden: int = 16
    momentum: float = 0.9
    r_eps: float = 1e-4
    max_log_mult: float = 3.0
    init_scale: float = 0.5

    def __post_init__(self):
        name = type(self).__name__
        check_num_steps(name, self.num_steps)
        positive_int(name, "hidden", self.hidden)
        check_open_unit(name, "momentum", self.momentum)
        for field in ("r_eps", "max_log_mult", "init_scale"):
            check_positive(self, field)

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        """Random hidden layers, a zero last layer: the untrained rule is layer-wise DoG with momentum."""
        del params
        return {
            **mlp_init(key, NUM_FEATURES, self.hidden, (2,), self.init_scale),
            "m_logit": jnp.asarray(logit(1 - self.momentum)),
        }

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0,
               num_steps: Any = None) -> optax.GradientTransformationExtraArgs:
        """:func:`dcom_controller` of ``meta`` told ``num_steps`` (default: the field)."""
        return dcom_controller(meta, self.num_steps if num_steps is None else num_steps, r_eps=self.r_eps,
                               max_log_mult=self.max_log_mult, learning_rate=learning_rate,
                               weight_decay=weight_decay)


__all__ = ["DCOController", "DCOControllerState", "dco_net", "dcom_controller"]
