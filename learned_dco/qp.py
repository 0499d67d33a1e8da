r"""The QP step layer: convex quadratic programs with implicit differentiation.

Every DCO update step (Gautam, Pfrommer & Sojoudi, section IV) is the convex QP

.. math::

    x^\star(Q, c, l, u) = \arg\min_x \tfrac12 x^\top Q x + c^\top x
    \quad \text{s.t.} \quad l \le x \le u \quad (\text{optional}),

where ``x`` is the parameter *update* ``theta_next - theta_t`` (a pytree shaped like the
parameters), ``c`` the (transformed) gradient and ``Q`` a positive-definite curvature.

``Q`` is a *structured operator* (:class:`Diagonal`, :class:`ScaledIdentity`,
:class:`Dense`, :class:`Kronecker`, :class:`BlockDiagonal`) that knows its own exact
``matvec`` and ``solve``, so the forward solve and the linear system of the implicit
function theorem are exact and cheap.

Backends are small frozen values that carry their own options and say which constraint
kinds they handle (``solver=`` takes a value or its YAML name; :func:`as_solver`), all
through jaxopt, all jit- and vmap-compatible:

* :class:`Exact` (``"exact"``, default): the operator's own solve, wrapped in
  :func:`jaxopt.implicit_diff.custom_root`. The optimality condition is written in
  *preconditioned* form :math:`F(x) = Q^{-1}(Qx + c) = x + Q^{-1}c` (for box constraints
  with a separable ``Q``: :math:`F(x) = x - \Pi_{[l,u]}(-Q^{-1}c)`), whose Jacobian in ``x``
  is the identity. The implicit-differentiation linear system is therefore solved exactly at
  no cost, and the derivative with respect to ``(Q, c, l, u)`` flows through the operator's
  exact solve. Box constraints need a separable (diagonal) ``Q`` here.
* :class:`EqQP` (``"eqqp"``): :class:`jaxopt.EqualityConstrainedQP` (unconstrained
  problems), with a tight Krylov solve forward and backward.
* :class:`OSQP` (``"osqp"``): :class:`jaxopt.BoxOSQP` (box constraints, any ``Q``), with an
  exact dense ``implicit_diff_solve``: jaxopt's default iterative solve is loose at active
  constraints.
* :class:`CDQP` (``"cdqp"``): :class:`jaxopt.BoxCDQP` (box constraints; materialises ``Q``
  as a dense matrix, so for moderate sizes only).

An optimizer checks its constraints against its solver when it is built
(:meth:`QPSolver.require`), so an impossible combination fails there, naming both.

Failures are reported, not raised: :class:`QPSolution` carries the fixed-point residual
:math:`\|x - \Pi_{[l,u]}(x - (Qx + c))\|_\infty` (zero exactly at the optimum) and the
iteration count, so a caller can inspect them inside ``jit``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, ClassVar, NamedTuple, Union

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

with warnings.catch_warnings():
    # jaxopt is archived (0.8.5 is final) but works with current jax; keep it behind this
    # module so a backend can be swapped, and silence only its import-time notice.
    warnings.filterwarnings(
        "ignore", message="JAXopt is no longer maintained", category=DeprecationWarning
    )
    import jaxopt
    from jaxopt import linear_solve
    from jaxopt.implicit_diff import custom_root

from learned_dco.types import Array, PyTree

tree_map = jax.tree.map


# ------------------------------------------------------------------------------------------
# Structured curvature operators
# ------------------------------------------------------------------------------------------


class Diagonal(NamedTuple):
    r"""``Q = diag(d)`` with ``d > 0``; ``d`` is a pytree shaped like ``x`` (leaves may be
    scalars, which broadcast over their leaf). Separable, so box-constrained problems have
    the closed form :math:`x = \Pi_{[l,u]}(-c / d)`."""

    d: PyTree

    separable = True

    def matvec(self, x: PyTree) -> PyTree:
        return tree_map(lambda d, v: d * v, self.d, x)

    def solve(self, b: PyTree) -> PyTree:
        return tree_map(lambda d, v: v / d, self.d, b)

    def to_dense(self, x: PyTree) -> Array:
        diag = tree_map(lambda d, v: jnp.broadcast_to(d, jnp.shape(v)).astype(v.dtype), self.d, x)
        return jnp.diag(ravel_pytree(diag)[0])


class ScaledIdentity(NamedTuple):
    """``Q = s I`` with a scalar ``s > 0`` (``s = 1``: the DCOGD proximity term)."""

    scale: Array = 1.0  # type: ignore[assignment]

    separable = True

    def matvec(self, x: PyTree) -> PyTree:
        return tree_map(lambda v: self.scale * v, x)

    def solve(self, b: PyTree) -> PyTree:
        return tree_map(lambda v: v / self.scale, b)

    def to_dense(self, x: PyTree) -> Array:
        flat = ravel_pytree(x)[0]
        return self.scale * jnp.eye(flat.size, dtype=flat.dtype)


class Dense(NamedTuple):
    """``Q`` a symmetric positive-definite ``(p, p)`` matrix acting on the ravelled ``x``.

    ``solve`` uses a Cholesky factorisation (differentiable through ``jax.scipy``)."""

    matrix: Array

    separable = False

    def matvec(self, x: PyTree) -> PyTree:
        flat, unravel = ravel_pytree(x)
        return unravel(self.matrix @ flat)

    def solve(self, b: PyTree) -> PyTree:
        flat, unravel = ravel_pytree(b)
        factor = jax.scipy.linalg.cho_factor(self.matrix)
        return unravel(jax.scipy.linalg.cho_solve(factor, flat))

    def to_dense(self, x: PyTree) -> Array:
        del x
        return self.matrix


class Kronecker(NamedTuple):
    r"""``Q = A \otimes B`` on one matrix-shaped leaf ``X`` of shape ``(m, n)``.

    With row-major vectorisation, :math:`(A \otimes B)\,\mathrm{vec}(X) = \mathrm{vec}(A X B)`
    for symmetric ``A`` (m x m) and ``B`` (n x n), and the inverse is
    :math:`X \mapsto A^{-1} X B^{-1}`: two small Cholesky solves instead of one of size
    ``m n``. Both factors must be symmetric positive definite (then so is ``Q``)."""

    left: Array
    right: Array

    separable = False

    def matvec(self, x: Array) -> Array:
        return self.left @ x @ self.right

    def solve(self, b: Array) -> Array:
        cho = jax.scipy.linalg
        left = cho.cho_solve(cho.cho_factor(self.left), b)
        return cho.cho_solve(cho.cho_factor(self.right), left.T).T

    def to_dense(self, x: Array) -> Array:
        del x
        return jnp.kron(self.left, self.right)


def is_operator(node: Any) -> bool:
    return isinstance(node, (Diagonal, ScaledIdentity, Dense, Kronecker, BlockDiagonal))


class BlockDiagonal(NamedTuple):
    """One operator per leaf of ``x``: ``blocks`` has the structure of ``x`` with each leaf
    replaced by an operator acting on that leaf (e.g. :class:`Kronecker` for weight
    matrices, :class:`Diagonal` for biases). Separable iff every block is."""

    blocks: PyTree

    @property
    def separable(self) -> bool:  # type: ignore[override]
        leaves = jax.tree.leaves(self.blocks, is_leaf=is_operator)
        return all(op.separable for op in leaves)

    def matvec(self, x: PyTree) -> PyTree:
        return tree_map(lambda op, v: op.matvec(v), self.blocks, x, is_leaf=is_operator)

    def solve(self, b: PyTree) -> PyTree:
        return tree_map(lambda op, v: op.solve(v), self.blocks, b, is_leaf=is_operator)

    def to_dense(self, x: PyTree) -> Array:
        mats = jax.tree.leaves(
            tree_map(lambda op, v: op.to_dense(v), self.blocks, x, is_leaf=is_operator)
        )
        return jax.scipy.linalg.block_diag(*mats)


# ------------------------------------------------------------------------------------------
# Solvers as values
# ------------------------------------------------------------------------------------------

#: Constraint kinds a problem may carry: ``"box"`` (``lo <= x <= hi``).
CONSTRAINT_KINDS = ("box",)


@dataclasses.dataclass(frozen=True)
class QPSolver:
    """Base of the QP backends: a small frozen value that carries its own options and says
    which constraint kinds it handles (``handles``). Every problem without constraints is
    handled by every backend."""

    name: ClassVar[str] = ""
    handles: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        for field in ("tol", "maxiter"):
            value = getattr(self, field, None)
            if value is None:
                continue
            if field == "maxiter" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"qp.{type(self).__name__}.maxiter must be an int >= 1 or None, got {value!r}")
            if field == "tol" and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"qp.{type(self).__name__}.tol must be a float > 0 or None, got {value!r}")

    def supports(self, *kinds: str) -> bool:
        return set(kinds) <= self.handles

    def require(self, kinds, *, owner: str, setting: str) -> None:
        """Raise ``ValueError`` naming ``setting`` and this solver if a constraint kind in
        ``kinds`` is not handled (called when an optimizer is built)."""
        missing = sorted(set(kinds) - self.handles)
        if missing:
            able = [n for n, cls in SOLVERS.items() if set(kinds) <= cls.handles]
            raise ValueError(
                f"{owner}: {setting} needs {'/'.join(missing)} constraints, which solver={self.name!r} "
                f"(qp.{type(self).__name__}) does not support; use one of {tuple(able)}"
            )

    def with_options(self, **options) -> "QPSolver":
        """A copy with the given options replaced (``None`` values are ignored)."""
        options = {k: v for k, v in options.items() if v is not None}
        if not options:
            return self
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"qp.{type(self).__name__} has no option {', '.join(unknown)} (options: {sorted(names) or 'none'})")
        return dataclasses.replace(self, **options)

    def solve(self, Q, c, lo, hi) -> tuple[PyTree, Array]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Exact(QPSolver):
    r"""The operator's own exact solve inside ``custom_root`` (module docstring). Boxes
    only for a separable (diagonal) curvature: :math:`x = \Pi_{[l,u]}(-Q^{-1}c)`."""

    name: ClassVar[str] = "exact"
    handles: ClassVar[frozenset[str]] = frozenset({"box"})

    def solve(self, Q, c, lo, hi):
        if (lo is not None or hi is not None) and not Q.separable:
            raise ValueError(
                "the 'exact' QP backend handles box constraints only for a separable "
                f"(diagonal) curvature, got {type(Q).__name__}; use solver='osqp' or 'cdqp'"
            )
        return _exact_root(c, Q, c, lo, hi), jnp.zeros((), jnp.int32)


@dataclasses.dataclass(frozen=True)
class EqQP(QPSolver):
    """:class:`jaxopt.EqualityConstrainedQP` with a tight GMRES solve forward and backward.

    Attributes:
      tol: GMRES tolerance (default 1e-12 in float64, 1e-7 in float32).
      maxiter: GMRES iterations (default 10 x the number of unknowns).
    """

    name: ClassVar[str] = "eqqp"
    tol: float | None = None
    maxiter: int | None = None

    def solve(self, Q, c, lo, hi):
        del lo, hi
        return _solve_eqqp(Q, c, self.tol, self.maxiter)


@dataclasses.dataclass(frozen=True)
class OSQP(QPSolver):
    """:class:`jaxopt.BoxOSQP` (any curvature) with an exact dense implicit-differentiation
    solve (jaxopt's default iterative one is loose at active constraints).

    Attributes:
      tol: stopping tolerance (default 1e-12 in float64, 1e-6 in float32).
      maxiter: ADMM iterations (default 20000).
    """

    name: ClassVar[str] = "osqp"
    handles: ClassVar[frozenset[str]] = frozenset({"box"})
    tol: float | None = None
    maxiter: int | None = None

    def solve(self, Q, c, lo, hi):
        return _solve_osqp(Q, c, lo, hi, self.tol, self.maxiter)


@dataclasses.dataclass(frozen=True)
class CDQP(QPSolver):
    """:class:`jaxopt.BoxCDQP`: coordinate descent on the materialised dense ``Q`` (moderate
    sizes only).

    Attributes:
      tol: stopping tolerance (default 1e-12 in float64, 1e-7 in float32).
      maxiter: sweeps (default 1000).
    """

    name: ClassVar[str] = "cdqp"
    handles: ClassVar[frozenset[str]] = frozenset({"box"})
    tol: float | None = None
    maxiter: int | None = None

    def solve(self, Q, c, lo, hi):
        return _solve_cdqp(Q, c, lo, hi, self.tol, self.maxiter)


#: YAML/CLI name -> solver class (``as_solver`` maps names to default-option values).
SOLVERS: dict[str, type[QPSolver]] = {cls.name: cls for cls in (Exact, EqQP, OSQP, CDQP)}

SolverLike = Union[str, QPSolver]


def as_solver(solver: SolverLike) -> QPSolver:
    """A solver value from a name (``"exact"``, ``"eqqp"``, ``"osqp"``, ``"cdqp"``: default
    options) or a :class:`QPSolver` value (returned as is)."""
    if isinstance(solver, QPSolver):
        return solver
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise ValueError(f"unknown QP solver {solver!r}; expected one of {tuple(SOLVERS)} or a qp.QPSolver value")
        return SOLVERS[solver]()
    raise TypeError(f"solver must be a name {tuple(SOLVERS)} or a qp.QPSolver value, got {type(solver).__name__}")


# ------------------------------------------------------------------------------------------
# Solutions and the public entry point
# ------------------------------------------------------------------------------------------


class QPSolution(NamedTuple):
    """A QP solution with diagnostics (never raised inside ``jit``)."""

    x: PyTree  # the minimiser, shaped like c
    residual: Array  # ||x - proj(x - (Qx + c))||_inf; 0 at the optimum
    iterations: Array  # solver iterations (0 for the exact backend)


def _project(x: PyTree, lo: PyTree | None, hi: PyTree | None) -> PyTree:
    if lo is None and hi is None:
        return x
    lo = tree_map(lambda v: jnp.full_like(v, -jnp.inf), x) if lo is None else lo
    hi = tree_map(lambda v: jnp.full_like(v, jnp.inf), x) if hi is None else hi
    return tree_map(lambda v, a, b: jnp.clip(v, a, b), x, lo, hi)


def fixed_point_residual(Q: Any, c: PyTree, x: PyTree, lo=None, hi=None) -> Array:
    """``||x - proj(x - (Qx + c))||_inf``: zero exactly at the (box-constrained) optimum."""
    grad = tree_map(jnp.add, Q.matvec(x), c)
    step = _project(tree_map(jnp.subtract, x, grad), lo, hi)
    diffs = [jnp.max(jnp.abs(a - b), initial=0.0) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(step))]
    return jax.lax.stop_gradient(jnp.max(jnp.stack(diffs)))


def solve_qp(
    Q: Any,
    c: PyTree,
    *,
    lo: PyTree | None = None,
    hi: PyTree | None = None,
    solver: SolverLike = "exact",
) -> QPSolution:
    r"""Solve :math:`\min_x \tfrac12 x^\top Q x + c^\top x` s.t. ``lo <= x <= hi``.

    Args:
      Q: a structured operator (positive definite).
      c: the linear term, any pytree of float arrays.
      lo, hi: optional bounds shaped like ``c`` (``-inf``/``inf`` allowed); give both or one.
      solver: a :class:`QPSolver` value (``Exact()``, ``EqQP(tol, maxiter)``, ``OSQP(...)``,
        ``CDQP(...)``) or its name; the value carries its own options.

    Returns:
      A :class:`QPSolution`. Gradients with respect to ``Q``'s arrays, ``c``, ``lo`` and
      ``hi`` come from the implicit function theorem.
    """
    solver = as_solver(solver)
    if lo is not None or hi is not None:
        solver.require(("box",), owner="solve_qp", setting="lo/hi")
    x, iters = solver.solve(Q, c, lo, hi)
    return QPSolution(x, fixed_point_residual(Q, c, x, lo, hi), iters)


# ------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------


def _identity_solve(matvec, b):
    """The linear solve of the implicit function theorem when dF/dx = I."""
    del matvec
    return b


def _exact_optimality(x, Q, c, lo, hi):
    # Preconditioned optimality condition: Jacobian in x is the identity.
    target = _project(tree_map(jnp.negative, Q.solve(c)), lo, hi)
    return tree_map(jnp.subtract, x, target)


@custom_root(_exact_optimality, solve=_identity_solve)
def _exact_root(init, Q, c, lo, hi):
    del init
    return jax.lax.stop_gradient(_project(tree_map(jnp.negative, Q.solve(c)), lo, hi))


def _default_tol(dtype) -> float:
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-7


def _flat_problem(Q, c):
    """Ravel ``c`` and wrap ``Q`` as a matvec on flat vectors (jaxopt works on arrays)."""
    flat_c, unravel = ravel_pytree(c)

    def matvec_Q(op, v):
        return ravel_pytree(op.matvec(unravel(v)))[0]

    return flat_c, unravel, matvec_Q


def _solve_eqqp(Q, c, tol, maxiter):
    flat_c, unravel, matvec_Q = _flat_problem(Q, c)
    tol = _default_tol(flat_c.dtype) if tol is None else tol
    maxiter = 10 * flat_c.size if maxiter is None else maxiter
    qp = jaxopt.EqualityConstrainedQP(
        matvec_Q=matvec_Q,
        solve=linear_solve.solve_gmres,
        tol=tol,
        maxiter=maxiter,
        implicit_diff_solve=functools.partial(linear_solve.solve_gmres, tol=tol, maxiter=maxiter),
    )
    no_rows = (jnp.zeros((0, flat_c.size), flat_c.dtype), jnp.zeros((0,), flat_c.dtype))
    sol = qp.run(params_obj=(Q, flat_c), params_eq=no_rows).params
    return unravel(sol.primal), jnp.zeros((), jnp.int32)


def _flat_bounds(c, lo, hi):
    lo = tree_map(lambda v: jnp.full_like(v, -jnp.inf), c) if lo is None else lo
    hi = tree_map(lambda v: jnp.full_like(v, jnp.inf), c) if hi is None else hi
    flat = lambda b: ravel_pytree(tree_map(lambda v, ref: jnp.broadcast_to(v, ref.shape).astype(ref.dtype), b, c))[0]
    return flat(lo), flat(hi)


def _dense_solve(matvec, b):
    """Exact dense solve of the implicit-differentiation system (materialised from its
    matvec, any pytree). jaxopt's default iterative solve is too loose at active box
    constraints; the system is small (a few times the number of parameters)."""
    flat_b, unravel = ravel_pytree(b)

    def flat_matvec(v):
        return ravel_pytree(matvec(unravel(v)))[0]

    eye = jnp.eye(flat_b.size, dtype=flat_b.dtype)
    matrix = jax.vmap(flat_matvec, in_axes=1, out_axes=1)(eye)
    return unravel(jnp.linalg.solve(matrix, flat_b))


def _solve_osqp(Q, c, lo, hi, tol, maxiter):
    flat_c, unravel, matvec_Q = _flat_problem(Q, c)
    flo, fhi = _flat_bounds(c, lo, hi)
    tol = (1e-12 if flat_c.dtype == jnp.float64 else 1e-6) if tol is None else tol
    qp = jaxopt.BoxOSQP(
        matvec_Q=matvec_Q,
        matvec_A=lambda _, v: v,
        tol=tol,
        maxiter=20000 if maxiter is None else maxiter,
        check_primal_dual_infeasability=False,
        implicit_diff_solve=_dense_solve,
    )
    sol, state = qp.run(params_obj=(Q, flat_c), params_eq=None, params_ineq=(flo, fhi))
    return unravel(sol.primal[0]), state.iter_num


def _solve_cdqp(Q, c, lo, hi, tol, maxiter):
    flat_c, unravel, _ = _flat_problem(Q, c)
    flo, fhi = _flat_bounds(c, lo, hi)
    tol = _default_tol(flat_c.dtype) if tol is None else tol
    qp = jaxopt.BoxCDQP(tol=tol, maxiter=1000 if maxiter is None else maxiter)
    dense_q = Q.to_dense(c)
    init = jnp.clip(jnp.zeros_like(flat_c), flo, fhi)
    sol, state = qp.run(init, params_obj=(dense_q, flat_c), params_ineq=(flo, fhi))
    return unravel(sol), state.iter_num
