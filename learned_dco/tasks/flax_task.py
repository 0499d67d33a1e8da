r"""A task family from the user's own flax model, loss and data: :func:`from_flax`.

Meta-training needs a *distribution* of problems; a user usually has one model and one data
set. :class:`FlaxTask` turns them into a family in which a task is

* a random train/validation split of the data set (fixed arrays ``(x, y)``), or a fresh data
  set drawn by the user's ``data(key) -> (x, y)`` and then split, and
* a random initialisation of the model's parameters (``init_params(key, task)``), drawn as
  the model's own initialisers draw it.

Math: with model :math:`f_\theta`, the user's loss :math:`\ell(\hat y, y)` and a task's
training set :math:`(X, Y)`,

.. math::  L(\theta) = \ell\big(f_\theta(X),\, Y\big), \qquad
           L_{\mathrm{val}}(\theta) = \ell\big(f_\theta(X_{\mathrm{val}}),\, Y_{\mathrm{val}}\big),

and with ``batch_size`` set a stochastic inner step sees :math:`\ell(f_\theta(X_B), Y_B)` for
``batch_size`` indices :math:`B` drawn uniformly (with replacement) from the training split.

Parameters are plain nested dicts of arrays (an nnx model's ``nnx.Param`` state as
``nnx.to_pure_dict``; a linen model's ``"params"`` collection), so every learned optimizer
and every estimator applies unchanged, and a batch of tasks vmaps. Non-parameter state
(batch statistics, RNG counters, other linen collections) is held fixed at its initial value;
a forward pass must not need to update it.

Models:

* an ``nnx.Module`` *factory* ``make(rngs) -> module`` (e.g. ``lambda rngs: MLP(rngs=rngs)``):
  each task's start is a fresh draw from the model's initialisers;
* an ``nnx.Module`` instance: every task starts from that instance's parameters (the key of
  ``init_params`` is ignored), a fixed start as in DCO's Theorem 1;
* a ``flax.linen.Module``: ``model.init(key, x[:1])["params"]`` per task.

The family is a frozen dataclass compared and hashed by identity (it holds arrays and a
model), so the same object passed to ``jax.jit`` twice reuses the compiled program.

Example::

    family = tasks.from_flax(lambda rngs: MLP(rngs=rngs),
                             lambda pred, y: optax.softmax_cross_entropy_with_integer_labels(pred, y).mean(),
                             (x, y), n_val=200, batch_size=64)
    pool = tasks.sample_tasks(family, jax.random.PRNGKey(0), 16)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.tasks.base import TaskFamilyBase
from learned_dco.types import Array, Batch, Params, PRNGKey
from learned_dco.validation import ValidationError, positive_int


class FlaxTaskData(NamedTuple):
    """One task: a train/validation split (each ``x`` / ``y`` an array or a pytree of arrays
    with a leading example axis)."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any


def _take(tree: Any, index: Array) -> Any:
    return jax.tree.map(lambda a: a[index], tree)


def _num_examples(where: str, x: Any, y: Any) -> int:
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in jax.tree.leaves((x, y))}
    if len(sizes) != 1 or None in sizes:
        raise ValidationError(f"{where}: x and y need one leading example axis of the same length; got sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def _kind(model: Any) -> str:
    from flax import linen, nnx

    if isinstance(model, linen.Module):
        return "linen"
    if isinstance(model, nnx.Module):
        return "nnx"
    if callable(model):
        return "nnx_factory"
    raise ValidationError(
        f"from_flax: model must be an nnx.Module, a factory rngs -> nnx.Module, or a linen.Module; got {type(model).__name__}"
    )


@dataclasses.dataclass(frozen=True, eq=False)
class FlaxTask(TaskFamilyBase):
    """The family of :func:`from_flax` (see the module docstring for the maths).

    Fields: ``model`` (nnx factory, nnx instance or linen module), ``loss_fn``
    (``(predictions, targets) -> scalar``), ``data`` (``(x, y)`` or ``key -> (x, y)``),
    ``n_val`` (held-out examples per task), ``batch_size`` (``None``: full-batch inner
    steps), ``label`` (the family's name).
    """

    model: Any
    loss_fn: Callable[[Any, Any], Array]
    data: Any = dataclasses.field(repr=False)  # arrays: too long to print
    n_val: int | None = None
    batch_size: int | None = None
    label: str = "flax"

    source = "user-defined flax model (learned_dco.tasks.from_flax)"

    def __post_init__(self):
        kind = _kind(self.model)
        if not callable(self.loss_fn):
            raise ValidationError(f"from_flax: loss_fn must be callable (predictions, targets) -> scalar; got {type(self.loss_fn).__name__}")
        if callable(self.data):
            shapes = jax.eval_shape(self.data, jax.random.PRNGKey(0))
        elif isinstance(self.data, (tuple, list)) and len(self.data) == 2:
            object.__setattr__(self, "data", jax.tree.map(jnp.asarray, tuple(self.data)))
            shapes = self.data
        else:
            raise ValidationError("from_flax: data must be a pair (x, y) of arrays or a function key -> (x, y)")
        if not (isinstance(shapes, (tuple, list)) and len(shapes) == 2):
            raise ValidationError("from_flax: data(key) must return a pair (x, y)")
        n = _num_examples("from_flax: data", *shapes)
        n_val = max(1, n // 5) if self.n_val is None else positive_int("from_flax", "n_val", self.n_val)
        if n_val >= n:
            raise ValidationError(f"from_flax: n_val must be < the {n} examples, got {n_val}")
        object.__setattr__(self, "n_val", n_val)
        if self.batch_size is not None:
            positive_int("from_flax", "batch_size", self.batch_size)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_num_examples", n)
        self._build_model(shapes[0])
        self._check_loss()

    # --- the model as pure functions of a parameter dict -----------------------------------
    def _build_model(self, x_shapes: Any) -> None:
        from flax import nnx

        if self._kind == "linen":
            x0 = jax.tree.map(lambda s: jnp.zeros((1, *s.shape[1:]), s.dtype), x_shapes)
            variables = self.model.init(jax.random.PRNGKey(0), x0)
            if "params" not in variables:
                raise ValidationError("from_flax: the linen model has no 'params' collection to train")
            object.__setattr__(self, "_x0", x0)
            object.__setattr__(self, "_rest", {k: v for k, v in variables.items() if k != "params"})
            return
        if self._kind == "nnx_factory":
            try:
                module = nnx.eval_shape(lambda: self.model(nnx.Rngs(0)))
            except Exception as e:
                raise ValidationError(f"from_flax: calling the model factory with nnx.Rngs failed ({type(e).__name__}: {e})") from None
            if not isinstance(module, nnx.Module):
                raise ValidationError(f"from_flax: the model factory must return an nnx.Module; got {type(module).__name__}")
            # non-parameter state: the values of one concrete draw
            graphdef, params, rest = nnx.split(self.model(nnx.Rngs(0)), nnx.Param, ...)
        else:
            graphdef, params, rest = nnx.split(self.model, nnx.Param, ...)
        object.__setattr__(self, "_graphdef", graphdef)
        object.__setattr__(self, "_template", params)
        object.__setattr__(self, "_rest", rest)

    def apply(self, params: Params, x: Any) -> Any:
        """The model's output for inputs ``x`` under parameters ``params`` (a pure dict)."""
        from flax import nnx

        if self._kind == "linen":
            return self.model.apply({"params": params, **self._rest}, x)
        state = jax.tree.map(lambda v: v, self._template)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self._graphdef, state, self._rest)(x)

    def _check_loss(self) -> None:
        key = jax.random.PRNGKey(0)
        task = jax.eval_shape(self.sample, key)
        params = jax.eval_shape(self.init_params, key, task)
        try:
            out = jax.eval_shape(self.loss, params, task)
        except Exception as e:
            raise ValidationError(f"from_flax: evaluating loss_fn(model(x), y) failed ({type(e).__name__}: {e})") from None
        if getattr(out, "shape", None) != ():
            raise ValidationError(f"from_flax: loss_fn must return a scalar; got shape {getattr(out, 'shape', type(out).__name__)}")

    # --- the family ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.label

    def sample(self, key: PRNGKey) -> FlaxTaskData:
        k_data, k_split = jax.random.split(key)
        x, y = self.data(k_data) if callable(self.data) else self.data
        perm = jax.random.permutation(k_split, self._num_examples)
        val, train = perm[: self.n_val], perm[self.n_val :]
        return FlaxTaskData(_take(x, train), _take(y, train), _take(x, val), _take(y, val))

    def init_params(self, key: PRNGKey, task: FlaxTaskData) -> Params:
        from flax import nnx

        del task
        if self._kind == "linen":
            return self.model.init(key, self._x0)["params"]
        if self._kind == "nnx_factory":
            _, params, _ = nnx.split(self.model(nnx.Rngs(key)), nnx.Param, ...)
            return nnx.to_pure_dict(params)
        return nnx.to_pure_dict(self._template)

    def sample_batch(self, key: PRNGKey, task: FlaxTaskData) -> Batch | None:
        if self.batch_size is None:
            return None
        n_train = jax.tree.leaves(task.x_train)[0].shape[0]
        return jax.random.randint(key, (self.batch_size,), 0, n_train)

    def loss(self, params: Params, task: FlaxTaskData, batch: Batch | None = None) -> Array:
        x, y = task.x_train, task.y_train
        if batch is not None:
            x, y = _take(x, batch), _take(y, batch)
        return self.loss_fn(self.apply(params, x), y)

    def val_loss(self, params: Params, task: FlaxTaskData) -> Array:
        return self.loss_fn(self.apply(params, task.x_val), task.y_val)


def from_flax(
    model: Any,
    loss_fn: Callable[[Any, Any], Array],
    data: Any,
    *,
    n_val: int | None = None,
    batch_size: int | None = None,
    name: str = "flax",
) -> FlaxTask:
    """A task family from a flax model, a loss and data (see the module docstring).

    Args:
      model: ``rngs -> nnx.Module`` (random start per task), an ``nnx.Module`` (fixed start)
        or a ``linen.Module`` (random start per task).
      loss_fn: ``(model(x), y) -> scalar``, e.g.
        ``lambda p, y: optax.softmax_cross_entropy_with_integer_labels(p, y).mean()``.
      data: ``(x, y)`` with a leading example axis (tasks are random splits of it), or
        ``key -> (x, y)`` (a fresh data set per task, then split).
      n_val: held-out examples per task for ``val_loss`` (default: a fifth of the data).
      batch_size: minibatch size of a stochastic inner step; ``None`` for full batch.
      name: the family's name (reports, metrics).

    Returns:
      A :class:`FlaxTask`, usable wherever a task family is (``meta.MetaTrainer``,
      estimators, ``meta.evaluate``, ``tasks.sample_tasks``).
    """
    return FlaxTask(model, loss_fn, data, n_val=n_val, batch_size=batch_size, label=name)


__all__ = ["FlaxTask", "FlaxTaskData", "from_flax"]
