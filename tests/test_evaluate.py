"""Rollouts and vmapped baseline sweeps against plain Python loops."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from learned_dco import meta, tasks

FAMILY = tasks.LeastSquares(num_samples=10, dim=5, init_scale=1.0)


def test_rollout_matches_a_python_loop():
    test_tasks = tasks.sample_tasks(FAMILY, jax.random.PRNGKey(0), 3)
    key = jax.random.PRNGKey(1)
    curves = meta.rollout(optax.adam(0.05), FAMILY, test_tasks, key, 7)
    assert curves.val.shape == curves.train.shape == (3, 8)
    for i in range(3):
        task = jax.tree.map(lambda x: x[i], test_tasks)
        k_init, _ = jax.random.split(jax.random.fold_in(key, i))
        params = FAMILY.init_params(k_init, task)
        tx = optax.adam(0.05)
        state = tx.init(params)
        losses = [FAMILY.val_loss(params, task)]
        for _ in range(7):
            updates, state = tx.update(jax.grad(FAMILY.loss)(params, task), state, params)
            params = optax.apply_updates(params, updates)
            losses.append(FAMILY.val_loss(params, task))
        np.testing.assert_allclose(curves.val[i], np.array(losses), rtol=2e-5)


def test_tuning_picks_the_grid_argmin_and_flags_divergence():
    train = tasks.sample_tasks(FAMILY, jax.random.PRNGKey(2), 4)
    key = jax.random.PRNGKey(3)
    grid = (1e-4, 1e-3, 1e-2, 3e-2, 10.0)
    tuned = meta.tune_learning_rate("sgd", FAMILY, train, key, 10, grid)
    by_hand = [float(jnp.mean(meta.rollout(optax.sgd(lr), FAMILY, train, key, 10).val[:, -1])) for lr in grid]
    by_hand = np.where(np.isfinite(by_hand), by_hand, np.inf)
    assert tuned.learning_rate == grid[int(np.argmin(by_hand))]
    np.testing.assert_allclose(tuned.scores[:-1], by_hand[:-1], rtol=1e-4)
    assert tuned.scores[-1] == np.inf  # lr = 10 diverges on these problems
    with pytest.raises(ValueError, match="unknown baseline"):
        meta.tune_learning_rate("lbfgs", FAMILY, train, key, 10)
    with pytest.raises(ValueError, match="grid"):
        meta.tune_learning_rate("sgd", FAMILY, train, key, 10, grid=(0.1, -1.0))
