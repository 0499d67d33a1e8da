"""Digit classification with an MLP or a small ConvNet: the STAR paper's in-distribution
tasks (Appendix B.2: an MLP on Fashion-MNIST, a ConvNet on CIFAR-10) scaled down to the
1797 8x8 digit images bundled with the package (``tasks/data/digits.npz``, see its README).

Math:
  With inputs ``x_j in [0, 1]^{8x8}`` (pixel counts / 16) and labels ``c_j in {0..9}``,

      loss(params) = 1/|I| sum_{j in I} [logsumexp(f(x_j)) - f(x_j)_{c_j}],

  the mean softmax cross-entropy over an index set ``I``: a minibatch from
  ``sample_batch`` (``batch_size = 128``, as in STAR), or the whole training split when
  ``batch=None``. ``val_loss`` is the same on the validation split; ``accuracy`` reports
  the fraction of correct argmax predictions.

Per-task randomness (documented choice): ``sample(key)`` draws a random permutation of the
1797 images; its first ``n_val`` entries are the validation split and the rest the
training split, so train and validation never overlap. Set ``split_seed`` to use one fixed
split for every task (the tasks then differ only through ``init_params`` keys and batches).
``init_params`` draws the network weights from its key.

Minibatches (documented choice): ``sample_batch(key, task)`` returns ``batch_size`` dataset
indices drawn from the training split *without replacement* within a batch (independently
across calls), or with replacement when ``replace=True``.

The dataset is a module-level constant loaded once (NumPy + ``importlib.resources``, no
scikit-learn, no download); tasks hold only the index arrays, so a batch of tasks is small
and every function jits and vmaps over task keys.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.tasks import nets
from learned_dco.tasks.base import TaskFamilyBase
from learned_dco.validation import check_choice, check_fields, ValidationError
from learned_dco.tasks.regression import normalise_hidden
from learned_dco.types import Array, Batch, Params, PRNGKey

NUM_EXAMPLES = 1797
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits as ``(images float32 (1797, 8, 8, 1) in [0, 1], labels int32 (1797,))``."""
    resource = importlib.resources.files("learned_dco.tasks") / "data" / "digits.npz"
    with resource.open("rb") as f, np.load(f) as data:
        images = data["images"].astype(np.float32) / 16.0
        labels = data["labels"].astype(np.int32)
    images = images.reshape(NUM_EXAMPLES, *IMAGE_SHAPE)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class DigitsTask(NamedTuple):
    """A train/validation split of the digits (indices into the dataset)."""

    train_idx: Array  # (1797 - n_val,) int32, disjoint from val_idx
    val_idx: Array  # (n_val,) int32


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy with integer labels."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


class _DigitsBase(TaskFamilyBase):
    """Split sampling, minibatches, losses and accuracy shared by both networks."""

    n_val: int
    batch_size: int
    replace: bool
    split_seed: int | None

    source = "STAR (Harrison, Metz, Sohl-Dickstein) App. B.2 tasks, on the UCI digits"
    has_optimum = False

    def _check_data_fields(self) -> None:
        check_fields(self, integer=("n_val", "batch_size"), positive=("n_val", "batch_size"))
        max_val = NUM_EXAMPLES - (1 if self.replace else self.batch_size)
        if self.n_val > max_val:
            raise ValidationError(
                f"{self.name}.n_val must leave at least {NUM_EXAMPLES - max_val} training "
                f"examples (n_val <= {max_val}), got {self.n_val}",
                field="n_val",
            )
        if self.split_seed is not None:
            check_fields(self, integer=("split_seed",), nonnegative=("split_seed",))

    @property
    def n_train(self) -> int:
        return NUM_EXAMPLES - self.n_val

    def _logits(self, params: Params, images: Array) -> Array:
        raise NotImplementedError

    def sample(self, key: PRNGKey) -> DigitsTask:
        if self.split_seed is not None:
            key = jax.random.PRNGKey(self.split_seed)
        perm = jax.random.permutation(key, NUM_EXAMPLES).astype(jnp.int32)
        return DigitsTask(train_idx=perm[self.n_val :], val_idx=perm[: self.n_val])

    def sample_batch(self, key: PRNGKey, task: DigitsTask) -> Array:
        """``batch_size`` dataset indices from the training split (int32)."""
        pos = jax.random.choice(key, self.n_train, (self.batch_size,), replace=self.replace)
        return task.train_idx[pos]

    def _split(self, task: DigitsTask, split: str) -> Array:
        if split == "train":
            return task.train_idx
        if split == "val":
            return task.val_idx
        raise ValidationError(f"split must be 'train' or 'val', got {split!r}")

    def _loss_on(self, params: Params, idx: Array) -> Array:
        images, labels = load_digits()
        logits = self._logits(params, jnp.asarray(images)[idx])
        return cross_entropy(logits, jnp.asarray(labels)[idx])

    def loss(self, params: Params, task: DigitsTask, batch: Batch | None = None) -> Array:
        """Cross-entropy on the minibatch ``batch`` (dataset indices) or the training split."""
        return self._loss_on(params, task.train_idx if batch is None else batch)

    def val_loss(self, params: Params, task: DigitsTask) -> Array:
        """Cross-entropy on the validation split."""
        return self._loss_on(params, task.val_idx)

    def accuracy(self, params: Params, task: DigitsTask, split: str = "val") -> Array:
        """Fraction of correct argmax predictions on ``split`` (``"val"`` or ``"train"``)."""
        idx = self._split(task, split)
        images, labels = load_digits()
        logits = self._logits(params, jnp.asarray(images)[idx])
        return jnp.mean(jnp.argmax(logits, axis=-1) == jnp.asarray(labels)[idx])


@dataclasses.dataclass(frozen=True)
class DigitsMLP(_DigitsBase):
    """MLP classifier on 8x8 digits (stand-in for STAR's Fashion-MNIST MLP, App. B.2).

    Architecture: flatten 64 pixels -> ``hidden`` (default two layers of 128 ReLU units,
    as in STAR) -> 10 logits. He-normal weights (``N(0, 2/fan_in)``), zero biases.

    Attributes:
      n_val: validation examples (default 297, leaving 1500 for training).
      batch_size: minibatch size (STAR: 128).
      hidden: hidden widths (default ``(128, 128)``).
      activation: hidden activation (default ``"relu"``).
      replace: sample minibatch indices with replacement (default ``False``).
      split_seed: ``None`` for a random split per task, or a seed for one fixed split.

    Params: ``{"layers": [{"w", "b"}] * 3}`` (64-128-128-10, 26,122 parameters).
    """

    n_val: int = 297
    batch_size: int = 128
    hidden: tuple[int, ...] = (128, 128)
    activation: str = "relu"
    replace: bool = False
    split_seed: int | None = None

    def __post_init__(self):
        self._check_data_fields()
        normalise_hidden(self)
        nets.check_activation(self)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (int(np.prod(IMAGE_SHAPE)), *self.hidden, NUM_CLASSES)

    def init_params(self, key: PRNGKey, task: DigitsTask) -> Params:
        del task
        return nets.mlp_init(key, self.sizes, nets.default_gain(self.activation))

    def _logits(self, params: Params, images: Array) -> Array:
        return nets.mlp_apply(params, images.reshape(images.shape[0], -1), self.activation)


@dataclasses.dataclass(frozen=True)
class DigitsConvNet(_DigitsBase):
    """ConvNet classifier on 8x8 digits (stand-in for STAR's CIFAR-10 ConvNet, App. B.2).

    Architecture (NHWC): three 3x3 SAME convolutions with ``channels = (32, 64, 64)`` and
    ``strides = (2, 1, 1)``, ReLU after each (8x8x1 -> 4x4x32 -> 4x4x64 -> 4x4x64), then
    spatial mean pooling (``pooling="mean"``, as in learned_optimization's conv tasks that
    STAR uses) or flattening (``"flatten"``), then a dense layer to 10 logits.

    Attributes:
      n_val, batch_size, replace, split_seed: as for ``DigitsMLP``.
      channels: conv output channels (STAR: 32, 64, 64).
      strides: conv strides (STAR: 2, 1, 1).
      activation: activation after each conv (default ``"relu"``).
      pooling: ``"mean"`` (default) or ``"flatten"`` before the dense head.

    Params: ``{"conv": [{"w": (3, 3, c_in, c_out), "b"}] * 3, "head": {"w", "b"}}``.
    """

    n_val: int = 297
    batch_size: int = 128
    channels: tuple[int, ...] = (32, 64, 64)
    strides: tuple[int, ...] = (2, 1, 1)
    activation: str = "relu"
    pooling: str = "mean"
    replace: bool = False
    split_seed: int | None = None

    def __post_init__(self):
        self._check_data_fields()
        normalise_hidden(self, "channels")
        normalise_hidden(self, "strides")
        if len(self.strides) != len(self.channels):
            raise ValidationError(
                f"DigitsConvNet.strides must have one entry per conv layer "
                f"({len(self.channels)}), got {self.strides!r}",
                field="strides",
            )
        nets.check_activation(self)
        check_choice(self, "pooling", ("mean", "flatten"))

    def init_params(self, key: PRNGKey, task: DigitsTask) -> Params:
        del task
        head_features = None
        if self.pooling == "flatten":
            side = nets.conv_output_size(IMAGE_SHAPE[0], self.strides)
            head_features = side * side * self.channels[-1]
        return nets.convnet_init(
            key,
            IMAGE_SHAPE[-1],
            self.channels,
            NUM_CLASSES,
            head_features=head_features,
            gain=nets.default_gain(self.activation),
        )

    def _logits(self, params: Params, images: Array) -> Array:
        return nets.convnet_apply(params, images, self.strides, self.activation, self.pooling)
