r"""The general DCO step and the pieces every DCO builder shares.

Gautam, Pfrommer & Sojoudi pose every update as a differentiable convex program (their
eq. 5). :func:`general_dco` builds an ``optax.GradientTransformation`` from a user function
``(meta, grads, params, state) -> (StepQP, next_state)`` that poses one step's QP (curvature
operator, linear term, linear constraints), and :class:`LearnedDCO` pairs it with a
meta-parameter initialiser (``init``/``opt_fn``). :func:`skip_nonfinite` is the
non-finite-gradient guard the DCO builders wrap their steps in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_dco import qp
from learned_dco.optimizers.base import check_grads, normalize_gradient
from learned_dco.types import Array, PyTree

tree_map = jax.tree.map


def _all_finite(tree: PyTree):
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def skip_nonfinite(tx: optax.GradientTransformation, max_consecutive: int | None) -> optax.GradientTransformation:
    """Skip steps whose gradients hold NaN/Inf, without a ``lax.cond``.

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
    matvecs). Here the shared operands stay shared. Feeding zeros rather than the NaN
    gradients to the discarded branch keeps reverse-mode derivatives finite (``0 * NaN``
    would poison the meta-gradient of a skipped step).
    """
    if max_consecutive is None:
        return tx
    if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 0:
        raise ValueError(f"max_consecutive_nonfinite must be an int >= 0 or None, got {max_consecutive!r}")

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


# ------------------------------------------------------------------------------------------
# The general DCO builder (paper eq. 5 with linear constraints)
# ------------------------------------------------------------------------------------------


class StepQP(NamedTuple):
    r"""The QP of one step in the step :math:`d = \theta^+ - \theta_t`:
    :math:`\min_d \tfrac12 d^\top Q d + c^\top d` s.t. :math:`Ad = b`, :math:`Gd \le h`,
    ``lo <= d <= hi`` (see :func:`learned_dco.qp.solve_qp`). A feasible set for the
    parameters themselves is shifted by :math:`\theta_t`: ``lo = lower - params``,
    ``h = h_theta - G theta_t``."""

    Q: Any
    c: PyTree
    A: Any = None
    b: Any = None
    G: Any = None
    h: Any = None
    lo: PyTree | None = None
    hi: PyTree | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return qp.Constraints(self.A, self.b, self.G, self.h, self.lo, self.hi).kinds


class GeneralDCOState(NamedTuple):
    """State of :func:`general_dco`."""

    inner: PyTree  # the user's step state
    qp_residual: Array  # () float: residual of the last QP (0 at the optimum)
    qp_status: Array  # () int32: qp.SOLVED, NOT_CONVERGED, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE


StepFn = Callable[[PyTree, PyTree, PyTree, PyTree], tuple[StepQP, PyTree]]


def general_dco(
    meta: PyTree,
    step: StepFn,
    *,
    init_state: Callable[[PyTree], PyTree] | None = None,
    solver: qp.SolverLike = "exact",
    constraints: tuple[str, ...] = (),
    normalize: bool = False,
    max_consecutive_nonfinite: int | None = 10,
) -> optax.GradientTransformation:
    r"""A DCO optimizer from a user-defined step QP (Gautam, Pfrommer & Sojoudi, eq. 5).

    ``step(meta, grads, params, state) -> (StepQP, next_state)`` poses the step's convex QP
    in :math:`d = \theta^+ - \theta_t`; the update is its solution (implicit
    differentiation w.r.t. ``meta`` through :func:`learned_dco.qp.solve_qp`). DCOG is
    ``StepQP(qp.Diagonal(lam**2), grads)``, DCOGD ``StepQP(qp.ScaledIdentity(1), B g)``,
    DCOM the same as DCOG with the momentum as ``c`` and next state.

    Args:
      meta: the meta-parameters, closed over (``jax.grad`` flows into them).
      step: the step's QP and the next state (a pure function, traced once per shape).
      init_state: ``params -> state`` (default: an empty tuple).
      solver: a :class:`learned_dco.qp.QPSolver` value or name.
      constraints: the constraint kinds the step uses (``"box"``, ``"eq"``, ``"ineq"``),
        checked against ``solver`` now; a step that poses an undeclared kind raises at its
        first update (when traced).
      normalize: divide the gradient by its global L2 norm before ``step`` (paper VI-A).
      max_consecutive_nonfinite: the non-finite guard (:func:`skip_nonfinite`).

    Returns:
      An ``optax.GradientTransformation`` with :class:`GeneralDCOState` (inside the guard's
      ``optax.ApplyIfFiniteState``); ``update`` requires ``params``.
    """
    solver = qp.as_solver(solver)
    unknown = sorted(set(constraints) - set(qp.CONSTRAINT_KINDS))
    if unknown:
        raise ValueError(f"general_dco: unknown constraint kinds {unknown}; expected a subset of {qp.CONSTRAINT_KINDS}")
    if constraints:
        solver.require(constraints, owner="general_dco", setting=f"constraints={tuple(constraints)}")

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        state = () if init_state is None else init_state(params)
        return GeneralDCOState(state, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def update_fn(grads, state, params=None):
        check_grads("general_dco", grads, params)
        g = normalize_gradient(grads) if normalize else grads
        problem, inner = step(meta, g, params, state.inner)
        if not isinstance(problem, StepQP):
            raise TypeError(f"general_dco: step must return (StepQP, state), got {type(problem).__name__}")
        undeclared = sorted(set(problem.kinds) - set(constraints))
        if undeclared:
            raise ValueError(
                f"general_dco: the step poses {'/'.join(undeclared)} constraints not declared in "
                f"constraints={tuple(constraints)} (declare them so the solver is checked when built)"
            )
        sol = qp.solve_qp(problem.Q, problem.c, problem.A, problem.b, problem.G, problem.h,
                          problem.lo, problem.hi, solver=solver)
        dtype = state.qp_residual.dtype
        return sol.x, GeneralDCOState(inner, sol.residual.astype(dtype), sol.status)

    return skip_nonfinite(optax.GradientTransformation(init_fn, update_fn), max_consecutive_nonfinite)


@dataclasses.dataclass(frozen=True)
class LearnedDCO:
    """A learned optimizer from a user-defined step QP: ``init(key, params)`` gives the
    meta-parameters (``init_meta``), ``opt_fn(meta)`` the :func:`general_dco` transform.
    The solver is checked against ``constraints`` at construction (``ValueError`` naming
    both)."""

    init_meta: Callable[[Any, PyTree], PyTree]
    step: StepFn
    init_state: Callable[[PyTree], PyTree] | None = None
    solver: str | qp.QPSolver = "exact"
    constraints: tuple[str, ...] = ()
    normalize: bool = False
    max_consecutive_nonfinite: int | None = 10

    def __post_init__(self):
        try:
            solver = qp.as_solver(self.solver)
        except (TypeError, ValueError) as err:
            raise ValueError(f"LearnedDCO.solver: {err}") from None
        object.__setattr__(self, "solver", solver)
        object.__setattr__(self, "constraints", tuple(self.constraints))
        if self.constraints:
            solver.require(self.constraints, owner="LearnedDCO", setting=f"constraints={self.constraints}")

    def init(self, key, params: PyTree) -> PyTree:
        return self.init_meta(key, params)

    def opt_fn(self, meta: PyTree) -> optax.GradientTransformation:
        return general_dco(
            meta, self.step, init_state=self.init_state, solver=self.solver, constraints=self.constraints,
            normalize=self.normalize, max_consecutive_nonfinite=self.max_consecutive_nonfinite,
        )
