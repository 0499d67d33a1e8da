"""Tests for learned_dco.tasks.nets: the small MLP/ConvNet pieces the families share."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned_dco import tasks as T
from learned_dco.tasks import nets
from _task_helpers import fast_compiles  # noqa: F401


def test_nets_shapes():
    params = nets.mlp_init(jax.random.PRNGKey(0), (3, 4, 2))
    assert nets.mlp_apply(params, jnp.ones((5, 3))).shape == (5, 2)
    assert nets.conv_output_size(8, (2, 1, 1)) == 4 and nets.conv_output_size(7, (2, 2)) == 2
    w = nets.mlp_init(jax.random.PRNGKey(0), (400, 400), gain=2.0)["layers"][0]["w"]
    assert abs(float(jnp.var(w)) * 400 / 2.0 - 1.0) < 0.05  # He variance 2 / fan_in
