r"""The general DCO step and the pieces every DCO builder shares.

Gautam, Pfrommer & Sojoudi pose every update as a differentiable convex program (their
eq. 5). :func:`general_dco` builds an ``optax.GradientTransformation`` from a user function
``(meta, grads, params, state) -> (StepQP, next_state)`` that poses one step's QP (curvature
operator, linear term, linear constraints), and :class:`LearnedDCO` pairs it with a
meta-parameter initialiser (``init``/``opt_fn``). The public rules ``dcog_transform``,
``dcogd_transform``, ``dcom_transform`` (:mod:`learned_dco.optimizers.dco`) and
``metamd_transform`` (:mod:`.mirror`) are instances
of :func:`general_dco`, keeping their state types as subclasses of :class:`GeneralDCOState`.
:func:`~learned_dco.optimizers.base.guard_nonfinite` is the non-finite-gradient guard every
builder wraps its step in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from learned_dco import qp
from learned_dco.optimizers.base import check_grads, finish, normalize_gradient, plain
from learned_dco.types import Array, PyTree
from learned_dco.validation import ValidationError

tree_map = jax.tree.map


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
    owner: str = "general_dco",
    state_type: type[GeneralDCOState] = GeneralDCOState,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
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
      max_consecutive_nonfinite: the non-finite guard (:func:`~learned_dco.optimizers.base.guard_nonfinite`).
      owner: the name error messages start with (the public builder's name).
      state_type: the state class, :class:`GeneralDCOState` or a subclass of it that only
        adds named views of ``inner`` (``DCOMState.momentum``); keeps a builder's state type.
      learning_rate: a scale :math:`\eta` on the step (number, array or optax schedule;
        :func:`~learned_dco.optimizers.base.scale_and_decay`). With constraints in the
        step, :math:`\eta \le 1` keeps the iterates feasible (the set is convex).
      weight_decay: decoupled weight decay :math:`\lambda`: the update is
        :math:`\eta\,(d - \lambda\theta_t)` (AdamW's form; it can leave a constrained set).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with :class:`GeneralDCOState` (inside the
      guard's ``optax.ApplyIfFiniteState``); ``update`` requires ``params`` and takes extra
      arguments (``value=loss``). Low-precision params keep their state dtypes
      (:func:`~learned_dco.optimizers.base.follow_dtypes`).
    """
    solver = qp.as_solver(solver)
    unknown = sorted(set(constraints) - set(qp.CONSTRAINT_KINDS))
    if unknown:
        raise ValueError(f"general_dco: unknown constraint kinds {unknown}; expected a subset of {qp.CONSTRAINT_KINDS}")
    if constraints:
        solver.require(constraints, owner=owner, setting=f"constraints={tuple(constraints)}")
    if not (isinstance(state_type, type) and issubclass(state_type, GeneralDCOState)):
        raise TypeError(f"{owner}: state_type must be GeneralDCOState or a subclass, got {state_type!r}")

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        state = () if init_state is None else init_state(params)
        return state_type(state, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def update_fn(grads, state, params=None):
        check_grads(owner, grads, params)
        g = normalize_gradient(grads) if normalize else grads
        problem, inner = step(meta, g, params, state.inner)
        if not isinstance(problem, StepQP):
            raise TypeError(f"{owner}: step must return (StepQP, state), got {type(problem).__name__}")
        undeclared = sorted(set(problem.kinds) - set(constraints))
        if undeclared:
            raise ValueError(
                f"{owner}: the step poses {'/'.join(undeclared)} constraints not declared in "
                f"constraints={tuple(constraints)} (declare them so the solver is checked when built)"
            )
        sol = qp.solve_qp(problem.Q, problem.c, problem.A, problem.b, problem.G, problem.h,
                          problem.lo, problem.hi, solver=solver)
        dtype = state.qp_residual.dtype
        return sol.x, state_type(inner, sol.residual.astype(dtype), sol.status)

    return finish(optax.GradientTransformation(init_fn, update_fn), learning_rate=learning_rate,
                  weight_decay=weight_decay, max_consecutive_nonfinite=max_consecutive_nonfinite, owner=owner)


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
            raise ValidationError(f"LearnedDCO.solver: {err}", field="solver") from None
        object.__setattr__(self, "solver", solver)
        object.__setattr__(self, "constraints", tuple(self.constraints))
        if self.constraints:
            solver.require(self.constraints, owner="LearnedDCO", setting=f"constraints={self.constraints}")

    def init(self, key, params: PyTree) -> PyTree:
        return self.init_meta(key, plain(params))

    def opt_fn(self, meta: PyTree, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
        """The :func:`general_dco` transform of ``meta``; ``learning_rate`` (number, array or
        optax schedule) scales its steps and ``weight_decay`` adds decoupled decay
        (:func:`~learned_dco.optimizers.base.scale_and_decay`)."""
        return general_dco(
            meta, self.step, init_state=self.init_state, solver=self.solver, constraints=self.constraints,
            normalize=self.normalize, max_consecutive_nonfinite=self.max_consecutive_nonfinite,
            learning_rate=learning_rate, weight_decay=weight_decay,
        )


# ------------------------------------------------------------------------------------------
# A learned constrained optimizer: diagonal-curvature DCO with momentum over a feasible set
# ------------------------------------------------------------------------------------------


def shifted_constraints(cons: qp.Constraints, params: PyTree) -> dict:
    r"""The feasible set :math:`\{\theta: A\theta=b,\ G\theta\le h,\ lo\le\theta\le hi\}`
    written in the step :math:`d = \theta - \theta_t`: ``b - A theta_t``, ``h - G theta_t``,
    ``lo - theta_t``, ``hi - theta_t`` (keyword arguments of :class:`StepQP`). Every step's
    solution is then feasible up to the solver's tolerance."""
    flat = ravel_pytree(params)[0]
    out = {}
    if cons.A is not None:
        out["A"], out["b"] = cons.A, cons.b - cons.A @ flat
    if cons.G is not None:
        out["G"], out["h"] = cons.G, cons.h - cons.G @ flat
    if cons.lo is not None:
        out["lo"] = tree_map(lambda lo, p: lo - p, cons.lo, params)
    if cons.hi is not None:
        out["hi"] = tree_map(lambda hi, p: hi - p, cons.hi, params)
    return out


def constrained_dcom(
    constraints: qp.Constraints,
    *,
    solver: qp.SolverLike | None = None,
    lr: float = 0.05,
    momentum: float = 0.9,
    per_coordinate: bool = True,
    max_consecutive_nonfinite: int | None = 10,
) -> LearnedDCO:
    r"""A learned DCO over a fixed feasible set :math:`\mathcal C` (DCO eq. 5): diagonal
    curvature (DCOG) with DCOM's momentum, the set inside the step's QP,

    .. math::
        s^+ = m\,g + (1-m)\,s,\qquad
        \theta^+ = \arg\min_{\theta\in\mathcal C}\ s^{+\top}\theta
                   + \tfrac12\|\Lambda(\theta-\theta_t)\|^2,

    so every iterate is feasible (a learned-metric projected momentum method). With
    :math:`\Lambda^2 = I/\eta` and ``m = 1`` it is projected gradient descent with step
    :math:`\eta`. Meta-parameters: ``log_lam2`` (per coordinate, or a scalar with
    ``per_coordinate=False``), ``logit_m`` (``m = sigmoid``), initialised to ``lr`` and
    ``momentum``; any real values give a strictly convex QP.

    Args:
      constraints: the feasible set in parameter space (e.g. ``family.constraints()``).
      solver: the QP backend (default :func:`learned_dco.qp.cheapest_solver`).
    """
    solver = qp.cheapest_solver(constraints) if solver is None else qp.as_solver(solver)
    if not 0.0 < momentum < 1.0:
        raise ValueError(f"constrained_dcom: momentum must be in (0, 1), got {momentum}")
    if lr <= 0:
        raise ValueError(f"constrained_dcom: lr must be > 0, got {lr}")

    def init_meta(key, params):
        del key
        log_lam2 = tree_map(
            lambda p: jnp.full(jnp.shape(p) if per_coordinate else (), -jnp.log(lr), jnp.result_type(p)), params)
        m = jnp.log(momentum) - jnp.log1p(-momentum)
        return {"log_lam2": log_lam2, "logit_m": jnp.asarray(m, jnp.result_type(*jax.tree.leaves(params)))}

    def step(meta, g, params, s):
        m = jax.nn.sigmoid(meta["logit_m"])
        s = tree_map(lambda gi, si: m * gi + (1 - m) * si, g, s)
        Q = qp.Diagonal(tree_map(jnp.exp, meta["log_lam2"]))
        return StepQP(Q, s, **shifted_constraints(constraints, params)), s

    return LearnedDCO(init_meta, step, init_state=lambda p: tree_map(jnp.zeros_like, p), solver=solver,
                      constraints=constraints.kinds, max_consecutive_nonfinite=max_consecutive_nonfinite)
