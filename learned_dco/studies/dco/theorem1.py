r"""DCO paper, Theorem 1: meta-training DCOGD with GD reaches the one-step optimum linearly.

Tasks are shifted least-squares problems (eq. 17) with a shared design ``X``; DCOGD with
``T = 1`` maps any start to :math:`\theta - B\,G` and the meta-loss over ``N`` training
tasks is the quadratic

.. math::
    l^{total}(B) = \frac1N \sum_i \|X(\theta_i - B G_i) - (y + X\Delta_i)\|^2,

whose Hessian in :math:`\mathrm{vec}(B)` is
:math:`H_B = \frac2N \sum_i G_i G_i^\top \otimes X^\top X`. It is positive definite once the
:math:`Z_i = \theta_i - \Delta_i - \theta'` span :math:`\mathbb{R}^p` (``N >= p``), and its
minimiser is :math:`B^* = \tfrac12 (X^\top X)^{-1}`, which solves every task in one step.
Plain GD on ``B`` with step :math:`\eta = 2/(L+\mu)` (:math:`L, \mu` the extreme eigenvalues
of :math:`H_B`, both products of eigenvalues of the two Kronecker factors) contracts
:math:`\|B_k - B^*\|` by at least :math:`(L-\mu)/(L+\mu)` per step, so the one-step loss
gap on a held-out task, quadratic in :math:`B_k - B^*`, falls at least as fast as the square
of that factor.

This module meta-trains DCOGD through the library's trainer (``FullUnroll``, ``T = 1``,
``meta_loss="final_train"``, ``optax.sgd``), records ``B_k`` at every meta-step, and
measures the gap :math:`l_{target}(B_k) - l^*` on held-out shifts, its fitted geometric
rate, and :math:`\|B - B^*\|_F / \|B^*\|_F`. It runs in float64 (the gap is tracked down
to ~1e-10 of its initial value).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_dco as ldco
from learned_dco import meta, tasks


def fit_rate(gap: np.ndarray, floor: float = 1e-10) -> float:
    """Geometric rate ``r`` of ``gap_k ~ c r^k``: least squares on ``log gap`` over the
    steps before the gap reaches ``floor`` times its initial value (round-off)."""
    gap = np.asarray(gap, dtype=np.float64)
    keep = gap > floor * gap[0]
    k = np.arange(gap.size)[keep]
    slope = np.polyfit(k, np.log(gap[keep]), 1)[0]
    return float(np.exp(slope))


def run_theorem1(
    key: jax.Array,
    *,
    dim: int = 20,
    n_tasks: int = 40,
    num_samples: int = 200,
    n_test: int = 20,
    meta_steps: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the Theorem 1 experiment; returns the ``results.json`` entry."""
    if n_tasks < dim:
        raise ValueError(f"Theorem 1 needs n_tasks >= dim (the Z_i must span R^p), got {n_tasks} < {dim}")
    start = time.perf_counter()
    with jax.enable_x64(True):
        family = tasks.ShiftedLeastSquares(num_samples=num_samples, dim=dim)
        k_train, k_test, k_run = jax.random.split(key, 3)
        train = tasks.sample_tasks(family, k_train, n_tasks)
        test = tasks.sample_tasks(family, k_test, n_test)
        X, _ = family.design()
        xtx = X.T @ X
        b_star = family.one_step_optimal_B()
        l_star = float(family.optimal_loss())

        # Step size from the exact meta-Hessian: eigenvalues of (2/N) sum G G^T (x) X^T X.
        grads = jax.vmap(lambda t: jax.grad(family.loss)(family.init_params(None, t), t))(train)
        eig_g = np.linalg.eigvalsh(np.asarray(grads.T @ grads))
        eig_x = np.linalg.eigvalsh(np.asarray(xtx))
        big, small = 2.0 / n_tasks * eig_g[-1] * eig_x[-1], 2.0 / n_tasks * eig_g[0] * eig_x[0]
        eta = 2.0 / (big + small)
        contraction = (big - small) / (big + small)
        if meta_steps is None:  # enough for the gap to fall ~1e-12 (gap ~ contraction^(2k))
            meta_steps = int(np.ceil(np.log(1e-12) / (2 * np.log(contraction)))) + 1

        lopt = ldco.DCOGD(learning_rate=1.0 / float(2 * eig_x[-1]), normalize=False, max_consecutive_nonfinite=None)
        trainer = meta.MetaTrainer(
            lopt, family, meta.FullUnroll(horizon=1, num_tasks=n_tasks, meta_loss="final_train"),
            optax.sgd(eta), pool=train, devices=jax.devices()[:1],
        )
        state, (metrics, path) = trainer.train(k_run, meta_steps, record=lambda s: s.meta["B"])
        b_path = jnp.concatenate([lopt.init(None, jnp.zeros(dim))["B"][None], path])

        def target_gap(B):
            def one(t):
                theta = family.init_params(None, t)
                return family.loss(theta - B @ jax.grad(family.loss)(theta, t), t)

            return jnp.mean(jax.vmap(one)(test)) - l_star

        gap = np.asarray(jax.jit(jax.vmap(target_gap))(b_path), dtype=np.float64)
        gap = np.maximum(gap, 0.0)
        rel_err = float(jnp.linalg.norm(b_path[-1] - b_star) / jnp.linalg.norm(b_star))
        rate = fit_rate(gap)
    log(f"  theorem1: p={dim} N={n_tasks} eta={eta:.3g} steps={meta_steps} gap {gap[0]:.3g} -> {gap[-1]:.3g} "
        f"(rate {rate:.5f}, bound {contraction**2:.5f}), ||B-B*||/||B*|| = {rel_err:.2e}")
    return {
        "p": dim,
        "n_tasks": n_tasks,
        "num_samples": num_samples,
        "n_test_tasks": n_test,
        "meta_steps": meta_steps,
        "eta": eta,
        "gap": gap.tolist(),
        "relative_gap_final": float(gap[-1] / gap[0]),
        "rate": rate,
        "rate_bound": contraction**2,
        "rel_error_B": rel_err,
        "meta_loss_final": float(metrics.meta_loss[-1]),
        "l_star": l_star,
        "seconds": time.perf_counter() - start,
    }
