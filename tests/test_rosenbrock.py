"""Tests for learned_dco.tasks.rosenbrock."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco import tasks as T
from _task_helpers import fast_compiles, sample_many  # noqa: F401


def test_rosenbrock_minimum_at_ones():
    rng = np.random.default_rng(0)
    for dim in (2, 5):
        fam = T.Rosenbrock(dim=dim)
        task = T.RosenbrockTask(x0=jnp.zeros(dim))
        opt = fam.optimum(task)
        np.testing.assert_array_equal(opt, np.ones(dim))
        assert float(fam.loss(opt, task)) == 0.0
        assert float(jnp.max(jnp.abs(jax.grad(fam.loss)(opt, task)))) == 0.0
        xs = rng.standard_normal((10, dim))
        values = np.asarray(jax.vmap(fam.loss, (0, None))(jnp.asarray(xs, jnp.float32), task))
        for x, value in zip(xs, values):
            ref = sum((1 - x[i]) ** 2 + 100 * (x[i + 1] - x[i] ** 2) ** 2 for i in range(dim - 1))
            np.testing.assert_allclose(value, ref, rtol=1e-5)
        near = np.asarray(jax.vmap(fam.loss, (0, None))(opt + 1e-2 * jnp.asarray(xs, jnp.float32), task))
        assert np.all(near > 0.0)
        np.testing.assert_array_equal(fam.init_params(jax.random.PRNGKey(0), task), task.x0)
    # shift moves the start distribution, not the objective
    x0 = sample_many(T.Rosenbrock(shift=3.0), 0, 400).x0
    assert abs(float(jnp.mean(x0)) - 3.0) < 0.2 and abs(float(jnp.std(x0)) - 1.0) < 0.1
