"""Tests for learned_dco.tasks.interpolation: SmoothInterpolation (DCO Sec. VI-D)."""

from __future__ import annotations

import jax
import numpy as np

from learned_dco import tasks as T
from _task_helpers import fast_compiles, sample_many  # noqa: F401


def test_smooth_interpolation_data():
    fam = T.SmoothInterpolation()
    tasks = sample_many(fam, 0, 8)
    assert tasks.x_train.shape == (8, 500, 1) and tasks.x_val.shape == (8, 100, 1)
    for coef in (tasks.a, tasks.b, tasks.c):
        assert np.all((coef >= 0) & (coef <= 1))
    x = np.asarray(tasks.x_train, np.float64)
    assert x.min() >= -5.0 and x.max() <= 5.0 and x.min() < -4.0 and x.max() > 4.0
    a, b, c = (np.asarray(v, np.float64)[:, None, None] for v in (tasks.a, tasks.b, tasks.c))
    np.testing.assert_allclose(tasks.y_train, a * np.cos(b * x) * np.exp(-c * np.abs(x)), atol=1e-6)
    task = jax.tree.map(lambda v: v[0], tasks)
    params = fam.init_params(jax.random.PRNGKey(1), task)
    assert [layer["w"].shape for layer in params["layers"]] == [(1, 10), (10, 10), (10, 1)]
    pred = fam.predict(params, task.x_train)
    np.testing.assert_allclose(fam.loss(params, task), np.mean((pred - task.y_train) ** 2), rtol=1e-6)
