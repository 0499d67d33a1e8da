"""Small networks shared by the task families: an MLP and a 3-layer ConvNet.

Plain ``jax.numpy`` (no module state), so ``init`` and ``apply`` are pure functions that
jit and vmap over keys. Parameters are nested dicts of arrays:

* MLP: ``{"layers": [{"w": (fan_in, fan_out), "b": (fan_out,)}, ...]}``;
* ConvNet: ``{"conv": [{"w": (3, 3, c_in, c_out), "b": (c_out,)}, ...],
  "head": {"w": (features, classes), "b": (classes,)}}`` (kernels in HWIO, inputs NHWC).

Initialisation is variance scaling, ``w ~ N(0, gain / fan_in)`` with ``b = 0``: gain 1 is
LeCun-normal (the usual choice for tanh/sigmoid), gain 2 is He-normal (for ReLU);
``default_gain`` picks it from the activation.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from learned_dco.validation import check_choice
from learned_dco.types import Array, Params, PRNGKey

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
}


def check_activation(obj: object, field: str = "activation") -> None:
    """Raise ``ValidationError`` naming ``field`` if it is not a key of ``ACTIVATIONS``."""
    check_choice(obj, field, tuple(sorted(ACTIVATIONS)))


def default_gain(activation: str) -> float:
    """He gain (2) for ReLU, LeCun gain (1) otherwise."""
    return 2.0 if activation == "relu" else 1.0


def _dense_init(key: PRNGKey, fan_in: int, fan_out: int, gain: float) -> dict[str, Array]:
    w = jax.random.normal(key, (fan_in, fan_out)) * jnp.sqrt(gain / fan_in)
    return {"w": w, "b": jnp.zeros((fan_out,), w.dtype)}


def mlp_init(key: PRNGKey, sizes: Sequence[int], gain: float = 1.0) -> Params:
    """MLP parameters for layer widths ``sizes`` (input first, output last).

    Args:
      key: PRNG key.
      sizes: e.g. ``(1, 5, 5, 1)`` for the DCO paper's 1-5-5-1 network.
      gain: variance-scaling gain, ``w ~ N(0, gain / fan_in)``.

    Returns:
      ``{"layers": [{"w", "b"}, ...]}`` with ``len(sizes) - 1`` layers.
    """
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        "layers": [
            _dense_init(k, fan_in, fan_out, gain)
            for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:])
        ]
    }


def mlp_apply(params: Params, x: Array, activation: str = "tanh") -> Array:
    """``x (batch, in) -> (batch, out)``; the activation follows every layer but the last."""
    act = ACTIVATIONS[activation]
    layers = params["layers"]
    for layer in layers[:-1]:
        x = act(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def convnet_init(
    key: PRNGKey,
    in_channels: int,
    channels: Sequence[int],
    num_classes: int,
    head_features: int | None = None,
    kernel_size: int = 3,
    gain: float = 2.0,
) -> Params:
    """ConvNet parameters: ``len(channels)`` conv layers, then a dense head.

    Args:
      key: PRNG key.
      in_channels: channels of the input image (1 for digits).
      channels: output channels per conv layer, e.g. ``(32, 64, 64)``.
      num_classes: width of the dense head.
      head_features: input width of the head; defaults to ``channels[-1]`` (spatial mean
        pooling). Pass ``H' * W' * channels[-1]`` for a flattening head.
      kernel_size: square kernel size.
      gain: variance-scaling gain (``fan_in = k * k * c_in``).
    """
    keys = jax.random.split(key, len(channels) + 1)
    conv = []
    c_in = in_channels
    for k, c_out in zip(keys[:-1], channels):
        fan_in = kernel_size * kernel_size * c_in
        w = jax.random.normal(k, (kernel_size, kernel_size, c_in, c_out)) * jnp.sqrt(gain / fan_in)
        conv.append({"w": w, "b": jnp.zeros((c_out,), w.dtype)})
        c_in = c_out
    features = channels[-1] if head_features is None else head_features
    # The head feeds a softmax: LeCun gain keeps the initial logits O(1).
    head = _dense_init(keys[-1], features, num_classes, 1.0)
    return {"conv": conv, "head": head}


def convnet_apply(
    params: Params,
    x: Array,
    strides: Sequence[int],
    activation: str = "relu",
    pooling: str = "mean",
) -> Array:
    """``x (batch, H, W, C) -> logits (batch, classes)``.

    Each conv layer is ``act(conv_SAME(x, w, stride) + b)``; then the feature map is
    averaged over space (``pooling="mean"``) or flattened (``"flatten"``) and fed to the
    dense head.
    """
    act = ACTIVATIONS[activation]
    for layer, stride in zip(params["conv"], strides):
        dtype = jnp.result_type(x, layer["w"])
        x = jax.lax.conv_general_dilated(
            x.astype(dtype),
            layer["w"].astype(dtype),
            window_strides=(stride, stride),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        x = act(x + layer["b"])
    if pooling == "mean":
        x = jnp.mean(x, axis=(1, 2))
    else:
        x = x.reshape(x.shape[0], -1)
    return x @ params["head"]["w"] + params["head"]["b"]


def conv_output_size(size: int, strides: Sequence[int]) -> int:
    """Spatial size after SAME-padded convolutions with ``strides`` (ceil division)."""
    for s in strides:
        size = -(-size // s)
    return size


def mse(pred: Array, target: Array) -> Array:
    """Mean squared error over all entries."""
    return jnp.mean(jnp.square(pred - target))
