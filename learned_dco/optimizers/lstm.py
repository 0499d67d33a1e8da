r"""A coordinatewise LSTM learned optimizer (Andrychowicz et al., 2016), as used by M-L2O.

Every scalar parameter :math:`\theta_i` is updated by the *same* small recurrent network
(weights shared across coordinates, so one set of meta-parameters applies to any model),
with its own hidden state:

.. math::
    x_i = \mathrm{pre}(g_i), \qquad
    (h_i, c_i) \leftarrow \mathrm{LSTM}_\phi(x_i, (h_i, c_i)), \qquad
    u_i = -\big(\eta\, g_i + s\,(w^\top h_i^{(top)} + b)\big).

* **Preprocessing** (``preprocess="log_sign"``, Andrychowicz et al. App. A, ``p = 10``):
  :math:`\mathrm{pre}(g) = (\log|g|/p,\ \mathrm{sign}(g))` if :math:`|g| \ge e^{-p}`, else
  :math:`(-1,\ e^{p} g)` -- invariant to the gradient's scale over many orders of magnitude.
  ``"scaled"``: :math:`\mathrm{pre}(g) = (\text{input\_scale}\cdot g)`, one feature.
* **LSTM**: ``num_layers`` stacked cells of width ``hidden_size`` (default 2 x 20, as in
  Andrychowicz et al. and the M-L2O code base), gates
  :math:`i, f, \tilde c, o = x W_x + h W_h + b`, :math:`c' = \sigma(f) c + \sigma(i)
  \tanh\tilde c`, :math:`h' = \sigma(o)\tanh c'`; weights drawn from
  :math:`U(-1/\sqrt H, 1/\sqrt H)`, forget-gate bias 1.
* **Output**: a linear head scaled by ``output_scale`` (0.1, as in Andrychowicz et al.)
  plus -- our documented choice -- a learned gradient-descent term :math:`\eta g` with
  :math:`\eta = e^{\text{log\_lr}}`. The head starts at zero, so the untrained optimizer is
  exactly GD with step ``learning_rate`` (every learned optimizer in this library starts at
  a hand-designed rule); meta-training then shapes the recurrent part. ``gd_term=False``
  gives the pure LSTM of the paper (which starts as a zero update).

Optimizer state: :class:`L2OState`, per-coordinate hidden and cell states of shape
``(num_params, num_layers, hidden_size)`` (coordinates in ``ravel_pytree`` order; the whole
model goes through the network as one batch of coordinates).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from learned_dco.optimizers.base import check_grads, finish
from learned_dco.optimizers.dco import LOG_CLIP
from learned_dco.types import Array, MetaParams, Params, PRNGKey
from learned_dco.validation import ValidationError, check_choice, check_positive, one_of, positive_int

tree_map = jax.tree.map
PREPROCESS = ("log_sign", "scaled")


class L2OState(NamedTuple):
    """Per-coordinate LSTM memory, coordinates in ``ravel_pytree`` order."""

    hidden: Array  # (num_params, num_layers, hidden_size)
    cell: Array  # (num_params, num_layers, hidden_size)


def preprocess(g: Array, kind: str = "log_sign", p: float = 10.0, input_scale: float = 1.0) -> Array:
    """Gradient features, shape ``g.shape + (features,)`` (module docstring)."""
    if kind == "scaled":
        return (input_scale * g)[..., None]
    big = jnp.abs(g) >= math.exp(-p)
    log_mag = jnp.log(jnp.maximum(jnp.abs(g), math.exp(-p))) / p
    first = jnp.where(big, log_mag, -1.0)
    second = jnp.where(big, jnp.sign(g), math.exp(p) * g)
    return jnp.stack([first, second], axis=-1)


def lstm_cell(layer: dict, x: Array, h: Array, c: Array) -> tuple[Array, Array]:
    """One LSTM cell on a batch of coordinates: ``x (N, F)``, ``h, c (N, H)``."""
    gates = x @ layer["w_x"] + h @ layer["w_h"] + layer["b"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, c


def lstm_optimizer(
    weights: MetaParams,
    *,
    preprocess_kind: str = "log_sign",
    preprocess_p: float = 10.0,
    input_scale: float = 1.0,
    output_scale: float = 0.1,
    gd_term: bool = True,
    max_consecutive_nonfinite: int | None = 10,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""The coordinatewise LSTM update rule with explicit weights (module docstring).

    Args:
      weights: ``{"lstm": [{"w_x", "w_h", "b"}, ...], "out": {"w": (H,), "b": ()},
        "log_lr": ()}`` (``"log_lr"`` only used with ``gd_term``).
      preprocess_kind, preprocess_p, input_scale: gradient features (:func:`preprocess`).
      output_scale: factor :math:`s` on the LSTM head.
      gd_term: add the learned GD term :math:`\eta g`.
      max_consecutive_nonfinite: non-finite-gradient guard (``None`` disables it).
      learning_rate, weight_decay: a scale on the step (number, array or optax schedule) and
        decoupled weight decay, :math:`u = \eta\,(u^{lstm} - \lambda\theta)`
        (:func:`learned_dco.optimizers.base.scale_and_decay`).

    Returns an ``optax.GradientTransformationExtraArgs``; low-precision params keep their
    state dtypes (the network runs in float32 for them).
    """
    one_of("lstm_optimizer", "preprocess", preprocess_kind, PREPROCESS)
    layers = weights["lstm"]
    num_layers, hidden_size = len(layers), jnp.shape(layers[0]["w_h"])[0]

    def init_fn(params):
        flat = ravel_pytree(params)[0]
        zeros = jnp.zeros((flat.size, num_layers, hidden_size), flat.dtype)
        return L2OState(hidden=zeros, cell=zeros)

    def update_fn(grads, state, params=None):
        if params is not None:
            check_grads("lstm_optimizer", grads, params)
        g, unravel = ravel_pytree(grads)
        expected = (g.size, num_layers, hidden_size)
        for name, s in (("hidden", state.hidden), ("cell", state.cell)):
            if jnp.shape(s) != expected:
                raise ValidationError(
                    f"lstm_optimizer: state.{name} has shape {jnp.shape(s)}, expected {expected}; "
                    "re-initialise the state for these params"
                )
        dtype = g.dtype
        x = preprocess(g, preprocess_kind, preprocess_p, input_scale).astype(dtype)
        hs, cs = [], []
        for index, layer in enumerate(layers):
            layer = tree_map(lambda w: w.astype(dtype), layer)
            x, c = lstm_cell(layer, x, state.hidden[:, index], state.cell[:, index])
            hs.append(x)
            cs.append(c)
        step = output_scale * (x @ weights["out"]["w"].astype(dtype) + weights["out"]["b"].astype(dtype))
        if gd_term:
            step = step + jnp.exp(jnp.clip(weights["log_lr"], -LOG_CLIP, LOG_CLIP)).astype(dtype) * g
        return unravel(-step), L2OState(jnp.stack(hs, axis=1), jnp.stack(cs, axis=1))

    return finish(optax.GradientTransformation(init_fn, update_fn), learning_rate=learning_rate,
                  weight_decay=weight_decay, max_consecutive_nonfinite=max_consecutive_nonfinite, owner="lstm_optimizer")


@dataclasses.dataclass(frozen=True)
class LSTMOptimizer:
    """Learned :func:`lstm_optimizer`: meta-parameters shared by every coordinate of any model.

    Attributes:
      hidden_size, num_layers: LSTM width and depth (default 20 x 2).
      preprocess: ``"log_sign"`` (default) or ``"scaled"``; ``preprocess_p``, ``input_scale``.
      output_scale: scale of the LSTM head (default 0.1).
      learning_rate: initial step of the GD term (the untrained optimizer is GD with it).
      gd_term: include the learned GD term (default ``True``).
      max_consecutive_nonfinite: non-finite-gradient guard.
    """

    hidden_size: int = 20
    num_layers: int = 2
    preprocess: str = "log_sign"
    preprocess_p: float = 10.0
    input_scale: float = 1.0
    output_scale: float = 0.1
    learning_rate: float = 0.1
    gd_term: bool = True
    max_consecutive_nonfinite: int | None = 10

    def __post_init__(self):
        for name in ("hidden_size", "num_layers"):
            positive_int("LSTMOptimizer", name, getattr(self, name))
        check_choice(self, "preprocess", PREPROCESS)
        check_positive(self, "learning_rate")
        check_positive(self, "preprocess_p")

    @property
    def num_features(self) -> int:
        return 2 if self.preprocess == "log_sign" else 1

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        H = self.hidden_size
        bound = 1.0 / math.sqrt(H)
        layers = []
        fan_in = self.num_features
        for k in jax.random.split(key, self.num_layers):
            kx, kh = jax.random.split(k)
            b = jnp.zeros((4 * H,), dtype).at[H : 2 * H].set(1.0)  # forget-gate bias 1
            layers.append({
                "w_x": jax.random.uniform(kx, (fan_in, 4 * H), dtype, -bound, bound),
                "w_h": jax.random.uniform(kh, (H, 4 * H), dtype, -bound, bound),
                "b": b,
            })
            fan_in = H
        return {
            "lstm": layers,
            "out": {"w": jnp.zeros((H,), dtype), "b": jnp.zeros((), dtype)},
            "log_lr": jnp.asarray(math.log(self.learning_rate), dtype),
        }

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
        """The :func:`lstm_optimizer` of ``meta``; ``learning_rate`` / ``weight_decay`` as there."""
        return lstm_optimizer(
            meta, preprocess_kind=self.preprocess, preprocess_p=self.preprocess_p, input_scale=self.input_scale,
            output_scale=self.output_scale, gd_term=self.gd_term,
            max_consecutive_nonfinite=self.max_consecutive_nonfinite, learning_rate=learning_rate,
            weight_decay=weight_decay,
        )
