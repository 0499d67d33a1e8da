"""Tests for learned_dco.tasks.population: BevertonHolt (DCO Sec. VI-C)."""

from __future__ import annotations

import jax
import numpy as np

from learned_dco import tasks as T
from _task_helpers import fast_compiles  # noqa: F401


def test_beverton_holt_data():
    fam = T.BevertonHolt()
    draw = jax.jit(lambda key: [T.sample_tasks(f, key, 16) for f in (fam, T.BevertonHolt(noisy_val=True))])
    tasks, noisy = draw(jax.random.PRNGKey(0))
    assert tasks.x_train.shape == tasks.y_train.shape == (16, 500, 1)
    assert tasks.x_val.shape == tasks.y_val.shape == (16, 100, 1)
    r0 = np.asarray(tasks.r0, np.float64)[:, None, None]
    k = np.asarray(tasks.k, np.float64)[:, None, None]
    assert np.all((r0 >= 1) & (r0 <= 2)) and np.all((k >= 1) & (k <= 2))
    x_tr, x_va = np.asarray(tasks.x_train, np.float64), np.asarray(tasks.x_val, np.float64)
    assert x_tr.min() >= 0.0 and x_tr.max() <= 10.0 and x_tr.max() > 9.0
    # validation targets are the clean map; training targets carry N(0, 0.1) noise (variance)
    np.testing.assert_allclose(tasks.y_val, r0 * x_va / (k + x_va), rtol=1e-5)
    resid = np.asarray(tasks.y_train, np.float64) - r0 * x_tr / (k + x_tr)
    assert abs(resid.var() - 0.1) < 0.01 and abs(resid.mean()) < 0.02  # 8000 draws
    np.testing.assert_array_equal(noisy.y_train, tasks.y_train)
    assert abs(np.var(np.asarray(noisy.y_val - tasks.y_val, np.float64)) - 0.1) < 0.03
    # the MLP is 1-5-5-1 and the losses are MSEs
    task = jax.tree.map(lambda v: v[0], tasks)

    @jax.jit
    def evaluate(key):
        params = fam.init_params(key, task)
        return params, fam.val_loss(params, task), fam.clean_val_loss(params, task)

    params, val, clean_val = jax.device_get(evaluate(jax.random.PRNGKey(2)))
    (w1, b1), (w2, b2), (w3, b3) = ((layer["w"], layer["b"]) for layer in params["layers"])
    assert [w1.shape, w2.shape, w3.shape] == [(1, 5), (5, 5), (5, 1)]
    pred = np.tanh(np.tanh(x_va[0] @ w1 + b1) @ w2 + b2) @ w3 + b3  # independent forward pass
    np.testing.assert_allclose(val, np.mean((pred - np.asarray(task.y_val)) ** 2), rtol=1e-5)
    np.testing.assert_allclose(clean_val, val, rtol=1e-6)
