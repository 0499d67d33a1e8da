"""Shared machinery for 1-D MLP regression families (DCO Sec. VI-C and VI-D).

A family mixes in ``MLPRegression`` and defines ``hidden`` (hidden widths) and
``activation``; its task NamedTuple carries ``x_train, y_train, x_val, y_val`` of shape
``(N, 1)``. The network is a 1-``hidden``-1 MLP (``learned_dco.tasks.nets``), the losses are
mean squared errors over the training and validation sets. Training is full batch
(``sample_batch`` returns ``None``), as in the paper's single inner step per task.
"""

from __future__ import annotations

import jax

from learned_dco.tasks import nets
from learned_dco.tasks.base import TaskFamilyBase
from learned_dco.validation import check_fields, positive_ints, set_field
from learned_dco.types import Array, Batch, Params, PRNGKey, Task


def normalise_hidden(obj: object, field: str = "hidden") -> None:
    """Store ``field`` back as a tuple of positive ints; ``ValidationError`` naming it otherwise."""
    set_field(obj, field, positive_ints(type(obj).__name__, field, getattr(obj, field)))


class MLPRegression(TaskFamilyBase):
    """``init_params``/``loss``/``val_loss`` for scalar regression with an MLP.

    Math:
      ``l(params) = 1/N sum_j (f_params(x_j) - y_j)^2`` over the training points;
      ``val_loss`` is the same on the validation points.

    Params: ``{"layers": [{"w", "b"}, ...]}`` for widths ``(1, *hidden, 1)``, initialised
    with ``w ~ N(0, gain / fan_in)`` (gain 2 for ReLU, 1 otherwise), ``b = 0``.
    """

    hidden: tuple[int, ...]
    activation: str

    def _check_sizes(self, noise: str) -> None:
        """``num_train`` / ``num_val`` positive integers, the noise field ``noise`` ``>= 0``."""
        check_fields(self, integer=("num_train", "num_val"), positive=("num_train", "num_val"), nonnegative=(noise,))

    def _check_network(self) -> None:
        normalise_hidden(self)
        nets.check_activation(self)

    def _sample_inputs(self, k_train: PRNGKey, k_val: PRNGKey, lo: float, hi: float) -> tuple[Array, Array]:
        """Training and validation inputs, ``(num_train, 1)`` and ``(num_val, 1)``, ``~ U(lo, hi)``."""
        x_train = jax.random.uniform(k_train, (self.num_train, 1), minval=lo, maxval=hi)
        x_val = jax.random.uniform(k_val, (self.num_val, 1), minval=lo, maxval=hi)
        return x_train, x_val

    @property
    def sizes(self) -> tuple[int, ...]:
        return (1, *self.hidden, 1)

    def init_params(self, key: PRNGKey, task: Task) -> Params:
        del task
        return nets.mlp_init(key, self.sizes, nets.default_gain(self.activation))

    def predict(self, params: Params, x: Array) -> Array:
        """Network output for inputs ``x`` of shape ``(N, 1)``."""
        return nets.mlp_apply(params, x, self.activation)

    def loss(self, params: Params, task: Task, batch: Batch | None = None) -> Array:
        del batch  # full batch
        return nets.mse(self.predict(params, task.x_train), task.y_train)

    def val_loss(self, params: Params, task: Task) -> Array:
        return nets.mse(self.predict(params, task.x_val), task.y_val)


__all__ = ["MLPRegression", "normalise_hidden"]
