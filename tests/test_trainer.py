"""The meta-training loop: resume, non-finite tasks, sharding, sweeps, saved meta-params."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_dco as ldco
from learned_dco import meta, tasks

FAMILY = tasks.LeastSquares(num_samples=12, dim=6, init_scale=1.0)


def _trainer(estimator, pool=None, **kw):
    return meta.MetaTrainer(ldco.DCOM(learning_rate=0.01), FAMILY, estimator, pool=pool, **kw)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _pool_with_nan(n):
    pool = tasks.sample_tasks(FAMILY, jax.random.PRNGKey(3), n)
    bad = jax.tree.map(lambda x: x[:1], pool)._replace(X=jnp.full((1, 12, 6), jnp.nan))
    return pool, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), pool, bad)  # NaN task last


def test_planted_nan_task_does_not_corrupt_meta_params():
    """Plain SGD as meta-optimizer, so the applied update is proportional to the averaged
    gradient: averaging over all 9 tasks instead of the 8 finite ones (x 8/9) fails here."""
    clean, planted = _pool_with_nan(8)
    est_clean = meta.FullUnroll(horizon=3, num_tasks=8)
    est_planted = meta.FullUnroll(horizon=3, num_tasks=9)
    sgd = optax.sgd(0.05)
    t_clean, t_planted = _trainer(est_clean, clean, meta_optimizer=sgd), _trainer(est_planted, planted, meta_optimizer=sgd)
    s_clean, s_planted = t_clean.init(jax.random.PRNGKey(0)), t_planted.init(jax.random.PRNGKey(0))
    start = s_clean.meta
    for _ in range(3):
        # meta_gradient masks like the step: the finite tasks' mean, not NaN, not x 8/9.
        g_clean, g_planted = t_clean.meta_gradient(s_clean), t_planted.meta_gradient(s_planted)
        for a, b in zip(jax.tree.leaves(g_clean), jax.tree.leaves(g_planted)):
            np.testing.assert_allclose(b, a, rtol=1e-5)
        s_clean, _ = t_clean.step(s_clean)
        s_planted, m = t_planted.step(s_planted)
        assert int(m.nonfinite_tasks) == 1 and not bool(m.skipped)
        assert np.isfinite(float(m.meta_loss))
    # The NaN task is dropped from the average: the same applied updates as without it.
    moved_clean = jax.tree.map(jnp.subtract, s_clean.meta, start)
    moved_planted = jax.tree.map(jnp.subtract, s_planted.meta, start)
    for a, b in zip(jax.tree.leaves(moved_clean), jax.tree.leaves(moved_planted)):
        assert np.max(np.abs(a)) > 1e-4  # the meta-parameters moved
        np.testing.assert_allclose(b, a, rtol=1e-4)


def test_nan_tasks_in_persistent_states_are_restarted():
    _, planted = _pool_with_nan(3)
    trainer = _trainer(meta.TruncatedBPTT(horizon=4, truncation=2, num_tasks=8), planted)
    state = trainer.init(jax.random.PRNGKey(1))
    dropped = 0
    for _ in range(8):
        state, m = trainer.step(state)
        dropped += int(m.nonfinite_tasks)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.meta))
    assert dropped > 0  # the NaN task was drawn and handled
    assert int(state.skipped) == 0


def test_all_nonfinite_skips_the_update():
    _, planted = _pool_with_nan(1)
    nan_only = jax.tree.map(lambda x: x[-1:], planted)
    trainer = _trainer(meta.FullUnroll(horizon=2, num_tasks=1), nan_only)
    state = trainer.init(jax.random.PRNGKey(0))
    new, m = trainer.step(state)
    assert bool(m.skipped) and int(new.skipped) == 1
    assert _same(new.meta, state.meta) and _same(new.opt_state, state.opt_state)


def test_vmapped_seed_sweep_matches_separate_runs():
    trainer = _trainer(meta.FullUnroll(horizon=2, num_tasks=4))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    sweep = jax.jit(jax.vmap(lambda k: trainer.train(k, 5)))(keys)
    for i, k in enumerate(keys):
        single = jax.jit(lambda k: trainer.train(k, 5))(k)
        for a, b in zip(jax.tree.leaves(single[0].meta), jax.tree.leaves(sweep[0].meta)):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(single[1].meta_loss, sweep[1].meta_loss[i], rtol=1e-5)


def test_task_batch_must_divide_over_devices():
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        _trainer(meta.FullUnroll(num_tasks=3), devices=[jax.devices()[0]] * 2)


SHARDED = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np
    import learned_dco as ldco
    from learned_dco import meta, tasks
    assert len(jax.devices()) == 4, jax.devices()
    family = tasks.LeastSquares(num_samples=12, dim=6, init_scale=1.0)
    out = {}
    for name, est in [("full", meta.FullUnroll(horizon=3, num_tasks=8)),
                      ("pes", meta.PES(horizon=6, truncation=2, num_tasks=8, sigma=0.05))]:
        for devices in ("one", "all"):
            trainer = meta.MetaTrainer(ldco.DCOM(learning_rate=0.01), family, est,
                                       devices=jax.devices()[:1] if devices == "one" else None)
            state = trainer.init(jax.random.PRNGKey(0))
            shards = len(jax.tree.leaves(state.estimator_state)[0].sharding.device_set) if jax.tree.leaves(state.estimator_state) else None
            grad = trainer.meta_gradient(state)
            for _ in range(3):
                state, _ = trainer.step(state)
            out[name + "_" + devices] = {
                "grad": [np.asarray(g).tolist() for g in jax.tree.leaves(grad)],
                "meta": [np.asarray(m).tolist() for m in jax.tree.leaves(state.meta)],
                "shards": shards,
            }
    print(json.dumps(out))
    """
)


@pytest.mark.integration
def test_sharded_equals_unsharded():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pes_all"]["shards"] == 4 and out["pes_one"]["shards"] == 1
    for name in ("full", "pes"):
        one, all_ = out[name + "_one"], out[name + "_all"]
        for a, b in zip(one["grad"], all_["grad"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        for a, b in zip(one["meta"], all_["meta"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
