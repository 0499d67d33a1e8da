r"""M-L2O: meta-training a learned optimizer for fast test-time self-adaptation.

Yang et al., "M-L2O: Towards generalizable learning-to-optimize by test-time fast
self-adaptation" (ICLR 2023). For an L2O optimizer with weights :math:`\phi` (e.g.
:class:`learned_dco.optimizers.lstm.LSTMOptimizer`) and a task :math:`\tau`, let

.. math::
    \mathcal L(\phi; \tau, \xi) = \frac1T \sum_{t=1}^{T} \ell\big(f_\tau(\theta_t)\big),
    \qquad \theta_{t} = \theta_{t-1} + u_\phi(\nabla f_\tau(\theta_{t-1}), \ldots),
    \quad \theta_0 \sim \text{init}(\tau, \xi),

the optimizee's mean loss along a ``horizon``-step unroll (Andrychowicz et al.'s
meta-objective; ``loss="mean_log"`` uses :math:`\ell = \log`, our default, so that tasks
whose losses differ by orders of magnitude -- Rosenbrock starts, shifted scales -- weigh
alike; ``loss="mean"`` uses :math:`\ell(x) = x`).

* **Adaptation** (MAML-style, :func:`adapt`): ``k`` gradient steps on one task,
  :math:`\phi_{j} = \phi_{j-1} - \alpha\, \mathrm{clip}(\nabla_\phi \mathcal L(\phi_{j-1};
  \tau, \xi_j))` (optional global-norm clip, off by default).
* **Vanilla L2O** meta-trains :math:`\min_\phi \mathbb E_\tau \mathcal L(\phi; \tau)`
  (:class:`MetaAdaptation` with ``adapt_steps=0``).
* **M-L2O** meta-trains :math:`\min_\phi \mathbb E_\tau \mathcal L(\phi_k(\phi, \tau); \tau,
  \xi')`: the outer loss of the *adapted* weights, with the gradient taken through the
  ``k`` adaptation steps (second order; ``first_order=True`` drops the second-order terms,
  FOMAML-style). Adaptation and evaluation use the same task with independent optimizee
  starts :math:`\xi_j`, :math:`\xi'` (for families whose start is part of the task, the
  same start).
* **Test-time adaptation**: :func:`adapt` with ``steps=5`` on the out-of-distribution task,
  then run the adapted optimizer; fine-tuning a vanilla L2O the same way is the
  transfer-learning baseline of the paper.

:class:`MetaAdaptation` is an estimator for :class:`learned_dco.meta.MetaTrainer`
(``init``/``estimate``, per-task gradients on fresh tasks), so M-L2O gets the trainer's
vmapped task batches, sharding, non-finite guards and checkpoints.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from learned_dco import validation
from learned_dco.meta.estimators import Episodic, TaskEstimate
from learned_dco.meta.inner import inner_loop
from learned_dco.meta.starts import fresh_state
from learned_dco.types import Array, MetaParams, PRNGKey, Task
from learned_dco.validation import ValidationError

UNROLL_LOSSES = ("mean_log", "mean")
tree_map = jax.tree.map


def _run(lopt, family, meta, task, key, steps, record):
    """``steps`` steps of ``lopt.opt_fn(meta)`` from ``family.init_params(split(key)[0])``:
    ``(initial state, records)``."""
    state = fresh_state(lopt, family, meta, task, key)
    return state, inner_loop(lopt.opt_fn(meta), family, state, steps, record=record)[1]


def unroll_loss(lopt, family, meta: MetaParams, task: Task, key: PRNGKey, *, horizon: int,
                loss: str = "mean_log", eps: float = 1e-12) -> Array:
    r""":math:`\mathcal L(\phi; \tau, \xi)`: the mean (log) training loss over ``horizon``
    steps of ``lopt.opt_fn(meta)`` from ``family.init_params(k, task)``, each iterate scored
    on a fresh minibatch; ``eps`` guards the log at an exact zero loss."""
    if loss not in UNROLL_LOSSES:
        raise ValueError(f"unknown unroll loss {loss!r}; expected one of {UNROLL_LOSSES}")

    def record(step):
        value = family.loss(step.params, task, family.sample_batch(step.key, task))
        return jnp.log(value + eps) if loss == "mean_log" else value

    return jnp.mean(_run(lopt, family, meta, task, key, horizon, record)[1])


def adapt(lopt, family, meta: MetaParams, task: Task, key: PRNGKey, *, steps: int, lr: float, horizon: int,
          loss: str = "mean_log", clip: float | None = None, first_order: bool = False) -> MetaParams:
    r"""``steps`` gradient steps on :math:`\mathcal L(\cdot; \tau)` from ``meta`` (module
    docstring); differentiable in ``meta`` (``first_order`` stops the gradient through the
    inner gradients)."""
    validation.positive_int("adapt", "steps", steps, allow_zero=True)
    if validation.is_concrete(lr) and not float(lr) > 0:
        raise validation.ValidationError(f"adapt: lr must be > 0, got {lr!r}")
    grad_fn = jax.grad(lambda m, k: unroll_loss(lopt, family, m, task, k, horizon=horizon, loss=loss))
    for k in jax.random.split(key, steps) if steps else []:
        g = grad_fn(meta, k)
        if first_order:
            g = jax.lax.stop_gradient(g)
        if clip is not None:
            norm = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(g)))
            g = tree_map(lambda x: x * jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30)), g)
        meta = tree_map(lambda m, gi: m - lr * gi, meta, g)
    return meta


def adapted_loss(lopt, family, meta, task, key, *, steps, lr, horizon, loss="mean_log", clip=None,
                 first_order=False) -> Array:
    r""":math:`\mathcal L(\phi_k(\phi, \tau); \tau, \xi')`, the M-L2O outer loss of one task."""
    k_adapt, k_outer = jax.random.split(key)
    adapted = adapt(lopt, family, meta, task, k_adapt, steps=steps, lr=lr, horizon=horizon, loss=loss, clip=clip,
                    first_order=first_order)
    return unroll_loss(lopt, family, adapted, task, k_outer, horizon=horizon, loss=loss)


@dataclasses.dataclass(frozen=True)
class MetaAdaptation(Episodic):
    """M-L2O's nested meta-adaptation as an estimator (``adapt_steps=0``: vanilla L2O).

    Attributes:
      horizon: optimizee steps per unroll ``T``.
      num_tasks: tasks per meta-step.
      adapt_steps: inner adaptation steps ``k`` (0: vanilla L2O).
      adapt_lr: inner step :math:`\\alpha`.
      adapt_clip: optional global-norm clip of each inner gradient.
      first_order: drop second-order terms (FOMAML-style).
      loss: ``"mean_log"`` (default) or ``"mean"`` (see :func:`unroll_loss`).
      init_seed: initial-parameter seed for pool tasks (as :class:`FullUnroll`).
    """

    horizon: int = 20
    num_tasks: int = 8
    adapt_steps: int = 1
    adapt_lr: float = 1e-3
    adapt_clip: float | None = None
    first_order: bool = False
    loss: str = "mean_log"
    init_seed: int = 0

    def __post_init__(self):
        validation.positive_int("MetaAdaptation", "horizon", self.horizon)
        validation.positive_int("MetaAdaptation", "num_tasks", self.num_tasks)
        validation.positive_int("MetaAdaptation", "adapt_steps", self.adapt_steps, allow_zero=True)
        validation.positive_number("MetaAdaptation", "adapt_lr", self.adapt_lr)
        if self.adapt_clip is not None and not self.adapt_clip > 0:
            raise ValidationError(f"MetaAdaptation.adapt_clip must be > 0 or None, got {self.adapt_clip!r}", field="adapt_clip")
        validation.check_choice(self, "loss", UNROLL_LOSSES)


    def task_loss(self, lopt, family, meta, task, key) -> Array:
        """The per-task meta-objective (outer loss of the adapted weights)."""
        return adapted_loss(lopt, family, meta, task, key, steps=self.adapt_steps, lr=self.adapt_lr,
                            horizon=self.horizon, loss=self.loss, clip=self.adapt_clip, first_order=self.first_order)

    def starts(self, problem, meta, state, key):
        """Fresh tasks (or a random subset of the pool) from the first half of ``key``."""
        return super().starts(problem, meta, state, jax.random.split(key)[0])

    def per_task(self, problem, meta, starts, key):
        """Per-task gradients of the adapted loss."""
        keys = jax.random.split(jax.random.split(key)[1], self.num_tasks)

        def one(task, k):
            value, grad = jax.value_and_grad(lambda m: self.task_loss(problem.lopt, problem.family, m, task, k))(meta)
            return TaskEstimate(grad, value, value)

        return jax.vmap(one)(starts.task, keys), ()


def loss_curve(lopt, family, meta, task, key, *, steps: int) -> Array:
    """The optimizee's full training loss at every iterate ``theta_0 .. theta_steps``."""
    full = lambda params: family.loss(params, task, None)
    state, values = _run(lopt, family, meta, task, key, steps, lambda step: full(step.params))
    return jnp.concatenate([full(state.params)[None], values])
