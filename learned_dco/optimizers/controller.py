r"""A learned *controller* over Prodigy: per-tensor step multipliers set by a small network
that reads cheap, scale-free training signals.

A fixed learned schedule in :math:`t/T` (:class:`~learned_dco.optimizers.scheduled.LearnedProdigy`)
fits the horizons and scales of its training mixture and cannot react to the problem in
front of it. Here the schedule is a *function of the run*: at every step a network shared
by all tensors reads, for each parameter tensor :math:`i`,

.. math::
    a_i &= \cos(g_i, m_i^{\text{prev}})
        &&\text{gradient agreement with the momentum (oscillation < 0 < steady descent)},\\
    \rho_i &= \lVert m_i \rVert / \sqrt{\textstyle\sum v_i}
        &&\text{signal-to-noise of the gradient, in } [0, 1],\\
    r_i &= \log_{10}\big(\lVert u_i \rVert / (\lVert x_i \rVert + \epsilon_x)\big)
        &&\text{relative size of Prodigy's update (clipped to } [-8, 2]),\\
    n_i &= \log_{10}(\text{size}_i) / 6, \quad \nu_i = [\text{ndim}_i \le 1]
        &&\text{what kind of tensor it is},

and global features (fraction of the run :math:`\min(t/T, 1)`, three saturating clocks
:math:`\tanh(t/\tau)` for :math:`\tau = 10, 100, 1000`, the size-weighted mean agreement
and the growth of Prodigy's distance estimate :math:`\tanh(10 \log(d_t / d_{t-1}))`), and
returns a per-tensor log-multiplier :math:`\ell_i = L\tanh(o_i)` (``max_log_mult`` :math:`L`).
The update of tensor :math:`i` is Prodigy's, scaled: :math:`\exp(\ell_i)\, u_i`.

Every feature is invariant to rescaling the loss by a constant (gradient, momentum and
Prodigy's update are all homogeneous of degree 0 or 1 in the gradient and the ratios cancel
it), and Prodigy itself is, so the controlled optimizer is invariant to the loss's scale:
``tests/test_controller.py`` checks it.

The network's last layer starts at zero, so the untrained controller *is* Prodigy
(multiplier 1 everywhere, optax.contrib.prodigy's defaults): its starting point is the
tuning-free baseline it must beat. Meta-parameters (model-agnostic, any parameter pytree)::

    {"w1": (F, H), "b1": (H,), "w2": (H, H), "b2": (H,), "w3": (H,), "b3": (),
     "b1_logit": (), "b2_logit": (), "log_coef": ()}

with :math:`F` = ``NUM_FEATURES``, :math:`H` = ``hidden``; Prodigy's betas (sigmoids) and its
estimate coefficient :math:`c` (exponential) are learned too.

References: Mishchenko & Defazio (2023), Prodigy; Celo (2025) for a learned scheduler on
global features generalising better than a fixed learned schedule.
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

NUM_TENSOR_FEATURES = 5
NUM_GLOBAL_FEATURES = 6
NUM_FEATURES = NUM_TENSOR_FEATURES + NUM_GLOBAL_FEATURES
CLOCKS = (10.0, 100.0, 1000.0)


class ControllerState(NamedTuple):
    """State of :func:`prodigy_controller`: Prodigy's state and the last multipliers."""

    base: ProdigyState
    log_mult: Params  # per tensor, () in the tensor's dtype: the log-multipliers of the last step


def _cos(a: Array, b: Array) -> Array:
    """Cosine of two tensors, 0 when either is 0 (derivative finite there)."""
    num = jnp.sum(a * b)
    den = safe_sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def tensor_features(grad: Array, m_prev: Array, m: Array, v: Array, update: Array, param: Array) -> Array:
    r"""The ``NUM_TENSOR_FEATURES`` per-tensor features of the module docstring, in float32."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    grad, m_prev, m, v, update, param = map(f32, (grad, m_prev, m, v, update, param))
    sum_v = jnp.sum(v)
    snr = jnp.where(sum_v > 0, safe_sqrt(jnp.sum(m * m)) / safe_sqrt(jnp.where(sum_v > 0, sum_v, 1.0)), 0.0)
    size = max(int(param.size), 1)
    eps_x = 1e-8 * math.sqrt(size)
    ratio = safe_sqrt(jnp.sum(update * update) + 1e-30) / (safe_sqrt(jnp.sum(param * param)) + eps_x)
    rel = jnp.clip(jnp.log10(ratio), -8.0, 2.0) / 4.0
    return jnp.stack([
        _cos(grad, m_prev),
        jnp.minimum(snr, 1.0),
        rel,
        jnp.asarray(math.log10(size) / 6.0, jnp.float32),
        jnp.asarray(float(param.ndim <= 1), jnp.float32),
    ])


def global_features(count: Array, num_steps, agreement: Array, d_prev: Array, d: Array) -> Array:
    r"""The ``NUM_GLOBAL_FEATURES`` global features: progress, clocks, agreement, estimate growth."""
    t = jnp.asarray(count, jnp.float32)
    progress = jnp.minimum(t / jnp.asarray(num_steps, jnp.float32), 1.0)
    clocks = [jnp.tanh(t / tau) for tau in CLOCKS]
    growth = jnp.tanh(10.0 * jnp.log(jnp.asarray(d, jnp.float32) / jnp.asarray(d_prev, jnp.float32)))
    return jnp.stack([progress, *clocks, agreement, growth])


def controller_mlp(meta: MetaParams, features: Array, max_log_mult: float) -> Array:
    r"""Shared network: ``(L, F)`` features -> ``(L,)`` log-multipliers in :math:`(-L, L)`."""
    return max_log_mult * jnp.tanh(mlp_apply(meta, features))


def prodigy_controller(
    meta: MetaParams,
    num_steps,
    *,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    max_log_mult: float = 3.0,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Prodigy whose per-tensor updates are scaled by the controller network of ``meta``
    (module docstring). ``num_steps`` (int or array, traced or not) is the run's budget
    :math:`T`. ``learning_rate`` (number, array or optax schedule) and ``weight_decay``
    act after the controller, :math:`u = \eta\,(e^{\ell_i} u^{prodigy}_i - \lambda\theta_i)`
    (:func:`~learned_dco.optimizers.base.finish`: the state keeps the params' dtypes)."""
    check_num_steps("prodigy_controller", num_steps)
    b1, b2 = jax.nn.sigmoid(meta["b1_logit"]), jax.nn.sigmoid(meta["b2_logit"])
    coef = jnp.exp(jnp.clip(meta["log_coef"], -LOG_CLIP, LOG_CLIP))
    base = prodigy(lambda count: jnp.ones((), jnp.result_type(meta["w3"])), b1, b2, eps, estim_lr0, coef)

    def init_fn(params):
        return ControllerState(base.init(params), jax.tree.map(lambda p: jnp.zeros((), jnp.result_type(p)), params))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("prodigy_controller: update() needs params (Prodigy's estimate uses x_0 - x_t); "
                             "call tx.update(grads, state, params)")
        check_grads("prodigy_controller", grads, params)
        updates, new = base.update(grads, state.base, params)
        leaves = lambda tree: jax.tree.leaves(tree)
        per_tensor = jnp.stack([
            tensor_features(g, mp, m, v, u, p)
            for g, mp, m, v, u, p in zip(leaves(grads), leaves(state.base.exp_avg), leaves(new.exp_avg),
                                         leaves(new.exp_avg_sq), leaves(updates), leaves(params))
        ])
        sizes = jnp.asarray([max(int(p.size), 1) for p in leaves(params)], jnp.float32)
        agreement = jnp.sum(per_tensor[:, 0] * sizes) / jnp.sum(sizes)
        glob = global_features(state.base.count, num_steps, agreement, state.base.estim_lr, new.estim_lr)
        feats = jnp.concatenate([per_tensor, jnp.broadcast_to(glob, (per_tensor.shape[0], glob.shape[0]))], axis=1)
        log_mult = controller_mlp(meta, feats.astype(jnp.result_type(meta["w1"])), max_log_mult)
        treedef = jax.tree.structure(updates)
        scaled = [(jnp.exp(lm) * u).astype(jnp.result_type(u)) for lm, u in zip(log_mult, leaves(updates))]
        log_tree = jax.tree.unflatten(treedef, [lm.astype(jnp.result_type(p)) for lm, p in zip(log_mult, leaves(params))])
        return jax.tree.unflatten(treedef, scaled), ControllerState(new, log_tree)

    return finish(optax.GradientTransformation(init_fn, update_fn), learning_rate=learning_rate,
                  weight_decay=weight_decay, owner="prodigy_controller")


@dataclasses.dataclass(frozen=True)
class ProdigyController:
    r"""Learned optimizer: :func:`prodigy_controller` with meta-learned network, betas and
    estimate coefficient (module docstring). Horizon-aware: ``num_steps`` is the budget it is
    told (a mixture's meta-training tells it each episode's horizon)."""

    num_steps: Any = 1000
    hidden: int = 16
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    estim_lr0: float = 1e-6
    max_log_mult: float = 3.0
    init_scale: float = 0.5

    def __post_init__(self):
        name = type(self).__name__
        check_num_steps(name, self.num_steps)
        positive_int(name, "hidden", self.hidden)
        for field in ("b1", "b2"):
            check_open_unit(name, field, getattr(self, field))
        for field in ("eps", "estim_lr0", "max_log_mult", "init_scale"):
            check_positive(self, field)

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        """Random hidden layers (scaled Gaussian), a zero last layer: the untrained controller is Prodigy."""
        del params
        return {
            **mlp_init(key, NUM_FEATURES, self.hidden, (), self.init_scale),
            "b1_logit": jnp.asarray(logit(self.b1)),
            "b2_logit": jnp.asarray(logit(self.b2)),
            "log_coef": jnp.zeros(()),
        }

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0,
               num_steps: Any = None) -> optax.GradientTransformationExtraArgs:
        """:func:`prodigy_controller` of ``meta`` told ``num_steps`` (default: the field)."""
        return prodigy_controller(meta, self.num_steps if num_steps is None else num_steps, eps=self.eps,
                                  estim_lr0=self.estim_lr0, max_log_mult=self.max_log_mult,
                                  learning_rate=learning_rate, weight_decay=weight_decay)


__all__ = ["ControllerState", "NUM_FEATURES", "ProdigyController", "controller_mlp", "global_features",
           "prodigy_controller", "tensor_features"]
