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
jit- and vmap-compatible:

* :class:`Exact` (``"exact"``, default): the operator's own solve, wrapped in
  :func:`jaxopt.implicit_diff.custom_root`. The optimality condition is written in
  *preconditioned* form :math:`F(x) = Q^{-1}(Qx + c) = x + Q^{-1}c` (for box constraints
  with a separable ``Q``: :math:`F(x) = x - \Pi_{[l,u]}(-Q^{-1}c)`), whose Jacobian in ``x``
  is the identity. The implicit-differentiation linear system is therefore solved exactly at
  no cost, and the derivative with respect to ``(Q, c, l, u)`` flows through the operator's
  exact solve. Box constraints need a separable (diagonal) ``Q`` here.
* :class:`EqQP` (``"eqqp"``): :class:`jaxopt.EqualityConstrainedQP` (unconstrained and
  equality-constrained problems), with a tight Krylov solve forward and backward.
* :class:`OSQP` (``"osqp"``): :class:`jaxopt.BoxOSQP` (any ``Q``; boxes, equality rows
  ``Ax = b`` and inequality rows ``Gx <= h``), differentiated by the implicit function
  theorem on the KKT system of the active set, solved exactly (dense).
* :class:`CDQP` (``"cdqp"``): :class:`jaxopt.BoxCDQP` (box constraints; materialises ``Q``
  as a dense matrix, so for moderate sizes only).
* :class:`IPM` (``"ipm"``): our batched primal-dual interior-point method
  (:mod:`learned_dco.qp_ipm`; any ``Q``, materialised; boxes, ``Ax = b``, ``Gx <= h``) with a
  fixed iteration count, differentiated at the active set's KKT system. The fast backend for
  general constraints (``benchmarks/constrained_step.py``).
* :class:`SimplexExact` (``"simplex_exact"``): the exact sort-based solve over a shifted
  simplex (:mod:`learned_dco.qp_simplex`; a diagonal ``Q``, one row of ones, a lower bound),
  differentiated through its fixed active set. :func:`cheapest_solver` picks the cheapest
  exact backend for a diagonal curvature over a given set.

An optimizer checks its constraints against its solver when it is built
(:meth:`QPSolver.require`), so an impossible combination fails there, naming both.

Failures are reported, not raised: :class:`QPSolution` carries the primal residual (largest
constraint violation), the dual residual (stationarity; for box problems the fixed-point
residual :math:`\|x - \Pi_{[l,u]}(x - (Qx + c))\|_\infty`), the iteration count and a
``status`` (``SOLVED``, ``NOT_CONVERGED``, ``PRIMAL_INFEASIBLE``, ``DUAL_INFEASIBLE``), so a
caller can inspect them inside ``jit``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, ClassVar, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

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

#: Constraint kinds a problem may carry: ``"box"`` (``lo <= x <= hi``), ``"eq"``
#: (``A x = b``), ``"ineq"`` (``G x <= h``).
CONSTRAINT_KINDS = ("box", "eq", "ineq")

#: ``QPSolution.status`` values (reported, never raised).
SOLVED, NOT_CONVERGED, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE = 0, 1, 2, 3


class Constraints(NamedTuple):
    """The constraints of one QP: ``A x = b``, ``G x <= h`` (``A``, ``G`` dense matrices on
    the ravelled ``x``) and ``lo <= x <= hi`` (pytrees like ``x``); ``None`` where absent."""

    A: Array | None = None
    b: Array | None = None
    G: Array | None = None
    h: Array | None = None
    lo: PyTree | None = None
    hi: PyTree | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        out = []
        if self.lo is not None or self.hi is not None:
            out.append("box")
        if self.A is not None:
            out.append("eq")
        if self.G is not None:
            out.append("ineq")
        return tuple(out)


class _Raw(NamedTuple):
    x: PyTree
    iterations: Array
    status: Array | None = None  # None: decided from the residuals
    dual_residual: Array | None = None  # None: the box fixed-point residual


@dataclasses.dataclass(frozen=True)
class QPSolver:
    """Base of the QP backends: a small frozen value that carries its own options and says
    which constraint kinds it handles (``handles``) and, for a backend made for one shape of
    feasible set, which it needs (``needs``). Every problem without constraints is handled by
    every backend that needs none."""

    name: ClassVar[str] = ""
    handles: ClassVar[frozenset[str]] = frozenset()
    needs: ClassVar[frozenset[str]] = frozenset()  # kinds a backend for one shape of set requires

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
        return self.needs <= set(kinds) <= self.handles

    def require(self, kinds, *, owner: str, setting: str) -> None:
        """Raise ``ValueError`` naming ``setting`` and this solver if a constraint kind in
        ``kinds`` is not handled, or one it needs is absent (called when an optimizer is built)."""
        missing, absent = sorted(set(kinds) - self.handles), sorted(self.needs - set(kinds))
        if missing or absent:
            able = [n for n, cls in SOLVERS.items() if cls.needs <= set(kinds) <= cls.handles]
            what = (f"needs {'/'.join(missing)} constraints, which solver={self.name!r} (qp.{type(self).__name__}) "
                    f"does not support" if missing else
                    f"has no {'/'.join(absent)} constraints, which solver={self.name!r} (qp.{type(self).__name__}) needs")
            raise ValueError(f"{owner}: {setting} {what}; use one of {tuple(able)}")

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

    def solve(self, Q, c, cons: Constraints) -> _Raw:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Exact(QPSolver):
    r"""The operator's own exact solve inside ``custom_root`` (module docstring). Boxes
    only for a separable (diagonal) curvature: :math:`x = \Pi_{[l,u]}(-Q^{-1}c)`."""

    name: ClassVar[str] = "exact"
    handles: ClassVar[frozenset[str]] = frozenset({"box"})

    def solve(self, Q, c, cons):
        lo, hi = cons.lo, cons.hi
        if (lo is not None or hi is not None) and not Q.separable:
            raise ValueError(
                "the 'exact' QP backend handles box constraints only for a separable "
                f"(diagonal) curvature, got {type(Q).__name__}; use solver='osqp' or 'cdqp'"
            )
        return _Raw(_exact_root(c, Q, c, lo, hi), jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class IterativeSolver(QPSolver):
    """Base of the iterative backends: a stopping tolerance and an iteration cap (``None``
    picks the backend's dtype-dependent default; :meth:`QPSolver.__post_init__` checks both)."""

    tol: float | None = None
    maxiter: int | None = None


@dataclasses.dataclass(frozen=True)
class EqQP(IterativeSolver):
    """:class:`jaxopt.EqualityConstrainedQP` with a tight GMRES solve forward and backward.

    Attributes:
      tol: GMRES tolerance (default 1e-12 in float64, 1e-7 in float32).
      maxiter: GMRES iterations (default 10 x the number of unknowns).
    """

    name: ClassVar[str] = "eqqp"
    handles: ClassVar[frozenset[str]] = frozenset({"eq"})
    def solve(self, Q, c, cons):
        return _solve_eqqp(Q, c, cons.A, cons.b, self.tol, self.maxiter)


@dataclasses.dataclass(frozen=True)
class OSQP(IterativeSolver):
    """OSQP through :class:`jaxopt.BoxOSQP` (any curvature, every constraint kind: the rows
    ``A``, ``G`` and the box are stacked into ``l <= C x <= u``), with an exact dense
    implicit-differentiation solve of the KKT system (jaxopt's default iterative one is
    loose at active constraints), and infeasibility detection reported in ``status``.

    Attributes:
      tol: stopping tolerance (default 1e-12 in float64, 1e-5 in float32: 1e-6 is below
        float32 round-off for a few percent of problems, which then run to ``maxiter``, and
        under ``vmap`` every member of the batch runs as long as its slowest one).
      maxiter: ADMM iterations (default 20000).
    """

    name: ClassVar[str] = "osqp"
    handles: ClassVar[frozenset[str]] = frozenset({"box", "eq", "ineq"})
    def solve(self, Q, c, cons):
        return _solve_osqp(Q, c, cons, self.tol, self.maxiter)


@dataclasses.dataclass(frozen=True)
class CDQP(IterativeSolver):
    """:class:`jaxopt.BoxCDQP`: coordinate descent on the materialised dense ``Q`` (moderate
    sizes only).

    Attributes:
      tol: stopping tolerance (default 1e-12 in float64, 1e-7 in float32).
      maxiter: sweeps (default 1000).
    """

    name: ClassVar[str] = "cdqp"
    handles: ClassVar[frozenset[str]] = frozenset({"box"})
    def solve(self, Q, c, cons):
        return _solve_cdqp(Q, c, cons.lo, cons.hi, self.tol, self.maxiter)


#: YAML/CLI name -> solver class (``as_solver`` maps names to default-option values).
SOLVERS: dict[str, type[QPSolver]] = {cls.name: cls for cls in (Exact, EqQP, OSQP, CDQP)}

SolverLike = Union[str, QPSolver]


def as_solver(solver: SolverLike) -> QPSolver:
    """A solver value from a name (``"exact"``, ``"eqqp"``, ``"osqp"``, ``"cdqp"``, ``"ipm"``,
    ``"simplex_exact"``: default options) or a :class:`QPSolver` value (returned as is)."""
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
    residual: Array  # max(primal_residual, dual_residual); 0 at the optimum
    iterations: Array  # solver iterations (0 for the exact backend)
    status: Array = SOLVED  # int32: SOLVED, NOT_CONVERGED, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE
    primal_residual: Array = 0.0  # max constraint violation of x (inf-norm)
    dual_residual: Array = 0.0  # stationarity: box fixed-point residual, or ||Qx + c + C'y||_inf


def _project(x: PyTree, lo: PyTree | None, hi: PyTree | None) -> PyTree:
    if lo is None and hi is None:
        return x
    lo = tree_map(lambda v: jnp.full_like(v, -jnp.inf), x) if lo is None else lo
    hi = tree_map(lambda v: jnp.full_like(v, jnp.inf), x) if hi is None else hi
    return tree_map(lambda v, a, b: jnp.clip(v, a, b), x, lo, hi)


def _inf_norm(tree: PyTree) -> Array:
    diffs = [jnp.max(jnp.abs(v), initial=0.0) for v in jax.tree.leaves(tree)]
    return jnp.max(jnp.stack(diffs)) if diffs else jnp.zeros(())


def fixed_point_residual(Q: Any, c: PyTree, x: PyTree, lo=None, hi=None) -> Array:
    """``||x - proj(x - (Qx + c))||_inf``: zero exactly at the (box-constrained) optimum."""
    grad = tree_map(jnp.add, Q.matvec(x), c)
    step = _project(tree_map(jnp.subtract, x, grad), lo, hi)
    return jax.lax.stop_gradient(_inf_norm(tree_map(jnp.subtract, x, step)))


def primal_residual(x: PyTree, cons: Constraints) -> Array:
    """Largest violation of ``A x = b``, ``G x <= h``, ``lo <= x <= hi`` (0 when feasible)."""
    flat = ravel_pytree(x)[0]
    parts = [jnp.zeros((), flat.dtype)]
    if cons.A is not None:
        parts.append(_inf_norm(cons.A @ flat - cons.b))
    if cons.G is not None:
        parts.append(jnp.max(jnp.maximum(cons.G @ flat - cons.h, 0.0), initial=0.0))
    if cons.lo is not None or cons.hi is not None:
        parts.append(_inf_norm(tree_map(jnp.subtract, x, _project(x, cons.lo, cons.hi))))
    return jax.lax.stop_gradient(jnp.max(jnp.stack([p.astype(flat.dtype) for p in parts])))


def _check_rows(name: str, M, v, rhs_name: str, n: int) -> tuple[Array, Array]:
    if (M is None) != (v is None):
        raise ValueError(f"solve_qp: give {name} and {rhs_name} together")
    M, v = jnp.asarray(M), jnp.asarray(v)
    if M.ndim != 2 or M.shape[1] != n or v.shape != (M.shape[0],):
        raise ValueError(
            f"solve_qp: {name} must be (m, {n}) and {rhs_name} (m,) for {n} unknowns, "
            f"got {name} {M.shape} and {rhs_name} {v.shape}"
        )
    return M, v


def solve_qp(
    Q: Any,
    c: PyTree,
    A: Array | None = None,
    b: Array | None = None,
    G: Array | None = None,
    h: Array | None = None,
    lo: PyTree | None = None,
    hi: PyTree | None = None,
    *,
    solver: SolverLike = "exact",
) -> QPSolution:
    r"""Solve :math:`\min_x \tfrac12 x^\top Q x + c^\top x` s.t. :math:`Ax = b`,
    :math:`Gx \le h`, ``lo <= x <= hi`` (each optional).

    Args:
      Q: a structured operator (positive definite).
      c: the linear term, any pytree of float arrays.
      A, b: equality rows, ``A`` of shape ``(m, n)`` on the ravelled ``x``
        (``jax.flatten_util.ravel_pytree`` order), ``b`` of shape ``(m,)``.
      G, h: inequality rows ``G x <= h``, likewise.
      lo, hi: optional bounds shaped like ``c`` (``-inf``/``inf`` allowed); give both or one.
      solver: a :class:`QPSolver` value (``Exact()``, ``EqQP(tol, maxiter)``, ``OSQP(...)``,
        ``CDQP(...)``) or its name; the value carries its own options and must handle the
        constraint kinds given (``ValueError`` otherwise).

    Returns:
      A :class:`QPSolution`: the minimiser, residuals, iterations and a status (an
      infeasible or unconverged problem is reported there, not raised). Gradients with
      respect to ``Q``'s arrays, ``c``, ``A``, ``b``, ``G``, ``h``, ``lo`` and ``hi`` come
      from the implicit function theorem (exact at active constraints).
    """
    solver = as_solver(solver)
    n = ravel_pytree(c)[0].size
    if A is not None or b is not None:
        A, b = _check_rows("A", A, b, "b", n)
    if G is not None or h is not None:
        G, h = _check_rows("G", G, h, "h", n)
    cons = Constraints(A, b, G, h, lo, hi)
    kinds = cons.kinds
    solver.require(kinds, owner="solve_qp", setting="/".join(
        {"box": "lo/hi", "eq": "A/b", "ineq": "G/h"}[k] for k in kinds) or "the problem")
    dtype = ravel_pytree(c)[0].dtype
    if isinstance(solver, (OSQP, IPM)) and dtype not in (jnp.float32, jnp.float64):
        raise ValueError(
            f"solve_qp: solver={solver.name!r} (qp.{type(solver).__name__}) solves in float32 or float64 "
            f"(dense factorisations), got {dtype} data; cast c and Q to float32"
        )
    raw = solver.solve(Q, c, cons)
    primal = primal_residual(raw.x, cons)
    dual = fixed_point_residual(Q, c, raw.x, lo, hi) if raw.dual_residual is None else raw.dual_residual
    residual = jnp.maximum(primal, dual.astype(primal.dtype))
    # The residuals decide SOLVED (an iterative solver's infeasibility flags are heuristic:
    # BoxOSQP flags feasible float32 problems now and then); otherwise the solver's own
    # verdict (infeasible) is kept, and "solved" with large residuals is NOT_CONVERGED.
    scale = 1.0 + _inf_norm(c)
    ok = jnp.isfinite(residual) & (residual <= 10 * jnp.sqrt(jnp.finfo(dtype).eps) * scale)
    fallback = NOT_CONVERGED if raw.status is None else jnp.where(raw.status == SOLVED, NOT_CONVERGED, raw.status)
    status = jnp.where(ok, SOLVED, fallback).astype(jnp.int32)
    return QPSolution(raw.x, residual, raw.iterations, status, primal, dual.astype(primal.dtype))


# ------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------


@functools.cache
def _jaxopt():
    """The ``jaxopt`` module, imported on the first solve of a backend that uses it (so
    ``import learned_dco`` and the optimizers without a QP step never import it).

    jaxopt is archived (0.8.5 is final) but works with current jax; it stays behind this
    module so a backend can be swapped, and only its import-time notice is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="JAXopt is no longer maintained", category=DeprecationWarning
        )
        import jaxopt
        import jaxopt.implicit_diff
        import jaxopt.linear_solve
    return jaxopt


def _custom_root(*args, **kwargs):
    """:func:`jaxopt.implicit_diff.custom_root`, importing jaxopt on first use."""
    return _jaxopt().implicit_diff.custom_root(*args, **kwargs)


def _identity_solve(matvec, b):
    """The linear solve of the implicit function theorem when dF/dx = I."""
    del matvec
    return b


def _exact_optimality(x, Q, c, lo, hi):
    # Preconditioned optimality condition: Jacobian in x is the identity.
    target = _project(tree_map(jnp.negative, Q.solve(c)), lo, hi)
    return tree_map(jnp.subtract, x, target)


def _exact_target(init, Q, c, lo, hi):
    del init
    return jax.lax.stop_gradient(_project(tree_map(jnp.negative, Q.solve(c)), lo, hi))


@functools.cache
def _exact_root_fn():
    """:func:`_exact_target` wrapped in ``custom_root`` (built on the first exact solve)."""
    return _custom_root(_exact_optimality, solve=_identity_solve)(_exact_target)


def _exact_root(init, Q, c, lo, hi):
    return _exact_root_fn()(init, Q, c, lo, hi)


def _default_tol(dtype) -> float:
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-7


def _flat_problem(Q, c):
    """Ravel ``c`` and wrap ``Q`` as a matvec on flat vectors (jaxopt works on arrays)."""
    flat_c, unravel = ravel_pytree(c)

    def matvec_Q(op, v):
        return ravel_pytree(op.matvec(unravel(v)))[0]

    return flat_c, unravel, matvec_Q


def _solve_eqqp(Q, c, A, b, tol, maxiter):
    flat_c, unravel, matvec_Q = _flat_problem(Q, c)
    tol = _default_tol(flat_c.dtype) if tol is None else tol
    maxiter = 10 * flat_c.size if maxiter is None else maxiter
    jaxopt = _jaxopt()
    linear_solve = jaxopt.linear_solve
    qp = jaxopt.EqualityConstrainedQP(
        matvec_Q=matvec_Q,
        solve=linear_solve.solve_gmres,
        tol=tol,
        maxiter=maxiter,
        implicit_diff_solve=functools.partial(linear_solve.solve_gmres, tol=tol, maxiter=maxiter),
    )
    if A is None:
        rows = (jnp.zeros((0, flat_c.size), flat_c.dtype), jnp.zeros((0,), flat_c.dtype))
    else:
        rows = (A.astype(flat_c.dtype), b.astype(flat_c.dtype))
    sol = qp.run(params_obj=(Q, flat_c), params_eq=rows).params
    stationarity = matvec_Q(Q, sol.primal) + flat_c + rows[0].T @ sol.dual_eq
    dual = jax.lax.stop_gradient(_inf_norm(stationarity))
    return _Raw(unravel(sol.primal), jnp.zeros((), jnp.int32), None, dual)


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


# jaxopt's BoxOSQP status codes (0..3) -> ours; a tuple, not an array: a module-level array
# would initialise the XLA backend at import, before ``jax.distributed.initialize`` can run.
_OSQP_STATUS = (NOT_CONVERGED, SOLVED, DUAL_INFEASIBLE, PRIMAL_INFEASIBLE)


def _rows(C, x):
    """``C x`` for the stacked constraint matrix; ``C = None`` is the identity (box only)."""
    return x if C is None else C @ x


def _clamp(v, lo, hi):
    """Projection onto ``[lo, hi]`` whose derivative at a bound is that of the free side
    (``jnp.clip`` would average the two sides at a weakly active constraint)."""
    return jnp.where(v < lo, lo, jnp.where(v > hi, hi, v))


def _kkt_optimality(xy, matvec_Q, Q, c, C, lo, hi):
    r"""KKT conditions of :math:`\min \tfrac12 x'Qx + c'x` s.t. :math:`l \le Cx \le u` with
    dual ``y``: stationarity :math:`Qx + c + C^\top y = 0` and
    :math:`Cx - \Pi_{[l,u]}(Cx + y) = 0` (``y`` in the normal cone of the box at ``Cx``).
    Its Jacobian is the KKT matrix of the active set: rows with ``Cx + y`` outside the box
    contribute ``C`` (active), the others ``-I`` on ``y`` (inactive: ``y = 0``)."""
    x, y = xy
    stationarity = matvec_Q(Q, x) + c + jax.vjp(lambda v: _rows(C, v), x)[1](y)[0]
    Cx = _rows(C, x)
    return stationarity, Cx - _clamp(Cx + y, lo, hi)


@functools.cache
def _box_osqp_class():
    r""":class:`jaxopt.BoxOSQP` whose infeasibility certificates need a non-zero step.

    OSQP (Stellato et al. 2020, infeasibility detection) certifies primal infeasibility from the dual
    step :math:`\delta y` (:math:`\|A^\top \delta y\|_\infty \le \epsilon \|\delta y\|_\infty`
    and :math:`u^\top \delta y_+ + l^\top \delta y_- < 0`) and dual infeasibility from the
    primal step :math:`\delta x`; both tests are homogeneous, so they only mean something
    for a step that is not zero (the reference implementation skips them then). jaxopt's
    tests hold trivially at :math:`\delta y = 0` (every inequality inactive, e.g. the
    unconstrained minimiser is feasible: the dual never moves) and at :math:`\delta x = 0`, and
    stop the solve with a false infeasible verdict; here a zero step leaves the state as it was."""
    base = _jaxopt().BoxOSQP
    tree_inf_norm = _jaxopt().tree_util.tree_inf_norm

    def keep_unless_moved(step, before, after):
        moved = tree_inf_norm(step) > 0
        return tuple(jnp.where(moved, a, b) for a, b in zip(after, before))

    class NonZeroStepOSQP(base):
        def _check_primal_infeasability(self, error, status, delta_y, ATdy, l, u):
            after = super()._check_primal_infeasability(error, status, delta_y, ATdy, l, u)
            return keep_unless_moved(delta_y, (error, status), after)

        def _check_dual_infeasability(self, error, status, delta_x, Q, c, Adx, l, u):
            after = super()._check_dual_infeasability(error, status, delta_x, Q, c, Adx, l, u)
            return keep_unless_moved(delta_x, (error, status), after)

    return NonZeroStepOSQP


def _solve_osqp(Q, c, cons, tol, maxiter):
    """``l <= C x <= u`` with ``C = [A; G; I]`` (rows present only for the constraints
    given): equalities as ``l = u = b``, inequalities as ``(-inf, h]``, the box as
    ``[lo, hi]``; with only a box, ``C = I`` is applied without materialising it.

    Forward: :class:`jaxopt.BoxOSQP`. Backward: the implicit function theorem on
    :func:`_kkt_optimality`, i.e. an exact dense solve of the active set's KKT system (the
    solver's own optimality function splits the dual of each row in two, which is singular
    for equality rows and undefined for infinite bounds)."""
    flat_c, unravel, matvec_Q = _flat_problem(Q, c)
    dtype, n = flat_c.dtype, flat_c.size
    box = cons.lo is not None or cons.hi is not None
    mats, lows, highs = [], [], []
    if cons.A is not None:
        mats.append(cons.A.astype(dtype))
        lows.append(cons.b.astype(dtype))
        highs.append(cons.b.astype(dtype))
    if cons.G is not None:
        mats.append(cons.G.astype(dtype))
        lows.append(jnp.full(cons.h.shape, -jnp.inf, dtype))
        highs.append(cons.h.astype(dtype))
    if box or not mats:
        flo, fhi = _flat_bounds(c, cons.lo, cons.hi)
        lows.append(flo)
        highs.append(fhi)
        if mats:
            mats.append(jnp.eye(n, dtype=dtype))
    C = jnp.concatenate(mats, axis=0) if mats else None
    lo_all, hi_all = jnp.concatenate(lows), jnp.concatenate(highs)
    tol = (1e-12 if dtype == jnp.float64 else 1e-5) if tol is None else tol
    solver = _box_osqp_class()(
        matvec_Q=matvec_Q,
        matvec_A=lambda C, v: _rows(C, v),
        tol=tol,
        maxiter=20000 if maxiter is None else maxiter,
        check_primal_dual_infeasability=True,
        implicit_diff=False,
    )
    def optimality(xy, Q, c, C, lo, hi):
        return _kkt_optimality(xy, matvec_Q, Q, c, C, lo, hi)

    # BoxOSQP mixes the default float dtype into its loop state (its ``lax.cond`` branches then
    # disagree for other dtypes), so it runs in that dtype and the result is cast back.
    work = jnp.result_type(float)

    @_custom_root(optimality, has_aux=True, solve=_dense_solve)
    def kkt_point(init, Q, c, C, lo, hi):
        del init
        Q, c, C, lo, hi = tree_map(lambda v: jnp.asarray(v).astype(work), (Q, c, C, lo, hi))
        sol, state = solver.run(params_obj=(Q, c), params_eq=C, params_ineq=(lo, hi))
        xy = (sol.primal[0].astype(dtype), sol.dual_eq.astype(dtype))
        return jax.lax.stop_gradient(xy), jax.lax.stop_gradient((state.status, state.iter_num))

    init = (flat_c, jnp.zeros_like(lo_all))
    (x, y), (raw_status, iters) = kkt_point(init, Q, flat_c, C, lo_all, hi_all)
    stat, _ = _kkt_optimality((x, y), matvec_Q, Q, flat_c, C, lo_all, hi_all)
    dual = jax.lax.stop_gradient(_inf_norm(stat))
    return _Raw(unravel(x), iters, jnp.asarray(_OSQP_STATUS, jnp.int32)[raw_status], dual)


def _solve_cdqp(Q, c, lo, hi, tol, maxiter):
    flat_c, unravel, _ = _flat_problem(Q, c)
    flo, fhi = _flat_bounds(c, lo, hi)
    tol = _default_tol(flat_c.dtype) if tol is None else tol
    qp = _jaxopt().BoxCDQP(tol=tol, maxiter=1000 if maxiter is None else maxiter)
    dense_q = Q.to_dense(c)
    init = jnp.clip(jnp.zeros_like(flat_c), flo, fhi)
    sol, state = qp.run(init, params_obj=(dense_q, flat_c), params_ineq=(flo, fhi))
    return _Raw(unravel(sol), state.iter_num)


# ------------------------------------------------------------------------------------------
# The interior-point backend (solver in learned_dco.qp_ipm)
# ------------------------------------------------------------------------------------------


def _ipm_rows(c, cons, dtype):
    """``A, b`` and ``G, h`` on the ravelled ``x``, the box stacked into ``G`` as
    ``[I; -I] x <= [hi; -lo]``; a row with an infinite bound becomes ``0 x <= 1`` (always
    slack, multiplier 0), so bounds may hold ``inf`` values known only when traced."""
    n = ravel_pytree(c)[0].size
    A = jnp.zeros((0, n), dtype) if cons.A is None else cons.A.astype(dtype)
    b = jnp.zeros((0,), dtype) if cons.b is None else cons.b.astype(dtype)
    Gs, hs = [], []
    if cons.G is not None:
        Gs.append(cons.G.astype(dtype))
        hs.append(cons.h.astype(dtype))
    if cons.lo is not None or cons.hi is not None:
        flo, fhi = _flat_bounds(c, cons.lo, cons.hi)
        eye = jnp.eye(n, dtype=dtype)
        Gs += [eye, -eye]
        hs += [fhi, -flo]
    if not Gs:
        return A, b, jnp.zeros((0, n), dtype), jnp.zeros((0,), dtype)
    G, h = jnp.concatenate(Gs), jnp.concatenate(hs)
    finite = jnp.isfinite(h)
    return A, b, jnp.where(finite[:, None], G, 0.0), jnp.where(finite, h, 1.0)


def _solve_ipm(Q, c, cons, iterations, tol):
    """:func:`learned_dco.qp_ipm.solve` on the dense problem (its own active-set ``custom_vjp``);
    ``dual_residual`` is the KKT residual :func:`_kkt_optimality` with ``C = [A; G]``."""
    from learned_dco import qp_ipm

    flat_c, unravel, matvec_Q = _flat_problem(Q, c)
    dtype = flat_c.dtype
    A, b, G, h = _ipm_rows(c, cons, dtype)
    res = qp_ipm.solve(Q.to_dense(c).astype(dtype), flat_c, A, b, G, h, iterations=iterations, tol=tol)
    C = jnp.concatenate([A, G])
    lo_all = jnp.concatenate([b, jnp.full(h.shape, -jnp.inf, dtype)])
    stat, comp = _kkt_optimality((res.x, jnp.concatenate([res.y, res.z])), matvec_Q, Q, flat_c, C, lo_all,
                                 jnp.concatenate([b, h]))
    dual = jax.lax.stop_gradient(jnp.maximum(_inf_norm(stat), _inf_norm(comp)))
    status = jnp.where(res.infeasible, PRIMAL_INFEASIBLE, SOLVED).astype(jnp.int32)
    return _Raw(unravel(res.x), res.iterations, status, dual)


@dataclasses.dataclass(frozen=True)
class IPM(QPSolver):
    r"""A batched primal-dual interior-point method (Mehrotra predictor-corrector,
    :mod:`learned_dco.qp_ipm`) on the dense problem (``Q`` materialised; ``p`` up to a few
    hundred), any curvature, every constraint kind (the box is stacked into ``G``). A
    *fixed* number of iterations, so ``vmap`` runs every member the same short program;
    differentiated by the implicit function theorem on the active set's KKT system, like
    :class:`OSQP`. ``dual_residual`` is the KKT residual (stationarity and complementarity).

    Attributes:
      iterations: Newton iterations (default 30 in float64, 20 in float32).
      tol: residual at which a problem is frozen as solved (default 1e-11 / 1e-6).
    """

    name: ClassVar[str] = "ipm"
    handles: ClassVar[frozenset[str]] = frozenset({"box", "eq", "ineq"})
    iterations: int | None = None
    tol: float | None = None

    def __post_init__(self):
        super().__post_init__()
        it = self.iterations
        if it is not None and (isinstance(it, bool) or not isinstance(it, int) or it < 1):
            raise ValueError(f"qp.IPM.iterations must be an int >= 1 or None, got {it!r}")

    def solve(self, Q, c, cons):
        return _solve_ipm(Q, c, cons, self.iterations, self.tol)


SOLVERS[IPM.name] = IPM


@dataclasses.dataclass(frozen=True)
class SimplexExact(QPSolver):
    r"""The exact sort-based solve over a shifted simplex (:mod:`learned_dco.qp_simplex`):
    :math:`\min_d 	frac12 d^	op Q d + c^	op d` s.t. :math:`\mathbf 1^	op d = b`,
    :math:`d \ge lo`, for a :class:`Diagonal` or :class:`ScaledIdentity` ``Q``. One pass of
    ``O(n log n)``; ``jax.grad`` gives the exact active-set (KKT) derivative, the one
    :class:`OSQP` and :class:`IPM` compute implicitly, at a fraction of their cost.

    Needs exactly this set: one equality row of ones (checked when concrete), a lower bound,
    no upper bound, no ``G`` rows; any other problem is refused with the set it needs."""

    name: ClassVar[str] = "simplex_exact"
    handles: ClassVar[frozenset[str]] = frozenset({"box", "eq"})
    needs: ClassVar[frozenset[str]] = frozenset({"box", "eq"})

    def solve(self, Q, c, cons):
        from learned_dco.qp_simplex import solve_simplex

        if cons.A is None or cons.lo is None or cons.hi is not None or cons.G is not None:
            raise ValueError("qp.SimplexExact needs exactly one equality row (A, b) and a lower bound lo "
                             "(no hi, no G/h); use qp.IPM or qp.OSQP for other sets")
        if cons.A.shape[0] != 1:
            raise ValueError(f"qp.SimplexExact needs one equality row, got A of shape {cons.A.shape}")
        if not isinstance(cons.A, jax.core.Tracer) and not np.all(np.asarray(cons.A) == 1):
            raise ValueError("qp.SimplexExact needs the equality row to be all ones (sum d = b)")
        flat_c, unravel = ravel_pytree(c)
        if isinstance(Q, Diagonal):
            q = ravel_pytree(tree_map(lambda d, v: jnp.broadcast_to(d, jnp.shape(v)).astype(v.dtype), Q.d, c))[0]
        elif isinstance(Q, ScaledIdentity):
            q = jnp.broadcast_to(jnp.asarray(Q.scale, flat_c.dtype), flat_c.shape)
        else:
            raise ValueError(f"qp.SimplexExact needs a qp.Diagonal or qp.ScaledIdentity curvature, got {type(Q).__name__}")
        lo = ravel_pytree(cons.lo)[0].astype(flat_c.dtype)
        d, dual = solve_simplex(q, flat_c, lo, cons.b[0])
        return _Raw(unravel(d), jnp.ones((), jnp.int32), None, dual)


SOLVERS[SimplexExact.name] = SimplexExact


def cheapest_solver(cons: Constraints) -> QPSolver:
    """The cheapest exact backend for a diagonal curvature over ``cons``: boxes only ->
    :class:`Exact` (closed form :math:`\\Pi_{[l,u]}(-c/d)`); a simplex (``lo`` and one row of
    ones) -> :class:`SimplexExact`; other rows -> :class:`IPM` (the fixed-iteration
    interior-point method; 10^2-10^3 times cheaper than :class:`OSQP` on these steps, measured
    in ``benchmarks/constrained_step.py``)."""
    if set(cons.kinds) <= {"box"}:
        return Exact()
    if set(cons.kinds) == {"box", "eq"} and cons.hi is None and cons.A.shape[0] == 1 and bool(jnp.all(cons.A == 1)):
        return SimplexExact()
    return IPM()
