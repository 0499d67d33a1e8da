"""A truncated-BPTT truncation written as a plain Python loop: the independent reference
for the truncated estimators (tests/test_estimators.py, tests/test_alignment.py).

It mirrors the documented random streams (:mod:`learned_dco.meta.inner`): each step splits
the task's key into the next key, the minibatch key, the meta-loss key and the reset key;
an episode that ends draws its fresh task and state from the reset key
(:func:`learned_dco.meta.starts.fresh_state`), with the optimizer state initialised under
the same meta-parameters.
"""

from __future__ import annotations

import jax
import numpy as np
import optax


def truncation_by_hand(lopt, family, horizon: int, num_steps: int, theta, state):
    """``(T/K) * sum_t m_t`` over ``num_steps`` steps of the fresh-batch mean-train
    meta-loss from one task's ``state`` (a concrete episode step), restarting the episode
    in Python where it ends; returns ``(value, (mean training loss, final state))``."""
    tx = lopt.opt_fn(theta)
    params, opt_state, task, key = state.params, state.opt_state, state.task, state.key
    step = int(state.step)
    total, train = 0.0, 0.0
    for _ in range(num_steps):
        key, k_batch, k_meta, k_reset = jax.random.split(key, 4)
        loss, g = jax.value_and_grad(family.loss)(params, task, family.sample_batch(k_batch, task))
        u, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, u)
        total = total + family.loss(params, task, family.sample_batch(k_meta, task)) / horizon
        train = train + loss / num_steps
        step += 1
        if step >= horizon:
            k_task, k_fresh = jax.random.split(k_reset)
            task = family.sample(k_task)
            k_init, key = jax.random.split(k_fresh)
            params = family.init_params(k_init, task)
            opt_state = tx.init(params)
            step = 0
    final = state._replace(params=params, opt_state=opt_state, task=task, step=step, key=key)
    return horizon / num_steps * total, (train, final)


def check_truncated_estimate(estimate, next_states, lopt, family, horizon, num_steps, theta, states, rtol=1e-5):
    """Every task's TruncatedBPTT estimate (value, gradient, training loss, next episode step
    and parameters) against :func:`truncation_by_hand` and ``jax.grad`` of it."""
    for i in range(len(states.step)):
        s = jax.tree.map(lambda x: x[i], states)
        (value, (train, final)), grad = jax.value_and_grad(
            lambda th: truncation_by_hand(lopt, family, horizon, num_steps, th, s), has_aux=True)(theta)
        np.testing.assert_allclose(estimate.meta_loss[i], value, rtol=rtol)
        np.testing.assert_allclose(estimate.train_loss[i], train, rtol=rtol)
        for a, b in zip(jax.tree.leaves(estimate.grad), jax.tree.leaves(grad)):
            np.testing.assert_allclose(a[i], b, rtol=rtol, atol=1e-7)
        assert int(next_states.step[i]) == final.step
        for a, b in zip(jax.tree.leaves(next_states.params), jax.tree.leaves(final.params)):
            np.testing.assert_allclose(a[i], b, rtol=rtol, atol=1e-7)
