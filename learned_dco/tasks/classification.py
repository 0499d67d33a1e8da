r"""Classification families for a broad meta-training mixture.

Each family is a frozen dataclass whose fields fix the parameter shapes (so one family
vmaps over tasks) while tasks differ by data: a random train/validation split of the
bundled UCI digits, or a fresh synthetic data set per task.

* :class:`SoftmaxRegression`: linear ``W x + b`` with the multiclass cross-entropy
  :math:`\ell = -\frac1N \sum_j \log \mathrm{softmax}(W x_j + b)_{y_j}`;
* :class:`LogisticRegression`: binary, :math:`\ell = \frac1N \sum_j \log(1 + e^{-s_j (w\cdot x_j + b)})`
  with labels :math:`s_j \in \{-1, 1\}`;
* :class:`MLPClassifier`: an MLP of given widths/activation on the same data
  (:func:`random_mlps` draws a set of them with random widths, depths and activations).

Data (field ``data``): ``"digits"`` (64 pixels in [0, 1], 10 classes; the binary task is
"digit < 5") or ``"synthetic"``: Gaussian inputs :math:`x \sim N(0, I_d)` labelled by a
random teacher, ``argmax(T x + noise)`` (classes) or ``sign(t \cdot x + noise)`` (binary),
``num_examples`` points split into train and validation. Minibatches are index draws from
the training split (``batch_size``; ``None`` for full-batch).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.tasks import nets
from learned_dco.tasks.base import TaskFamilyBase
from learned_dco.tasks.digits import NUM_CLASSES, NUM_EXAMPLES, load_digits
from learned_dco.types import Array, Batch, Params, PRNGKey
from learned_dco.validation import ValidationError, check_choice, check_fields, positive_int, positive_ints, set_field

DATA = ("digits", "synthetic")


class ClassificationTask(NamedTuple):
    """One data set: inputs and integer labels, split into train and validation."""

    x_train: Array  # (n_train, d)
    y_train: Array  # (n_train,) int32 class (or {0, 1} for binary)
    x_val: Array  # (n_val, d)
    y_val: Array  # (n_val,)


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean of ``-log softmax(logits)[label]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def binary_logistic(scores: Array, labels: Array) -> Array:
    """Mean of ``log(1 + exp(-s * score))`` with ``s = 2 label - 1``."""
    signs = 2.0 * labels.astype(scores.dtype) - 1.0
    return jnp.mean(jax.nn.softplus(-signs * scores))


@dataclasses.dataclass(frozen=True)
class _Classification(TaskFamilyBase):
    data: str = "digits"
    dim: int = 16  # input dimension of synthetic data (digits: 64)
    num_classes: int = 10  # synthetic classes (digits: 10)
    num_examples: int = 512  # synthetic examples per task (digits: 1797)
    n_val: int = 128
    batch_size: int | None = 128
    label_noise: float = 0.5  # std of the teacher's noise (synthetic)

    source = "meta-training mixture of classification problems (UCI digits / synthetic); built for this library"
    binary = False

    def __post_init__(self):
        check_choice(self, "data", DATA)
        check_fields(self, integer=("dim", "num_classes", "num_examples", "n_val"),
                     positive=("dim", "num_examples", "n_val"), nonnegative=("label_noise",))
        if self.batch_size is not None:
            positive_int(self.name, "batch_size", self.batch_size)
        if not self.binary:
            positive_int(self.name, "num_classes", self.num_classes)
        if self.n_val >= self.total_examples:
            raise ValidationError(f"{self.name}.n_val must be < {self.total_examples}, got {self.n_val}", field="n_val")

    # --- data -----------------------------------------------------------------------------
    @property
    def total_examples(self) -> int:
        return NUM_EXAMPLES if self.data == "digits" else self.num_examples

    @property
    def input_dim(self) -> int:
        return 64 if self.data == "digits" else self.dim

    @property
    def classes(self) -> int:
        if self.binary:
            return 1
        return NUM_CLASSES if self.data == "digits" else self.num_classes

    def sample(self, key: PRNGKey) -> ClassificationTask:
        kp, kx, kt, kn = jax.random.split(key, 4)
        if self.data == "digits":
            images, labels = load_digits()
            x = jnp.asarray(images).reshape(NUM_EXAMPLES, -1)
            y = jnp.asarray(labels)
            if self.binary:
                y = (y < 5).astype(jnp.int32)
        else:
            x = jax.random.normal(kx, (self.num_examples, self.dim))
            out = 1 if self.binary else self.num_classes
            teacher = jax.random.normal(kt, (self.dim, out)) / jnp.sqrt(self.dim)
            scores = x @ teacher + self.label_noise * jax.random.normal(kn, (self.num_examples, out))
            y = (scores[:, 0] > 0).astype(jnp.int32) if self.binary else jnp.argmax(scores, -1).astype(jnp.int32)
        perm = jax.random.permutation(kp, self.total_examples)
        val, train = perm[: self.n_val], perm[self.n_val :]
        return ClassificationTask(x[train], y[train], x[val], y[val])

    def sample_batch(self, key: PRNGKey, task: ClassificationTask) -> Batch | None:
        if self.batch_size is None:
            return None
        return jax.random.randint(key, (self.batch_size,), 0, task.x_train.shape[0])

    # --- model ------------------------------------------------------------------------------
    def _outputs(self, params: Params, x: Array) -> Array:
        raise NotImplementedError

    def _loss(self, params: Params, x: Array, y: Array) -> Array:
        out = self._outputs(params, x)
        return binary_logistic(out[:, 0], y) if self.binary else softmax_cross_entropy(out, y)

    def loss(self, params: Params, task: ClassificationTask, batch: Batch | None = None) -> Array:
        if batch is None:
            return self._loss(params, task.x_train, task.y_train)
        return self._loss(params, task.x_train[batch], task.y_train[batch])

    def val_loss(self, params: Params, task: ClassificationTask) -> Array:
        return self._loss(params, task.x_val, task.y_val)


@dataclasses.dataclass(frozen=True)
class SoftmaxRegression(_Classification):
    """Multiclass linear classifier; params ``{"w": (d, C), "b": (C,)}`` starting at zero."""

    def init_params(self, key: PRNGKey, task: ClassificationTask) -> Params:
        del key
        dtype = task.x_train.dtype
        return {"w": jnp.zeros((self.input_dim, self.classes), dtype), "b": jnp.zeros((self.classes,), dtype)}

    def _outputs(self, params: Params, x: Array) -> Array:
        return x @ params["w"] + params["b"]


@dataclasses.dataclass(frozen=True)
class LogisticRegression(SoftmaxRegression):
    """Binary linear classifier; params ``{"w": (d, 1), "b": (1,)}`` starting at zero."""

    binary = True


@dataclasses.dataclass(frozen=True)
class MLPClassifier(_Classification):
    """MLP classifier ``input -> hidden -> classes``; He/LeCun-normal init by activation."""

    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"

    def __post_init__(self):
        super().__post_init__()
        set_field(self, "hidden", positive_ints(self.name, "hidden", self.hidden))
        nets.check_activation(self)

    def init_params(self, key: PRNGKey, task: ClassificationTask) -> Params:
        del task
        sizes = (self.input_dim, *self.hidden, self.classes)
        return nets.mlp_init(key, sizes, nets.default_gain(self.activation))

    def _outputs(self, params: Params, x: Array) -> Array:
        return nets.mlp_apply(params, x, self.activation)


def random_mlps(
    seed: int,
    count: int,
    *,
    widths: tuple[int, ...] = (8, 16, 32, 64),
    depths: tuple[int, ...] = (1, 2, 3),
    activations: tuple[str, ...] = ("relu", "tanh", "gelu"),
    data: tuple[str, ...] = DATA,
) -> tuple[MLPClassifier, ...]:
    """``count`` MLP families with widths, depth, activation and data drawn from ``seed``.

    The draw is static (NumPy), since each architecture has its own parameter shapes and
    therefore its own compiled program.
    """
    positive_int("random_mlps", "count", count)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        depth = int(rng.choice(depths))
        hidden = tuple(int(rng.choice(widths)) for _ in range(depth))
        out.append(MLPClassifier(data=str(rng.choice(data)), hidden=hidden, activation=str(rng.choice(activations))))
    return tuple(out)


__all__ = [
    "ClassificationTask",
    "LogisticRegression",
    "MLPClassifier",
    "SoftmaxRegression",
    "binary_logistic",
    "random_mlps",
    "softmax_cross_entropy",
]
