r"""The mirror-descent regret bound as a meta-objective (MetaMD), no validation data.

For convex :math:`f` and mirror descent with :math:`\psi(\theta) = \tfrac12\theta^\top
M\theta` and step :math:`\eta` (:func:`learned_dco.optimizers.mirror.metamd_transform`), the standard
online-mirror-descent analysis gives, for any comparator :math:`\theta^\star`,

.. math::
    \frac1T\sum_{t<T} \big(f(\theta_t) - f(\theta^\star)\big) \;\le\;
    B_T = \frac1T\Big[\frac{D_\psi(\theta^\star, \theta_0)}{\eta}
        + \frac{\eta}{2}\sum_{t<T} g_t^\top M^{-1} g_t\Big],

so a smaller :math:`B_T` certifies faster convergence. MetaMD meta-trains
:math:`(M, \eta)` to minimise it over a task distribution. The minimiser is unknown, so
(our choice, documented) the comparator is the *last iterate* of the same run,
:math:`\theta^\star \approx \mathrm{stop\_gradient}(\theta_T)`: treating it as a constant
estimate of the target keeps the objective from rewarding runs that simply do not move
(with a differentiable :math:`\theta_T`, :math:`M \to \infty` would drive both terms to
zero). Everything else is differentiated along the whole trajectory: the gradients
:math:`g_t` depend on :math:`(M, \eta)` through the earlier steps, and
:math:`\eta\, g_t^\top M^{-1} g_t = -g_t^\top u_t` is read off the optimizer's own update
:math:`u_t = -\eta M^{-1} g_t`, the solution of the step's QP, so its meta-gradient comes
from the QP layer's implicit differentiation. Only training-loss gradients (minibatches
where the family has them) are used: no validation data.

The learned optimizer must provide ``divergence(meta, delta)`` returning
:math:`D_\psi(\theta+\delta, \theta)/\eta` (:class:`learned_dco.optimizers.mirror.MetaMD`
does) and must not normalise gradients (the bound is about the raw gradients).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from learned_dco.meta.estimators import Episodic, Problem, TaskEstimate, _check_common
from learned_dco.meta.inner import InnerState, inner_loop
from learned_dco.validation import ValidationError

TARGETS = ("last", "optimum")


def _vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@dataclasses.dataclass(frozen=True)
class RegretBound(Episodic):
    """Per-task gradients of the mirror-descent regret bound :math:`B_T` (module docstring)
    over ``horizon`` steps of ``num_tasks`` fresh tasks per meta-step (or tasks from a
    ``pool``, as in :class:`~learned_dco.meta.FullUnroll`). Plugs into
    :class:`~learned_dco.meta.MetaTrainer` like the other estimators."""

    horizon: int = 20
    num_tasks: int = 8
    target: str = "last"
    init_seed: int = 0
    meta_loss: str = "final_train"  # unused by the bound; kept for the common checks

    def __post_init__(self):
        _check_common(self)
        if self.target not in TARGETS:
            raise ValidationError(f"RegretBound.target must be one of {TARGETS}, got {self.target!r}", field="target")

    def bind(self, lopt, family, pool=None):
        if not callable(getattr(lopt, "divergence", None)):
            raise ValueError(
                f"RegretBound needs a mirror-descent optimizer with divergence(meta, delta); "
                f"{type(lopt).__name__} has none"
            )
        if getattr(lopt, "normalize", False):
            raise ValueError("RegretBound: the bound is stated for raw gradients; use normalize=False")
        return super().bind(lopt, family, pool)

    def bound(self, lopt, family, meta, state: InnerState):
        """``(B_T, mean training loss)`` for one task from its starting state."""
        self.bind(lopt, family)  # the optimizer's checks
        return self._bound(Problem(lopt, family), meta, state)

    def _bound(self, problem: Problem, meta, state: InnerState):
        lopt, family = problem.lopt, problem.family
        record = lambda step: (-_vdot(step.grads, step.updates), step.loss)
        end, (dual, losses) = inner_loop(lopt.opt_fn(meta), family, state, self.horizon, record=record)
        target = end.params if self.target == "last" else family.optimum(state.task)
        delta = jax.tree.map(lambda a, b: jax.lax.stop_gradient(a) - b, target, state.params)
        value = (lopt.divergence(meta, delta) + 0.5 * jnp.sum(dual)) / self.horizon
        return value, jnp.mean(losses)

    def per_task(self, problem, meta, starts: InnerState, key=None):
        """Per-task gradients of :math:`B_T`; returns ``(TaskEstimate batch, ())``."""

        def one(s):
            (value, train), grad = jax.value_and_grad(lambda m: self._bound(problem, m, s), has_aux=True)(meta)
            return TaskEstimate(grad, value, train)

        return jax.vmap(one)(starts), ()
