r"""Per-parameter input features of the small MLP learned optimizers (Blackbox, Hyperparam, STAR).

Harrison, Metz & Sohl-Dickstein, "A Closer Look at Learned Optimization" (2022), Sec. 5.2,
build on the ``small_fc_lopt`` optimizer of Metz et al. (2022, App. A): a tiny MLP applied
to every scalar parameter independently, fed with features that summarise that parameter's
gradient history through exponential moving averages (stable-by-design hidden states, STAR
Sec. 4.4/5.1) and with tensor-level information through Adafactor-style factored second
moments (Shazeer & Stern, 2018). This module computes those features; the learned
optimizers in :mod:`learned_dco.optimizers.star` apply the MLP to them.

Accumulators (per parameter tensor ``p`` with gradient ``g``, all starting at zero, no bias
correction -- the per-tensor normalisation below removes their scale):

* momenta  :math:`m_k \leftarrow \beta_k m_k + (1-\beta_k) g` for the ``K_m`` momentum decays
  (default 0.9, 0.99, 0.999);
* rms      :math:`v \leftarrow \beta_v v + (1-\beta_v) g^2` (default 0.999);
* factored, for each of the ``K_f`` Adafactor decays (default 0.9, 0.99, 0.999), with
  :math:`G = g^2 + 10^{-30}`:

  - rank >= 2 (factored over the **last two axes**, rows ``r`` = axis -2, columns ``c`` =
    axis -1; leading axes, e.g. a conv kernel's spatial axes, are batch axes):
    :math:`R \leftarrow \beta R + (1-\beta)\,\mathrm{mean}_c G`,
    :math:`C \leftarrow \beta C + (1-\beta)\,\mathrm{mean}_r G`; Adafactor's estimate of the
    elementwise second moment is :math:`\hat V_{rc} = R_r C_c / \mathrm{mean}_r R_r`;
  - rank < 2 (scalars, vectors): an unfactored :math:`F \leftarrow \beta F + (1-\beta) G`,
    used in place of both ``R`` and ``C`` (so the feature count does not depend on rank).

Features (in this order, 28 per accumulator setting with the default 3/1/3 decays; let
:math:`\rho(x) = (x + 10^{-8})^{-1/2}`, :math:`\rho_s(x) = \max(x, 10^{-9})^{-1/2}`):

==========  =====  ==================================================================
name        count  value
==========  =====  ==================================================================
grad        1      :math:`g`
param       1      :math:`p`
momentum    K_m    :math:`m_k`
rms         1      :math:`v`
adam        K_m    :math:`m_k\,\rho(v)`
rsqrt_rms   1      :math:`\rho(v)`
fac_grad    K_f    :math:`g\,\hat V^{-1/2}` (rank >= 2: :math:`g\,\rho_s(R_r/\bar R)\rho_s(C_c)`;
                   rank < 2: :math:`g\,\rho_s(F + 10^{-9})`)
row         K_f    :math:`R_r` broadcast over columns (rank < 2: ``F``)
col         K_f    :math:`C_c` broadcast over rows (rank < 2: ``F``)
rsqrt_row   K_f    :math:`\rho(R_r)` (rank < 2: :math:`\rho(F)`)
rsqrt_col   K_f    :math:`\rho(C_c)` (rank < 2: :math:`\rho(F)`)
fac_mom     K_f    :math:`m_k\,\rho_s(R_r/\bar R)\rho_s(C_c)` pairing momentum ``k`` with
                   factored decay ``k`` (needs ``K_m == K_f``); rank < 2:
                   :math:`m_k\,(F_k + 10^{-6})^{-1/2}`
==========  =====  ==================================================================

Each feature channel is then normalised over the entries of its tensor by its second
moment, :math:`x \mapsto x / \sqrt{\epsilon + \mathrm{mean}(x^2)}` (``feature_eps``
default :math:`10^{-5}`, learned_optimization's value: it is *not* negligible for
channels with tiny entries, which leaks some absolute scale into the otherwise
scale-free features), and 11 un-normalised time features
:math:`\tanh(t/\tau - 1)`, :math:`\tau \in \{1, 3, 10, \dots, 10^5\}` (``t`` = updates
taken before this one) are appended: 39 inputs in total.

Everything here is a pure function of arrays; shapes and dtypes of the state never change
(parameters of any rank, including scalars and conv kernels).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.types import Array, Params, PyTree

tree_map = jax.tree.map

TIME_SCALES: tuple[float, ...] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
"""Time constants :math:`\\tau` of the ``tanh(t/tau - 1)`` step features."""

RSQRT_EPS = 1e-8  # rho(x) = (x + RSQRT_EPS)^(-1/2) in the rsqrt features
SAFE_MIN = 1e-9  # rho_s(x) = max(x, SAFE_MIN)^(-1/2) in the Adafactor preconditioners
GRAD_SQ_EPS = 1e-30  # added to g^2 before the factored means (all-zero rows stay finite)
FAC_MOM_EPS = 1e-6  # unfactored fac_mom: m (F + FAC_MOM_EPS)^(-1/2)


def feature_names(num_momenta: int = 3, num_factored: int = 3) -> tuple[str, ...]:
    """Names of the normalised features, then the time features, in input order."""
    k_m = [f"momentum_{k}" for k in range(num_momenta)]
    k_f = lambda base: [f"{base}_{k}" for k in range(num_factored)]
    names = (
        ["grad", "param", *k_m, "rms", *[f"adam_{k}" for k in range(num_momenta)], "rsqrt_rms"]
        + k_f("fac_grad") + k_f("row") + k_f("col") + k_f("rsqrt_row") + k_f("rsqrt_col") + k_f("fac_mom")
    )
    return tuple(names) + tuple(f"time_{int(t)}" for t in TIME_SCALES)


def num_features(num_momenta: int = 3, num_factored: int = 3) -> int:
    """Number of MLP inputs: ``2 + 2 K_m + 2 + 6 K_f`` normalised plus 11 time features."""
    return 4 + 2 * num_momenta + 6 * num_factored + len(TIME_SCALES)


class AdafacState(NamedTuple):
    """Accumulators shared by the MLP learned optimizers (leaves follow the params tree).

    For a parameter of shape ``S`` (``K_m`` momenta, ``K_f`` factored decays):
    """

    momentum: PyTree  # S + (K_m,) EMAs of g
    rms: PyTree  # S, EMA of g^2
    fac_row: PyTree  # rank >= 2: S[:-1] + (K_f,); rank < 2: (0,) (unused)
    fac_col: PyTree  # rank >= 2: S[:-2] + S[-1:] + (K_f,); rank < 2: (0,) (unused)
    fac_full: PyTree  # rank < 2: S + (K_f,); rank >= 2: (0,) (unused)
    count: Array  # int32: updates taken


def factored(p) -> bool:
    """Whether a parameter gets row/column factored accumulators (rank >= 2)."""
    return jnp.ndim(p) >= 2


def init_state(params: Params, num_momenta: int, num_factored: int) -> AdafacState:
    """All-zero accumulators with the documented shapes, in each parameter's dtype."""

    def zeros(shape, p):
        return jnp.zeros(shape, jnp.result_type(p))

    def row(p):
        s = jnp.shape(p)
        return zeros(s[:-1] + (num_factored,), p) if factored(p) else zeros((0,), p)

    def col(p):
        s = jnp.shape(p)
        return zeros(s[:-2] + s[-1:] + (num_factored,), p) if factored(p) else zeros((0,), p)

    def full(p):
        return zeros((0,), p) if factored(p) else zeros(jnp.shape(p) + (num_factored,), p)

    return AdafacState(
        momentum=tree_map(lambda p: zeros(jnp.shape(p) + (num_momenta,), p), params),
        rms=tree_map(lambda p: zeros(jnp.shape(p), p), params),
        fac_row=tree_map(row, params),
        fac_col=tree_map(col, params),
        fac_full=tree_map(full, params),
        count=jnp.zeros((), jnp.int32),
    )


def _ema(acc: Array, new: Array, decay: Array) -> Array:
    decay = decay.astype(acc.dtype)
    return decay * acc + (1 - decay) * new


def update_state(
    state: AdafacState, grads: Params, momentum_decays: Array, rms_decay: Array, factored_decays: Array
) -> AdafacState:
    """One step of every accumulator (decays may be traced meta-parameters)."""

    def row(r, g):
        if not factored(g):
            return r
        return _ema(r, jnp.mean(jnp.square(g) + GRAD_SQ_EPS, axis=-1)[..., None], factored_decays)

    def col(c, g):
        if not factored(g):
            return c
        return _ema(c, jnp.mean(jnp.square(g) + GRAD_SQ_EPS, axis=-2)[..., None], factored_decays)

    def full(f, g):
        if factored(g):
            return f
        return _ema(f, (jnp.square(g) + GRAD_SQ_EPS)[..., None], factored_decays)

    return AdafacState(
        momentum=tree_map(lambda m, g: _ema(m, g[..., None], momentum_decays), state.momentum, grads),
        rms=tree_map(lambda v, g: _ema(v, jnp.square(g), rms_decay), state.rms, grads),
        fac_row=tree_map(row, state.fac_row, grads),
        fac_col=tree_map(col, state.fac_col, grads),
        fac_full=tree_map(full, state.fac_full, grads),
        count=state.count + 1,
    )


def _rho(x: Array) -> Array:
    return jax.lax.rsqrt(x + RSQRT_EPS)


def _rho_safe(x: Array) -> Array:
    return jax.lax.rsqrt(jnp.maximum(x, SAFE_MIN))


def raw_features(p: Array, g: Array, m: Array, v: Array, row: Array, col: Array, full: Array) -> Array:
    """The un-normalised features of one tensor, shape ``p.shape + (F,)`` (module table).

    ``m``, ``v``, ``row``, ``col``, ``full`` are the *updated* accumulators of this tensor.
    """
    num_momenta, num_factored = m.shape[-1], (row if factored(p) else full).shape[-1]
    if num_momenta != num_factored:
        raise ValueError(
            f"the fac_mom features pair momentum k with factored decay k: need as many "
            f"momentum decays ({num_momenta}) as adafactor decays ({num_factored})"
        )
    gx, px, vx = g[..., None], p[..., None], v[..., None]
    rsqrt_v = _rho(vx)
    if factored(p):
        # row: (..., r, K) -> broadcast over columns; col: (..., c, K) -> over rows.
        row_b = jnp.broadcast_to(row[..., :, None, :], m.shape)
        col_b = jnp.broadcast_to(col[..., None, :, :], m.shape)
        row_factor = _rho_safe(row / (jnp.mean(row, axis=-2, keepdims=True) + SAFE_MIN))
        precond = row_factor[..., :, None, :] * _rho_safe(col)[..., None, :, :]
        fac_grad = gx * precond
        fac_mom = m * precond
    else:
        row_b = col_b = full
        fac_grad = gx * _rho_safe(full + SAFE_MIN)
        fac_mom = m * jax.lax.rsqrt(full + FAC_MOM_EPS)
    parts = [gx, px, m, vx, m * rsqrt_v, rsqrt_v, fac_grad, row_b, col_b, _rho(row_b), _rho(col_b), fac_mom]
    return jnp.concatenate([jnp.broadcast_to(x, p.shape + x.shape[-1:]) for x in parts], axis=-1)


def normalize(features: Array, eps: float) -> Array:
    r"""Per-channel second-moment normalisation over a tensor's entries:
    :math:`x / \sqrt{\epsilon + \mathrm{mean}(x^2)}` (the last axis holds the channels)."""
    axes = tuple(range(features.ndim - 1))
    return features * jax.lax.rsqrt(eps + jnp.mean(jnp.square(features), axis=axes, keepdims=True))


def time_features(count: Array, dtype=jnp.float32) -> Array:
    r""":math:`\tanh(t/\tau - 1)` for every :math:`\tau` in :data:`TIME_SCALES`, shape ``(11,)``."""
    t = jnp.asarray(count).astype(dtype)
    return jnp.tanh(t / jnp.asarray(TIME_SCALES, dtype) - 1.0)


def tensor_inputs(
    p: Array, g: Array, m: Array, v: Array, row: Array, col: Array, full: Array, count: Array, feature_eps: float
) -> Array:
    """The MLP inputs of one tensor: normalised features then time features, ``p.shape + (39,)``."""
    feats = normalize(raw_features(p, g, m, v, row, col, full), feature_eps)
    t = jnp.broadcast_to(time_features(count, feats.dtype), p.shape + (len(TIME_SCALES),))
    return jnp.concatenate([feats, t], axis=-1)


# --- the per-parameter MLP ---------------------------------------------------------------


def _truncated_normal(key, shape, dtype) -> Array:
    # A standard normal truncated to [-2, 2] has std 0.87962566; rescale to unit std.
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) / 0.87962566


def dense_init(key, fan_in: int, fan_out: int, dtype, bias_std: float = 0.0) -> dict[str, Array]:
    """Kernel truncated normal (at 2 std) with standard deviation ``1 / sqrt(fan_in)`` (as in
    learned_optimization's small MLP optimizers); bias truncated normal with standard
    deviation ``bias_std`` (0: zero bias, learned_optimization's choice).

    The hidden layers use ``bias_std > 0``: with zero biases, a unit of the second layer
    whose inputs are all inactive sits *exactly* on the ReLU kink, so the meta-loss is not
    differentiable at the initial meta-parameters (one-sided finite differences disagree
    with ``jax.grad``); a random bias moves every unit off the kink.
    """
    k_w, k_b = jax.random.split(key)
    w = _truncated_normal(k_w, (fan_in, fan_out), dtype) / fan_in**0.5
    b = bias_std * _truncated_normal(k_b, (fan_out,), dtype) if bias_std else jnp.zeros((fan_out,), dtype)
    return {"w": w, "b": b}


def trunk_apply(trunk: Sequence[dict[str, Array]], x: Array) -> Array:
    """The hidden layers: ``x <- relu(x @ w + b)`` for each layer."""
    for layer in trunk:
        x = jax.nn.relu(x @ layer["w"].astype(x.dtype) + layer["b"].astype(x.dtype))
    return x


def head_apply(head: dict[str, Array], h: Array) -> Array:
    """One scalar output head (linear): ``h @ w + b`` with ``w: (width,)``, ``b: ()``."""
    return h @ head["w"].astype(h.dtype) + head["b"].astype(h.dtype)


# --- lean path: the first layer without the (n, 39) feature tensor -------------------------
#
# The MLP's first layer is linear in the normalised features, so for one tensor
#
#   W1^T x + b1 = sum_j (s_j W1[j]) f_j + (b1 + W1[time]^T tau(t)),   s_j = (eps + mean f_j^2)^(-1/2),
#
# with f_j the raw channels of the module table: the per-tensor normalisation folds into
# the rows of W1 (28 scalars per tensor) and the time features, constant over a tensor,
# into the bias. Each channel is produced in its natural, un-broadcast shape -- a factored
# tensor's row channels have shape (..., r, 1), its column channels (..., 1, c). The 12 row
# and column channels enter as two small matmuls, (..., r, 6) @ (6, width) and
# (..., c, 6) @ (6, width), whose results are broadcast-added, and their second moments are
# means over r (or c) entries; only the 16 per-entry channels are multiplied in per entry.
# XLA fuses those channels, the weighted sum and the rest of the per-parameter MLP into a few
# loops per tensor: nothing of size n x 39 is written to memory. (Adding the row/column
# channels per entry instead costs 96 of the ~250 flops per entry; on XLA:CPU the split
# form is 1.2-1.4x faster, benchmarks/lopt_update.py.)


def channels(p: Array, g: Array, m: Array, v: Array, row: Array, col: Array, full: Array) -> list[Array]:
    """The raw channels of :func:`raw_features` (same order, same values), each in a shape that
    broadcasts to ``p.shape`` without being broadcast: row channels of a factored tensor are
    ``(..., r, 1)``, column channels ``(..., 1, c)``, the others ``p.shape``."""
    num_momenta, num_factored = m.shape[-1], (row if factored(p) else full).shape[-1]
    if num_momenta != num_factored:
        raise ValueError(
            f"the fac_mom features pair momentum k with factored decay k: need as many "
            f"momentum decays ({num_momenta}) as adafactor decays ({num_factored})"
        )
    # Each transcendental is evaluated once on a whole (..., K) array and then sliced: XLA
    # keeps an rsqrt used by two loops (the moments and the first layer) in memory rather
    # than recompute it, and one array per kind is one loop instead of K.
    rsqrt_v = _rho(v)
    adam = m * rsqrt_v[..., None]
    if factored(p):
        row_b, col_b = row[..., :, None, :], col[..., None, :, :]  # (..., r, 1, K), (..., 1, c, K)
        row_factor = _rho_safe(row / (jnp.mean(row, axis=-2, keepdims=True) + SAFE_MIN))
        precond = row_factor[..., :, None, :] * _rho_safe(col)[..., None, :, :]
        fac_grad, fac_mom = g[..., None] * precond, m * precond
    else:
        row_b = col_b = full
        fac_grad = g[..., None] * _rho_safe(full + SAFE_MIN)
        fac_mom = m * jax.lax.rsqrt(full + FAC_MOM_EPS)
    rsqrt_row = _rho(row_b)
    rsqrt_col = rsqrt_row if col_b is row_b else _rho(col_b)
    split = lambda a: [a[..., k] for k in range(num_momenta)]
    return (
        [g, p, *split(m), v, *split(adam), rsqrt_v, *split(fac_grad), *split(row_b), *split(col_b)]
        + split(rsqrt_row) + split(rsqrt_col) + split(fac_mom)
    )


def second_moments(chans: Sequence[Array], shape: tuple[int, ...]) -> Array:
    """``mean(x^2)`` of each channel over a tensor of ``shape`` (channels broadcast to it),
    shape ``(C,)``, in one pass (:func:`_sum_squares`)."""
    sums = _sum_squares(tuple(jnp.broadcast_to(x, shape) for x in chans))
    return jnp.stack(sums) / math.prod(shape)


@jax.custom_jvp
def _sum_squares(xs: tuple[Array, ...]) -> tuple[Array, ...]:
    """``tuple(sum(x**2) for x in xs)`` (equal shapes) as ONE variadic XLA reduction: XLA
    fuses the channels into a single loop over the tensor, where 28 separate sums (or a sum
    over their stack) run as 28 loops (or store the stack) on CPU. JAX cannot differentiate
    a variadic reduction, hence the explicit JVP (linear in the tangents, so reverse mode
    transposes it into elementwise products, no reductions)."""
    if not xs[0].ndim:
        return tuple(jnp.square(x) for x in xs)
    zero = tuple(jnp.zeros((), x.dtype) for x in xs)
    return tuple(
        jax.lax.reduce(
            tuple(jnp.square(x) for x in xs), zero, lambda a, b: tuple(u + w for u, w in zip(a, b)), tuple(range(xs[0].ndim))
        )
    )


@_sum_squares.defjvp
def _sum_squares_jvp(primals, tangents):
    (xs,), (dxs,) = primals, tangents
    return _sum_squares(xs), tuple(2 * jnp.sum(x * dx) for x, dx in zip(xs, dxs))


def channel_roles(num_momenta: int) -> tuple[list[int], list[int], list[int]]:
    """Positions in :func:`channels` of a factored tensor's per-entry, row and column
    channels (``row``/``rsqrt_row`` vary along rows only, ``col``/``rsqrt_col`` along
    columns only)."""
    k = num_momenta
    row = [*range(4 + 3 * k, 4 + 4 * k), *range(4 + 5 * k, 4 + 6 * k)]
    col = [*range(4 + 4 * k, 4 + 5 * k), *range(4 + 6 * k, 4 + 7 * k)]
    entry = [i for i in range(4 + 8 * k) if i not in row and i not in col]
    return entry, row, col


def first_layer(
    p: Array, g: Array, m: Array, v: Array, row: Array, col: Array, full: Array, count: Array,
    layer: dict[str, Array], feature_eps: float, dtype=None,
) -> Array:
    """Pre-activation of the first hidden layer on one tensor, ``p.shape + (width,)``:
    :func:`tensor_inputs` ``@ layer["w"] + layer["b"]`` without forming the inputs.

    The normalisation scales are folded into the rows of ``w`` and the time features into
    the bias; a factored tensor's row and column channels go through small matmuls on their
    un-broadcast arrays (comment above). ``dtype`` (default: ``p``'s) is the MLP's compute dtype.
    """
    chans = channels(p, g, m, v, row, col, full)
    dtype = jnp.result_type(p) if dtype is None else dtype
    shape = jnp.shape(p)
    w, b = layer["w"].astype(dtype), layer["b"].astype(dtype)
    num = len(chans)
    out = b + time_features(count, dtype) @ w[num:]
    if factored(p):
        entry, rows, cols = channel_roles(m.shape[-1])
        r = jnp.stack([chans[i][..., 0] for i in rows], axis=-1).astype(dtype)  # (..., r, 2K)
        c = jnp.stack([chans[i][..., 0, :] for i in cols], axis=-1).astype(dtype)  # (..., c, 2K)
        # a row value is repeated over the c columns, so its mean square over the tensor is its mean over r
        scale_r = jax.lax.rsqrt(feature_eps + jnp.mean(jnp.square(r), axis=tuple(range(r.ndim - 1))))
        scale_c = jax.lax.rsqrt(feature_eps + jnp.mean(jnp.square(c), axis=tuple(range(c.ndim - 1))))
        out = out + (r @ (w[np.asarray(rows)] * scale_r[:, None]))[..., :, None, :]
        out = out + (c @ (w[np.asarray(cols)] * scale_c[:, None]))[..., None, :, :]
    else:
        entry = list(range(num))
    scale = jax.lax.rsqrt(feature_eps + second_moments([chans[i] for i in entry], shape)).astype(dtype)
    for j, i in enumerate(entry):
        out = out + chans[i].astype(dtype)[..., None] * (w[i] * scale[j])
    return jnp.broadcast_to(out, shape + w.shape[-1:])


def dense_elementwise(x: Array, layer: dict[str, Array]) -> Array:
    """``x @ w + b`` written as ``b + sum_i x[..., i] w[i]``: for the MLP's few units an
    elementwise expression XLA fuses with its neighbours instead of a separate matmul
    (a hidden layer ``w: (n, width)`` or a scalar head ``w: (n,)``)."""
    w, b = layer["w"].astype(x.dtype), layer["b"].astype(x.dtype)
    out = b
    for i in range(w.shape[0]):
        out = out + (x[..., i] * w[i] if w.ndim == 1 else x[..., i, None] * w[i])
    return out
