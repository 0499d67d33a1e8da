r"""DCO update rules: each step is a differentiable convex QP.

Gautam, Pfrommer & Sojoudi, "Meta-Learning Parameterized First-Order Optimizers using
Differentiable Convex Optimization", section IV. With the step :math:`d = \theta - \theta_t`
and the (optionally normalised, section VI-A) gradient :math:`g`:

* **DCOG** (13): :math:`d = \arg\min_d g^\top d + \tfrac12\|\Lambda \odot d\|^2
  = -g / \Lambda^2` -- a learned per-weight step size.
* **DCOGD** (14): :math:`d = \arg\min_d (Bg)^\top d + \tfrac12\|d\|^2 = -Bg` -- a learned
  linear map of the ravelled gradient.
* **DCOM** (15-16): :math:`s^+ = M \odot g + (1 - M) \odot s` (``s`` starts at zeros),
  :math:`d = \arg\min_d (s^+)^\top d + \tfrac12\|\Lambda\odot d\|^2 = -s^+/\Lambda^2`.

**Trust region.** The paper's general DCO (5) allows convex constraints but never
instantiates them; every rule here takes ``radius=r`` to add the box
:math:`|\theta - \theta_t| \le r` (elementwise), which turns the closed forms into
:math:`\Pi_{[-r, r]}(\cdot)`, and the learned optimizers can learn ``r``.

Each rule is an instance of :func:`learned_dco.optimizers.general.general_dco` (it supplies
the step's QP and next state); the QPs are solved by :func:`learned_dco.qp.solve_qp` (implicit differentiation through
jaxopt); the closed forms above are the test oracle, not the implementation. Every builder
returns an ``optax.GradientTransformation`` whose ``update`` requires ``params``.

Non-finite gradients: a step whose gradient holds NaN/Inf is skipped (zero update, state
unchanged, counted in an ``optax.ApplyIfFiniteState``) by
:func:`learned_dco.optimizers.base.guard_nonfinite` (``optax.apply_if_finite``'s
behaviour, written with selects instead of a ``lax.cond`` so a batch of tasks sharing ``B``
keeps sharing it); after ``max_consecutive_nonfinite`` consecutive bad steps updates pass
through so divergence is visible. ``max_consecutive_nonfinite=None`` removes the guard.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from learned_dco import qp
from learned_dco.optimizers.base import broadcast_like, plain, ravel_size
from learned_dco.optimizers.general import GeneralDCOState, StepQP, general_dco
from learned_dco.types import Array, MetaParams, Params, PRNGKey, PyTree
from learned_dco.validation import ValidationError, check_values

tree_map = jax.tree.map

# Unconstrained meta-parameters pass through exp(clip(raw, -LOG_CLIP, LOG_CLIP)): positive
# for every real raw value and far from float32 over/underflow once squared.
LOG_CLIP = 20.0


class DCOState(GeneralDCOState):
    """State of :func:`dcog_transform` and :func:`dcogd_transform` (``inner`` is ``()``)."""


class DCOMState(GeneralDCOState):
    """State of :func:`dcom_transform`: ``inner`` is the momentum ``s`` (like params, starts at zeros)."""

    @property
    def momentum(self) -> Params:
        return self.inner


def _dtype(params: Params):
    leaves = jax.tree.leaves(params)
    return jnp.result_type(*leaves) if leaves else jnp.float32


def _box(owner: str, radius: PyTree | None, params: Params) -> dict[str, PyTree]:
    """The trust-region box ``-r <= d <= r`` as :class:`StepQP` keyword arguments."""
    if radius is None:
        return {}
    r = broadcast_like(owner, "radius", radius, params)
    return {"lo": tree_map(jnp.negative, r), "hi": r}


def _step_solver(owner: str, solver: qp.SolverLike, radius: PyTree | None) -> qp.QPSolver:
    """The solver value, checked against the step's constraints when the rule is built."""
    solver = qp.as_solver(solver)
    if radius is not None:
        solver.require(("box",), owner=owner, setting="radius (a trust-region box)")
    return solver


def _check_radius(owner: str, radius: PyTree | None) -> None:
    if radius is not None:
        check_values(owner, "radius", radius, lambda r: r > 0, "> 0 (a trust-region radius)")


def _instance(owner, meta, step, init_state, state_type, radius, normalize, solver, max_consecutive_nonfinite,
              learning_rate, weight_decay):
    """The rule as an instance of :func:`general_dco` (``constraints`` the box when ``radius``)."""
    _check_radius(owner, radius)
    return general_dco(
        meta, step, init_state=init_state, solver=_step_solver(owner, solver, radius),
        constraints=("box",) if radius is not None else (), normalize=normalize,
        max_consecutive_nonfinite=max_consecutive_nonfinite, owner=owner, state_type=state_type,
        learning_rate=learning_rate, weight_decay=weight_decay,
    )


def dcog_transform(
    lam: PyTree,
    *,
    radius: PyTree | None = None,
    normalize: bool = False,
    solver: qp.SolverLike = "exact",
    max_consecutive_nonfinite: int | None = 10,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""DCO Gradient: :math:`\theta^+ = \arg\min_\theta g^\top\theta + \tfrac12
    \|\Lambda\odot(\theta-\theta_t)\|^2 \;[\,|\theta-\theta_t|\le r\,]`.

    Closed form :math:`\theta^+ = \theta_t - \Pi_{[-r,r]}(g/\Lambda^2)`: per-weight step
    sizes :math:`1/\Lambda^2` (paper eq. 13). An instance of :func:`general_dco` with the
    step QP ``StepQP(Diagonal(lam**2), g, lo=-r, hi=r)``.

    Args:
      lam: :math:`\Lambda`, a scalar or a pytree shaped like params (leaves may be scalars);
        nonzero (the QP is unbounded where :math:`\Lambda = 0`).
      radius: optional trust-region radius ``r > 0`` (scalar or pytree like params).
      normalize: divide the gradient by its global L2 norm first (paper VI-A).
      solver: QP backend, a :class:`learned_dco.qp.QPSolver` value carrying its options
        (``qp.OSQP(tol=1e-8)``) or its name (``"exact"``, ``"eqqp"``, ``"osqp"``,
        ``"cdqp"``); it must handle box constraints when ``radius`` is given.
      max_consecutive_nonfinite: non-finite gradient guard (module docstring); ``None``
        disables it.
      learning_rate: a scale :math:`\eta` on every step (number, array or optax schedule;
        default 1: the rule as written), ``optax.inject_hyperparams``-compatible.
      weight_decay: decoupled weight decay :math:`\lambda`: the update becomes
        :math:`\eta\,(d - \lambda\theta_t)` (AdamW's form, scaled by the learning rate).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with :class:`DCOState`;
      ``update(grads, state, params, **extra_args)``. bfloat16/float16 params keep their
      state dtypes (the step is computed in float32 and cast back).

    Example:
      >>> tx = optax.chain(optax.clip_by_global_norm(1.0), dcog_transform(10.0))
    """
    owner = "dcog_transform"
    check_values(owner, "lam", lam, lambda v: v != 0, "nonzero (the QP is unbounded where lam = 0)")

    def init_state(params):
        broadcast_like(owner, "lam", lam, params)
        _box(owner, radius, params)
        return ()

    def step(lam, g, params, state):
        curvature = qp.Diagonal(tree_map(jnp.square, broadcast_like(owner, "lam", lam, params)))
        return StepQP(curvature, g, **_box(owner, radius, params)), state

    return _instance(owner, lam, step, init_state, DCOState, radius, normalize, solver, max_consecutive_nonfinite,
                     learning_rate, weight_decay)


def dcogd_transform(
    B: Array,
    *,
    radius: PyTree | None = None,
    normalize: bool = False,
    solver: qp.SolverLike = "exact",
    max_consecutive_nonfinite: int | None = 10,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""DCO General Descent: :math:`\theta^+ = \arg\min_\theta (Bg)^\top\theta +
    \tfrac12\|\theta-\theta_t\|^2 \;[\,|\theta-\theta_t|\le r\,]`, i.e.
    :math:`\theta^+ = \theta_t - \Pi_{[-r,r]}(Bg)` (paper eq. 14); an instance of
    :func:`general_dco` with ``StepQP(ScaledIdentity(1), B g, lo=-r, hi=r)``.

    Args:
      B: a ``(p, p)`` matrix acting on the ravelled gradient
        (``jax.flatten_util.ravel_pytree`` order), ``p`` the number of parameters.
      radius, normalize, solver, max_consecutive_nonfinite, learning_rate, weight_decay: as in :func:`dcog_transform`.
    """
    owner = "dcogd_transform"
    check_values(owner, "B", B, lambda v: np.ones_like(v, bool), "finite")

    def check_B(params):
        p = ravel_size(params)
        if jnp.shape(B) != (p, p):
            raise ValueError(
                f"dcogd_transform: B has shape {jnp.shape(B)} but the ravelled params have size {p}; "
                f"expected ({p}, {p})"
            )

    def init_state(params):
        check_B(params)
        _box(owner, radius, params)
        return ()

    def step(B, g, params, state):
        check_B(params)
        flat_g, unravel = ravel_pytree(g)
        linear = unravel(jnp.asarray(B, flat_g.dtype) @ flat_g)
        curvature = qp.ScaledIdentity(jnp.ones((), flat_g.dtype))
        return StepQP(curvature, linear, **_box(owner, radius, params)), state

    return _instance(owner, B, step, init_state, DCOState, radius, normalize, solver, max_consecutive_nonfinite,
                     learning_rate, weight_decay)


def dcom_transform(
    lam: PyTree,
    m: PyTree,
    *,
    radius: PyTree | None = None,
    normalize: bool = False,
    solver: qp.SolverLike = "exact",
    max_consecutive_nonfinite: int | None = 10,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""DCO Momentum (paper eqs. 15-16):

    .. math::
        s^+ = M\odot g + (1-M)\odot s, \qquad
        \theta^+ = \arg\min_\theta (s^+)^\top\theta + \tfrac12\|\Lambda\odot(\theta-\theta_t)\|^2,

    so :math:`\theta^+ = \theta_t - \Pi_{[-r,r]}(s^+/\Lambda^2)`; the momentum ``s`` starts
    at zeros. ``M = 1`` recovers :func:`dcog_transform`. An instance of :func:`general_dco`: DCOG's
    step QP with :math:`s^+` as the linear term and the next state (:class:`DCOMState`).

    Args:
      lam: :math:`\Lambda` as in :func:`dcog_transform`.
      m: :math:`M \in [0, 1]`, a scalar or pytree like params (weight on the new gradient).
      radius, normalize, solver, max_consecutive_nonfinite, learning_rate, weight_decay: as in :func:`dcog_transform`.
    """
    owner = "dcom_transform"
    check_values(owner, "lam", lam, lambda v: v != 0, "nonzero (the QP is unbounded where lam = 0)")
    check_values(owner, "m", m, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")

    def init_state(params):
        broadcast_like(owner, "lam", lam, params)
        broadcast_like(owner, "m", m, params)
        _box(owner, radius, params)
        return tree_map(jnp.zeros_like, params)

    def step(meta, g, params, momentum):
        lam, m = meta
        mm = broadcast_like(owner, "m", m, params)
        momentum = tree_map(lambda w, gi, s: w * gi + (1 - w) * s, mm, g, momentum)
        curvature = qp.Diagonal(tree_map(jnp.square, broadcast_like(owner, "lam", lam, params)))
        return StepQP(curvature, momentum, **_box(owner, radius, params)), momentum

    return _instance(owner, (lam, m), step, init_state, DCOMState, radius, normalize, solver, max_consecutive_nonfinite,
                     learning_rate, weight_decay)


# ------------------------------------------------------------------------------------------
# Learned optimizers: unconstrained meta-parameters -> well-posed DCO builders
# ------------------------------------------------------------------------------------------


def positive(raw: PyTree) -> PyTree:
    """``exp(clip(raw, -LOG_CLIP, LOG_CLIP))``: positive for every real ``raw``."""
    return tree_map(lambda r: jnp.exp(jnp.clip(r, -LOG_CLIP, LOG_CLIP)), raw)


def _full_like(params: Params, value: float) -> PyTree:
    return tree_map(lambda p: jnp.full(jnp.shape(p), value, _dtype(p)), params)


def resolve_solver(owner: str, solver: qp.SolverLike, tol: float | None, maxiter: int | None, constraints=(), setting: str = "") -> qp.QPSolver:
    """The solver value of a learned optimizer: a name or value, with the YAML shorthands
    ``tol``/``maxiter`` folded into it (once, here), checked against the constraints the
    optimizer's steps carry (``setting`` names the option that adds them)."""
    try:
        value = qp.as_solver(solver)
    except (TypeError, ValueError) as err:
        raise ValidationError(f"{owner}.solver: {err}", field="solver") from None
    shorthand = {k: v for k, v in (("tol", tol), ("maxiter", maxiter)) if v is not None}
    for key, v in shorthand.items():
        given = getattr(value, key, None)
        if isinstance(solver, qp.QPSolver) and given is not None and given != v:
            raise ValueError(f"{owner}: {key}={v!r} conflicts with solver={solver!r}; set it in the solver value only")
    # The shorthands set the options the solver has; an option it lacks (``tol`` for Exact)
    # is ignored, as YAML configs written before solvers were values expect.
    own = {f.name for f in dataclasses.fields(value)}
    value = value.with_options(**{k: v for k, v in shorthand.items() if k in own})
    if constraints:
        value.require(constraints, owner=owner, setting=setting)
    return value


@dataclasses.dataclass(frozen=True)
class _DCOOptions:
    """Options shared by the learned DCO optimizers (not meta-learned).

    Attributes:
      learning_rate: the GD step size the initial meta-parameters mimic (paper VI-A).
      normalize: normalise inner gradients (paper VI-A).
      trust_region: learn a per-weight box radius ``r = exp(log_radius)``.
      init_radius: initial radius when ``trust_region``.
      solver: QP backend, a :class:`learned_dco.qp.QPSolver` value or its name; stored as
        the value. It must handle boxes when ``trust_region`` (checked here, at construction).
      tol, maxiter: YAML shorthands folded into the solver value at construction (``None``:
        the value's own options; ignored by a solver without that option, e.g. Exact).
      max_consecutive_nonfinite: non-finite gradient guard; ``None`` disables it.
    """

    learning_rate: float = 0.1
    normalize: bool = False
    trust_region: bool = False
    init_radius: float = 1.0
    solver: str | qp.QPSolver = "exact"
    tol: float | None = None
    maxiter: int | None = None
    max_consecutive_nonfinite: int | None = 10

    def __post_init__(self):
        name = type(self).__name__
        if not self.learning_rate > 0:
            raise ValidationError(f"{name}.learning_rate must be > 0, got {self.learning_rate!r}", field="learning_rate")
        if not self.init_radius > 0:
            raise ValidationError(f"{name}.init_radius must be > 0, got {self.init_radius!r}", field="init_radius")
        solver = resolve_solver(
            name, self.solver, self.tol, self.maxiter,
            ("box",) if self.trust_region else (), "trust_region=True (a box per step)",
        )
        object.__setattr__(self, "solver", solver)

    def _radius_meta(self, params: Params) -> dict[str, Any]:
        return {"log_radius": _full_like(params, math.log(self.init_radius))} if self.trust_region else {}

    def _builder_kwargs(self, meta: MetaParams, learning_rate: Any, weight_decay: Any) -> dict[str, Any]:
        return dict(
            radius=positive(meta["log_radius"]) if self.trust_region else None,
            normalize=self.normalize,
            solver=self.solver,
            max_consecutive_nonfinite=self.max_consecutive_nonfinite,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
        )


@dataclasses.dataclass(frozen=True)
class DCOG(_DCOOptions):
    r"""Learned :func:`dcog_transform`. Meta-parameters ``{"log_lam": like params}`` (plus
    ``"log_radius"`` with ``trust_region``), :math:`\Lambda = \exp(\text{log\_lam})`;
    initialised to :math:`\Lambda^2 = 1/\eta` so the first steps are GD with step ``η``."""

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        del key
        params = plain(params)
        return {"log_lam": _full_like(params, -0.5 * math.log(self.learning_rate)), **self._radius_meta(params)}

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
        return dcog_transform(positive(meta["log_lam"]), **self._builder_kwargs(meta, learning_rate, weight_decay))


@dataclasses.dataclass(frozen=True)
class DCOGD(_DCOOptions):
    r"""Learned :func:`dcogd_transform`. Meta-parameters ``{"B": (p, p)}`` (plus ``"log_radius"``),
    unconstrained (every real ``B`` gives a strongly convex QP); initialised to
    :math:`B = \eta I` (GD with step ``η``; the paper's identity is ``η = 1``)."""

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        del key
        params = plain(params)
        p = ravel_size(params)
        return {"B": self.learning_rate * jnp.eye(p, dtype=_dtype(params)), **self._radius_meta(params)}

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
        return dcogd_transform(meta["B"], **self._builder_kwargs(meta, learning_rate, weight_decay))


@dataclasses.dataclass(frozen=True)
class DCOM(_DCOOptions):
    r"""Learned :func:`dcom_transform`. Meta-parameters ``{"log_lam", "logit_m"}`` like params (plus
    ``"log_radius"``): :math:`\Lambda = \exp(\cdot)`, :math:`M = \mathrm{sigmoid}(\cdot)
    \in (0, 1)`; initialised to heavy-ball-style averaging ``M = 1 - momentum`` with
    :math:`\Lambda^2 = 1/\eta`, i.e. an exponential moving average of gradients taken with
    step ``η``."""

    momentum: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.momentum < 1:
            raise ValidationError(f"DCOM.momentum must be in [0, 1), got {self.momentum!r}", field="momentum")

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        del key
        params = plain(params)
        m = 1.0 - self.momentum
        logit = math.log(m / (1 - m)) if m < 1 else LOG_CLIP
        return {
            "log_lam": _full_like(params, -0.5 * math.log(self.learning_rate)),
            "logit_m": _full_like(params, logit),
            **self._radius_meta(params),
        }

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
        m = tree_map(jax.nn.sigmoid, meta["logit_m"])
        return dcom_transform(positive(meta["log_lam"]), m, **self._builder_kwargs(meta, learning_rate, weight_decay))
