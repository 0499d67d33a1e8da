r"""Meta mirror descent: mirror descent with a learned quadratic Bregman divergence.

MetaMD (Gao, Sibirtsev, Hospedales et al., "MetaMD: Principled optimiser meta-learning for
deep learning"). Mirror descent with the mirror map :math:`\psi(\theta) = \tfrac12
\theta^\top M\theta` takes the step

.. math::
    \theta^+ = \arg\min_\theta\; \eta\, g^\top\theta + D_\psi(\theta, \theta_t),
    \qquad D_\psi(\theta, \theta_t) = \tfrac12 (\theta-\theta_t)^\top M (\theta-\theta_t),

which is exactly a DCO step (a convex QP in :math:`d = \theta - \theta_t`) with linear term
:math:`g` and curvature :math:`M/\eta`: :math:`d = -\eta M^{-1} g`. MetaMD factorises
:math:`M` per parameter tensor:

* a weight of shape ``(..., n)`` is viewed as a matrix :math:`G` of shape ``(m, n)``
  (``m`` = product of the leading dimensions) with :math:`M = A \otimes B`, ``A`` (m x m)
  and ``B`` (n x n) symmetric positive definite, so the step is
  :math:`D = -\eta\, A^{-1} G B^{-1}` (:class:`learned_dco.qp.Kronecker`: two small
  Cholesky solves instead of one of size ``m n``);
* vectors and scalars (biases) get a diagonal :math:`M = \mathrm{diag}(d)`, :math:`d > 0`.

The QP is solved by :func:`learned_dco.qp.solve_qp` (``solver="exact"``: the structured
operator's own solve inside ``jaxopt``'s ``custom_root``), so meta-gradients with respect
to :math:`A`, :math:`B`, :math:`d` and :math:`\eta` come from implicit differentiation of
the step. ``A = B = I``, ``d = 1`` is gradient descent with step :math:`\eta`.

:class:`MetaMD` is the learned optimizer: :math:`A = L_A L_A^\top` with :math:`L_A` lower
triangular with a positive (``exp``) diagonal -- positive definite for every real
meta-parameter value -- likewise :math:`B`, :math:`d = \exp(\cdot)` and
:math:`\eta = \exp(\cdot)`; initialised at ``L = I`` so that MetaMD starts as GD. Its
meta-parameters have the shapes of one model (like DCOG's); on another model ``init``
raises ``ValueError``. Meta-objectives: the loss after ``T`` steps
(:class:`learned_dco.meta.FullUnroll`) or the mirror-descent regret bound without
validation data (:class:`learned_dco.meta.RegretBound`), which uses
:meth:`MetaMD.divergence`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_dco import qp
from learned_dco.optimizers.base import finish, plain
from learned_dco.optimizers.dco import LOG_CLIP, resolve_solver
from learned_dco.optimizers.general import GeneralDCOState, StepQP, general_dco
from learned_dco.types import Array, MetaParams, Params, PRNGKey, PyTree
from learned_dco.validation import check_values, is_concrete
from learned_dco.validation import ValidationError

tree_map = jax.tree.map


class MirrorState(GeneralDCOState):
    """State of :func:`metamd_transform` (``inner`` is ``()``)."""


def _is_factor(node) -> bool:
    return isinstance(node, (qp.Kronecker, qp.Diagonal))


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The ``(m, n)`` matrix view of a tensor of shape ``(..., n)`` (ndim >= 2)."""
    return int(np.prod(shape[:-1], dtype=int)), int(shape[-1])


def _as_factor(node):
    return node if _is_factor(node) else qp.Diagonal(jnp.asarray(node))


def _check_factors(owner: str, factors: PyTree, params: Params) -> PyTree:
    """``factors`` as operator leaves matching ``params`` leaf by leaf (ValueError if not)."""
    f_leaves, f_def = jax.tree.flatten(factors, is_leaf=_is_factor)
    p_paths, p_def = jax.tree_util.tree_flatten_with_path(params)
    if f_def != p_def:
        raise ValueError(
            f"{owner}: factors do not match the structure of params ({f_def} vs {p_def}); give one "
            "Kronecker(A, B) per weight tensor and one Diagonal(d) (or array d) per vector/scalar"
        )
    out = []
    for (path, p), f in zip(p_paths, f_leaves):
        key, shape = jax.tree_util.keystr(path), jnp.shape(p)
        f = _as_factor(f)
        if isinstance(f, qp.Kronecker):
            if len(shape) < 2:
                raise ValueError(f"{owner}: params{key} has shape {shape}; a Kronecker factor needs ndim >= 2")
            m, n = matrix_shape(shape)
            if jnp.shape(f.left) != (m, m) or jnp.shape(f.right) != (n, n):
                raise ValueError(
                    f"{owner}: factors{key} must be Kronecker(A ({m}, {m}), B ({n}, {n})) for params of shape "
                    f"{shape}, got A {jnp.shape(f.left)} and B {jnp.shape(f.right)}"
                )
        elif jnp.ndim(f.d) != 0 and jnp.shape(f.d) != shape:
            raise ValueError(f"{owner}: factors{key} diagonal has shape {jnp.shape(f.d)}; expected {shape} or ()")
        out.append(f)
    return jax.tree.unflatten(p_def, out)


def _check_spd(owner: str, factors: PyTree) -> None:
    """Concrete factors must be symmetric positive definite (diagonals positive)."""
    for path, f in jax.tree_util.tree_flatten_with_path(factors, is_leaf=_is_factor)[0]:
        key = jax.tree_util.keystr(path)
        f = _as_factor(f)
        if isinstance(f, qp.Diagonal):
            check_values(owner, f"factors{key}", f.d, lambda v: v > 0, "> 0")
            continue
        for side, mat in (("A", f.left), ("B", f.right)):
            check_values(owner, f"factors{key}.{side}", mat, lambda v: np.ones_like(v, bool), "finite")
            if not is_concrete(mat):
                continue
            a = np.asarray(mat, np.float64)
            if not np.allclose(a, a.T, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(a).max())):
                raise ValueError(f"{owner}: factors{key}.{side} must be symmetric")
            try:
                np.linalg.cholesky(a)
            except np.linalg.LinAlgError:
                raise ValueError(f"{owner}: factors{key}.{side} must be positive definite") from None


def _to_blocks(tree: PyTree, factors: PyTree) -> PyTree:
    """Reshape every leaf with a Kronecker factor to its ``(m, n)`` matrix view."""
    return tree_map(
        lambda f, x: x.reshape(matrix_shape(x.shape)) if isinstance(f, qp.Kronecker) else x,
        factors, tree, is_leaf=_is_factor,
    )


def _from_blocks(tree: PyTree, like: Params) -> PyTree:
    return tree_map(lambda x, p: x.reshape(jnp.shape(p)), tree, like)


def _scaled_operator(factors: PyTree, eta: Array, dtype) -> qp.BlockDiagonal:
    """``M / eta`` as a block-diagonal structured operator."""
    inv = (1.0 / jnp.asarray(eta)).astype(dtype)

    def scale(f):
        if isinstance(f, qp.Kronecker):
            return qp.Kronecker(inv * f.left.astype(dtype), f.right.astype(dtype))
        return qp.Diagonal(inv * jnp.asarray(f.d, dtype))

    return qp.BlockDiagonal(tree_map(scale, factors, is_leaf=_is_factor))


def bregman(factors: PyTree, delta: Params) -> Array:
    r""":math:`D_\psi(\theta + \delta, \theta) = \tfrac12 \delta^\top M \delta` for the
    factorised :math:`M` (``factors`` matching ``delta`` as in :func:`metamd_transform`)."""
    factors = _check_factors("bregman", factors, delta)
    blocks = _to_blocks(delta, factors)
    op = qp.BlockDiagonal(factors)
    Md = op.matvec(blocks)
    return 0.5 * sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(blocks), jax.tree.leaves(Md)))


def metamd_transform(
    factors: PyTree,
    eta: Array,
    *,
    normalize: bool = False,
    solver: qp.SolverLike = "exact",
    max_consecutive_nonfinite: int | None = 10,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Mirror descent with :math:`\psi(\theta) = \tfrac12\theta^\top M\theta`, one QP per step:

    .. math::
        \theta^+ = \theta_t + \arg\min_d\; g^\top d + \tfrac{1}{2\eta} d^\top M d
        = \theta_t - \eta M^{-1} g,

    with :math:`M` block diagonal over parameter tensors: :math:`A\otimes B` on a weight's
    matrix view (update :math:`-\eta A^{-1} G B^{-1}`), :math:`\mathrm{diag}(d)` elsewhere.

    Args:
      factors: a pytree with the structure of params whose leaves are
        :class:`learned_dco.qp.Kronecker` ``(A, B)`` for tensors of shape ``(..., n)``
        (``A``: ``(m, m)`` with ``m`` the product of the leading dims, ``B``: ``(n, n)``,
        both symmetric positive definite) or :class:`learned_dco.qp.Diagonal` / an array
        ``d > 0`` (shape of the tensor, or a scalar).
      eta: the step size :math:`\eta > 0` (scalar).
      normalize: divide the gradient by its global norm first (DCO paper VI-A).
      solver: QP backend, a :class:`learned_dco.qp.QPSolver` value or its name;
        ``"exact"`` uses the Kronecker/diagonal solves, ``qp.EqQP(...)`` a Krylov solve. The
        step is unconstrained, so the box backends (OSQP, CDQP) work too but are slower.
      max_consecutive_nonfinite: non-finite-gradient guard (see :mod:`learned_dco.optimizers.dco`).
      learning_rate, weight_decay: a scale on the step (number, array or optax schedule) and
        decoupled weight decay, :math:`u = \eta\,(d - \lambda\theta_t)` (as in
        :func:`learned_dco.dcog_transform`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params)`` needs
      params. bfloat16/float16 params are solved in float32 and keep their state dtypes.

    Example:
      >>> factors = {"w": qp.Kronecker(jnp.eye(3), jnp.eye(2)), "b": jnp.ones(2)}
      >>> tx = metamd_transform(factors, 0.1)  # GD with step 0.1
    """
    owner = "metamd"
    check_values(owner, "eta", eta, lambda v: (v > 0) & (np.ndim(v) == 0), "a positive scalar")
    _check_spd(owner, factors)

    def init_state(params):
        _check_factors(owner, factors, params)
        return ()

    def step(meta, g, params, state):
        factors, eta = meta
        f = _check_factors(owner, factors, params)
        dtype = jnp.result_type(*jax.tree.leaves(params))
        return StepQP(_scaled_operator(f, eta, dtype), _to_blocks(g, f)), state

    # The step is solved in the blocks' (m, n) matrix views; the update is reshaped back.
    tx = general_dco((factors, eta), step, init_state=init_state, solver=qp.as_solver(solver), normalize=normalize,
                     max_consecutive_nonfinite=None, owner=owner, state_type=MirrorState)

    def update_fn(grads, state, params=None, **extra_args):
        blocks, state = tx.update(grads, state, params, **extra_args)
        return _from_blocks(blocks, params), state

    return finish(optax.GradientTransformationExtraArgs(tx.init, update_fn), learning_rate=learning_rate,
                  weight_decay=weight_decay, max_consecutive_nonfinite=max_consecutive_nonfinite, owner=owner)


# ------------------------------------------------------------------------------------------
# The learned optimizer
# ------------------------------------------------------------------------------------------


class KroneckerRaw(NamedTuple):
    """Unconstrained meta-parameters of one Kronecker factor pair."""

    left: Array  # (m, m): strict lower triangle + log-diagonal of L_A (upper part unused)
    right: Array  # (n, n): likewise for L_B


class DiagonalRaw(NamedTuple):
    """Unconstrained meta-parameters of a diagonal block: ``d = exp(log_d)``."""

    log_d: Array  # shape of the parameter


def _is_raw(node) -> bool:
    return isinstance(node, (KroneckerRaw, DiagonalRaw))


def spd_from_raw(raw: Array) -> Array:
    r""":math:`L L^\top` with :math:`L = \mathrm{tril}(raw, -1) + \mathrm{diag}(e^{\mathrm{diag}(raw)})`
    (diagonal clipped to ``[-LOG_CLIP/2, LOG_CLIP/2]`` in log space): symmetric positive
    definite for every real ``raw``; ``raw = 0`` gives the identity."""
    diag = jnp.exp(jnp.clip(jnp.diagonal(raw), -LOG_CLIP / 2, LOG_CLIP / 2))
    L = jnp.tril(raw, -1) + jnp.diag(diag)
    return L @ L.T


@dataclasses.dataclass(frozen=True)
class MetaMD:
    r"""Learned :func:`metamd_transform` (module docstring).

    Meta-parameters: ``{"log_eta": (), "factors": tree like params}`` with a
    :class:`KroneckerRaw` for every tensor of ndim >= 2 and a :class:`DiagonalRaw` for the
    rest; :math:`\eta = e^{\text{log\_eta}}`, ``A = spd_from_raw(left)`` etc.

    Attributes:
      learning_rate: the initial step :math:`\eta` (MetaMD starts as GD with this step).
      normalize, solver, max_consecutive_nonfinite: as in :func:`metamd_transform`.
      tol, maxiter: YAML shorthands folded into the solver value at construction.
    """

    learning_rate: float = 0.1
    normalize: bool = False
    solver: str | qp.QPSolver = "exact"
    tol: float | None = None
    maxiter: int | None = None
    max_consecutive_nonfinite: int | None = 10

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValidationError(f"MetaMD.learning_rate must be > 0, got {self.learning_rate!r}", field="learning_rate")
        object.__setattr__(self, "solver", resolve_solver("MetaMD", self.solver, self.tol, self.maxiter))

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        del key
        params = plain(params)
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32

        def one(p):
            shape = jnp.shape(p)
            if len(shape) >= 2:
                m, n = matrix_shape(shape)
                return KroneckerRaw(jnp.zeros((m, m), dtype), jnp.zeros((n, n), dtype))
            return DiagonalRaw(jnp.zeros(shape, dtype))

        return {"log_eta": jnp.asarray(math.log(self.learning_rate), dtype), "factors": tree_map(one, params)}

    def eta(self, meta: MetaParams) -> Array:
        return jnp.exp(jnp.clip(meta["log_eta"], -LOG_CLIP, LOG_CLIP))

    def factors(self, meta: MetaParams) -> PyTree:
        """The positive-definite factors (``qp.Kronecker`` / ``qp.Diagonal`` leaves)."""

        def one(raw):
            if isinstance(raw, KroneckerRaw):
                return qp.Kronecker(spd_from_raw(raw.left), spd_from_raw(raw.right))
            return qp.Diagonal(jnp.exp(jnp.clip(raw.log_d, -LOG_CLIP, LOG_CLIP)))

        return tree_map(one, meta["factors"], is_leaf=_is_raw)

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
        """The :func:`metamd_transform` of ``meta``; ``learning_rate`` / ``weight_decay`` as there."""
        return metamd_transform(
            self.factors(meta), self.eta(meta), normalize=self.normalize, solver=self.solver,
            max_consecutive_nonfinite=self.max_consecutive_nonfinite, learning_rate=learning_rate,
            weight_decay=weight_decay,
        )

    def divergence(self, meta: MetaParams, delta: Params) -> Array:
        r""":math:`D_\psi(\theta+\delta, \theta)/\eta = \tfrac{1}{2\eta}\delta^\top M\delta`:
        the first term of the mirror-descent regret bound (:class:`learned_dco.meta.RegretBound`)."""
        return bregman(self.factors(meta), delta) / self.eta(meta)
