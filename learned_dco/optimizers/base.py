"""Pieces every optimizer builder shares: input validation, gradient normalisation, the
non-finite-gradient guard, and :func:`finish`, which makes a builder's rule a full optax
transformation (params' dtypes kept, learning-rate scale and weight decay, extra arguments)."""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_dco import validation
from learned_dco.types import Array, PyTree

tree_map = jax.tree.map


def _describe(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")


def check_structure(owner: str, name: str, tree: PyTree, params: PyTree) -> None:
    """``tree`` must have exactly the tree structure of ``params`` (ValueError otherwise)."""
    got = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
    want = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    if got != want or jax.tree.structure(tree) != jax.tree.structure(params):
        missing, extra = sorted(want - got), sorted(got - want)
        detail = []
        if missing:
            detail.append(f"missing {name}{_describe(missing)}")
        if extra:
            detail.append(f"unexpected {name}{_describe(extra)}")
        if not detail:
            detail.append(f"{jax.tree.structure(tree)} vs {jax.tree.structure(params)}")
        raise validation.ValidationError(
            f"{owner}: {name} does not match the structure of params ({'; '.join(detail)})"
        )


def broadcast_like(owner: str, name: str, value: PyTree, params: PyTree) -> PyTree:
    """Expand a per-parameter meta-parameter to the structure of ``params``.

    ``value`` is either one scalar (shared by every entry) or a pytree with the structure of
    ``params`` whose leaves have the shape of the matching parameter or are scalars.
    Mismatches raise ``ValueError`` naming the offending leaf.
    """
    leaves = jax.tree.leaves(value)
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0 and jax.tree.structure(value).num_nodes == 1:
        scalar = leaves[0]
        return tree_map(lambda p: jnp.asarray(scalar, dtype=jnp.result_type(p)), params)
    check_structure(owner, name, value, params)

    def expand(path, v, p):
        if jnp.ndim(v) != 0 and jnp.shape(v) != jnp.shape(p):
            key = jax.tree_util.keystr(path)
            raise validation.ValidationError(
                f"{owner}: {name}{key} has shape {jnp.shape(v)} but params{key} has shape "
                f"{jnp.shape(p)}; expected {jnp.shape(p)} or a scalar"
            )
        return jnp.asarray(v, dtype=jnp.result_type(p))

    return jax.tree_util.tree_map_with_path(expand, value, params)


def check_grads(owner: str, grads: PyTree, params: PyTree) -> None:
    """Gradients must match the parameters leaf by leaf (structure and shapes)."""
    if params is None:
        raise validation.ValidationError(
            f"{owner}: update() needs params (the QP is centred at the current iterate); "
            "call tx.update(grads, state, params)"
        )
    check_structure(owner, "grads", grads, params)
    for (path, g), p in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(params)):
        if jnp.shape(g) != jnp.shape(p):
            key = jax.tree_util.keystr(path)
            raise validation.ValidationError(f"{owner}: grads{key} has shape {jnp.shape(g)} but params{key} has shape {jnp.shape(p)}")


@jax.custom_jvp
def safe_sqrt(x: Array) -> Array:
    r""":math:`\sqrt{x}` whose derivative at :math:`x = 0` is taken as 0 instead of
    :math:`+\infty`. Same values as ``jnp.sqrt``.

    Second moments of parameters that never receive a gradient (a dead input, a blank pixel)
    stay exactly 0 with an exactly-zero tangent, and ``jnp.sqrt``'s JVP there is
    :math:`0 \cdot \infty = \mathrm{NaN}`, which turns a whole meta-gradient into NaN. At
    such a point the moment is 0 for *every* meta-parameter nearby, so the true derivative of
    the composite is 0, which is what this gives (``tests/test_contract.py``, dead input)."""
    return jnp.sqrt(x)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    positive = y > 0
    return y, jnp.where(positive, dx / (2 * jnp.where(positive, y, 1)), jnp.zeros_like(dx))


def global_norm(tree: PyTree) -> Array:
    r""":math:`\lVert g \rVert_2` over a pytree (:func:`safe_sqrt`: derivative 0 at g = 0)."""
    return safe_sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def normalize_gradient(grads: PyTree, eps: float = 1e-12) -> PyTree:
    r"""``g / max(||g||_2, eps)`` over the whole pytree (DCO paper VI-A: inner gradients are
    normalised before the QP so early, ill-scaled meta-parameters stay well-posed)."""
    norm = jnp.maximum(global_norm(grads), eps)
    return tree_map(lambda g: g / norm, grads)


def _all_finite(tree: PyTree):
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def guard_nonfinite(tx: optax.GradientTransformation, max_consecutive: int | None) -> optax.GradientTransformation:
    """Skip steps whose gradients hold NaN/Inf, without a ``lax.cond`` (every builder's guard).

    The documented behaviour of ``optax.apply_if_finite`` (same state,
    ``optax.ApplyIfFiniteState``): a skipped step returns a zero update and leaves the
    inner state unchanged; the state counts it (``notfinite_count``, ``total_notfinite``);
    after ``max_consecutive`` bad steps in a row the update passes through, so a run that has
    truly diverged shows up as NaN parameters. ``None`` disables the guard.

    How: the inner update always runs, on the gradients with a rejected step's entries
    replaced by zeros, and ``jnp.where`` selects its outputs or (zero update, old state).
    ``apply_if_finite`` branches with ``lax.cond``; under ``vmap`` with a batched
    predicate that cond becomes a select whose operands are all broadcast to the batch
    (a DCOGD matrix ``B`` shared by 100 tasks is copied 100 times and the matmul becomes 100
    matvecs; the whole STAR state is selected after both branches ran). Here the shared
    operands stay shared and the selects fuse with the update. Feeding zeros rather than the NaN
    gradients to the discarded branch keeps reverse-mode derivatives finite (``0 * NaN``
    would poison the meta-gradient of a skipped step).
    """
    if max_consecutive is None:
        return tx
    if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 0:
        raise validation.ValidationError(f"max_consecutive_nonfinite must be an int >= 0 or None, got {max_consecutive!r}")

    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True, jnp.bool_),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=tx.init(params),
        )

    def update_fn(grads, state, params=None, **extra_args: Any):
        finite = _all_finite(grads)
        count = jnp.where(finite, jnp.zeros([], jnp.int32), optax.safe_increment(state.notfinite_count))
        accept = jnp.logical_or(finite, count > max_consecutive)
        safe = tree_map(lambda g: jnp.where(accept, g, jnp.zeros_like(g)), grads)
        updates, inner = tx.update(safe, state.inner_state, params, **extra_args)
        updates = tree_map(lambda u: jnp.where(accept, u, jnp.zeros_like(u)), updates)
        inner = tree_map(lambda new, old: jnp.where(accept, new, old), inner, state.inner_state)
        total = jnp.where(finite, state.total_notfinite, optax.safe_increment(state.total_notfinite))
        return updates, optax.ApplyIfFiniteState(count, finite, total, inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ravel_size(params: PyTree) -> int:
    return int(sum(np.prod(jnp.shape(p), dtype=int) for p in jax.tree.leaves(params)))


# --- what makes a builder's rule a full optax citizen ------------------------------------


def plain(tree: PyTree) -> PyTree:
    """``tree`` with flax ``nnx.Variable`` s replaced by their values (``nnx.Optimizer``
    hands ``init`` a ``State`` of ``Param`` variables and ``update`` plain arrays); any
    other pytree unchanged. flax is consulted only when its ``nnx`` is already imported
    (no ``Variable`` can exist otherwise)."""
    nnx = sys.modules.get("flax.nnx")
    return tree if nnx is None else nnx.as_pure(tree)


def _compute_dtype(x: Array):
    """float32 for floating leaves narrower than 32 bits (bfloat16, float16), else the leaf's dtype."""
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.float32
    return dtype


def _upcast(tree: PyTree) -> PyTree:
    return tree_map(lambda x: jnp.asarray(x, _compute_dtype(x)), tree)


def follow_dtypes(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose state and updates keep the dtypes of the parameters.

    ``update`` computes in at least float32 (bfloat16/float16 gradients, params and state
    are upcast, exactly) and casts every new state leaf back to the dtype it had and every
    update to its gradient's dtype. So float32 meta-parameters cannot promote the moments of
    bfloat16 params, a ``jax.lax.scan`` carry keeps its type, and float16 second moments do
    not overflow. For float32 and float64 params nothing is cast: the same program as ``tx``.
    """
    tx = optax.with_extra_args_support(tx)

    def update_fn(grads, state, params=None, **extra_args):
        params_c = None if params is None else _upcast(params)
        updates, new = tx.update(_upcast(grads), _upcast(state), params_c, **extra_args)
        new = tree_map(lambda n, o: jnp.asarray(n, jnp.result_type(o)), new, state)
        updates = tree_map(lambda u, g: jnp.asarray(u, jnp.result_type(g)), updates, grads)
        return updates, new

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


class ScheduledScaleState(NamedTuple):
    """State of :func:`scale_and_decay` with a learning-rate schedule."""

    count: Array  # int32: updates taken (the schedule's argument)
    inner_state: Any


def is_python_number(value: Any, number: float) -> bool:
    """``value`` is a Python int/float (not a bool, not an array) equal to ``number``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == number


def scale_and_decay(
    tx: optax.GradientTransformation, learning_rate: Any = 1.0, weight_decay: Any = 0.0, *, owner: str = "optimizer"
) -> optax.GradientTransformationExtraArgs:
    r"""``tx`` with its update scaled by a learning rate and a decoupled weight decay:

    .. math:: u_t = \eta_t\,(u^{tx}_t - \lambda\,\theta_t)

    (Loshchilov & Hutter, 2019, AdamW: the decay is scaled by the learning rate, as
    ``optax.adamw`` does). ``learning_rate`` :math:`\eta` is a number, a (traced) array or an
    optax schedule ``count -> value`` (then the state is :class:`ScheduledScaleState`,
    counting this transformation's updates); ``weight_decay`` :math:`\lambda \ge 0` a number
    or array. The Python defaults ``1.0`` and ``0.0`` return ``tx`` itself (bit for bit).
    The product is formed in at least float32 and cast back to the update's dtype.
    """
    scheduled = callable(learning_rate)
    decays = not is_python_number(weight_decay, 0.0)
    if not scheduled and is_python_number(learning_rate, 1.0) and not decays:
        return optax.with_extra_args_support(tx)
    if not scheduled:
        validation.check_values(owner, "learning_rate", learning_rate, lambda v: np.isfinite(v), "finite")
    validation.check_values(owner, "weight_decay", weight_decay, lambda v: v >= 0, ">= 0")
    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        inner = tx.init(params)
        return ScheduledScaleState(jnp.zeros([], jnp.int32), inner) if scheduled else inner

    def update_fn(grads, state, params=None, **extra_args):
        if decays and params is None:
            raise validation.ValidationError(f"{owner}: weight_decay needs params; call tx.update(grads, state, params)")
        inner = state.inner_state if scheduled else state
        updates, inner = tx.update(grads, inner, params, **extra_args)
        eta = learning_rate(state.count) if scheduled else learning_rate

        def one(u, p):
            dtype = _compute_dtype(u)
            step = u.astype(dtype)
            if decays:
                step = step - jnp.asarray(weight_decay, dtype) * jnp.asarray(p, dtype)
            return (jnp.asarray(eta, dtype) * step).astype(jnp.result_type(u))

        updates = tree_map(one, updates, params if decays else updates)
        if scheduled:
            return updates, ScheduledScaleState(optax.safe_increment(state.count), inner)
        return updates, inner

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def finish(
    core: optax.GradientTransformation,
    *,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
    max_consecutive_nonfinite: int | None = None,
    owner: str = "optimizer",
) -> optax.GradientTransformationExtraArgs:
    """A builder's rule as the public transformation every builder returns: states and
    updates in the params' dtypes (:func:`follow_dtypes`), the learning-rate scale and
    decoupled weight decay (:func:`scale_and_decay`), the non-finite guard
    (:func:`guard_nonfinite`; a skipped step also skips the decay), ``update`` accepting
    extra arguments such as ``value=loss`` (an ``optax.GradientTransformationExtraArgs``)
    and ``init`` accepting a flax ``nnx`` ``State`` (:func:`plain`)."""
    tx = scale_and_decay(follow_dtypes(core), learning_rate, weight_decay, owner=owner)
    tx = optax.with_extra_args_support(guard_nonfinite(tx, max_consecutive_nonfinite))

    def init_fn(params):
        return tx.init(plain(params))

    def update_fn(grads, state, params=None, **extra_args):
        return tx.update(plain(grads), state, None if params is None else plain(params), **extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
