"""Shared helper of the optimizer test modules: one jitted run of an optax transformation."""

from __future__ import annotations

import jax
import optax


def trajectory(tx, params, loss, steps):
    """Iterates 1..steps of ``tx`` on ``loss`` from ``params`` (one jitted scan), and the final state."""

    def step(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p)
        p = optax.apply_updates(p, u)
        return (p, s), p

    (_, state), path = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=steps))(params)
    return [jax.tree.map(lambda x: x[i], path) for i in range(steps)], state
