"""tasks.Mixture / CompiledPerFamily and the classification families it mixes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_dco import tasks
from learned_dco.validation import ValidationError


def _sgd_unroll(family, horizon):
    """Mean final training loss of SGD(exp(log_lr)) over a batch of tasks (the test's meta-step)."""

    def run(log_lr, task_batch, key):
        def one(task, k):
            params = family.init_params(k, task)

            def body(p, _):
                g = jax.grad(family.loss)(p, task)
                return jax.tree.map(lambda a, b: a - jnp.exp(log_lr) * b, p, g), None

            params, _ = jax.lax.scan(body, params, None, length=horizon)
            return family.loss(params, task)

        keys = jax.random.split(key, jax.tree.leaves(task_batch)[0].shape[0])
        return jnp.mean(jax.vmap(one)(task_batch, keys))

    return run


def test_zero_init_losses_are_log_classes():
    key = jax.random.PRNGKey(0)
    for family, want in [
        (tasks.SoftmaxRegression(), np.log(10)),
        (tasks.SoftmaxRegression(data="synthetic", num_classes=4), np.log(4)),
        (tasks.LogisticRegression(), np.log(2)),
    ]:
        task = family.sample(key)
        params = family.init_params(key, task)
        np.testing.assert_allclose(family.loss(params, task), want, rtol=1e-5)
        np.testing.assert_allclose(family.val_loss(params, task), want, rtol=1e-5)


def test_losses_match_numpy_reference():
    key = jax.random.PRNGKey(1)
    fam = tasks.SoftmaxRegression(data="synthetic", dim=5, num_classes=3, num_examples=64, n_val=16)
    task = fam.sample(key)
    w = jax.random.normal(key, (5, 3))
    params = {"w": w, "b": jnp.array([0.1, -0.2, 0.3])}
    x, y = np.asarray(task.x_train, np.float64), np.asarray(task.y_train)
    z = x @ np.asarray(w, np.float64) + np.array([0.1, -0.2, 0.3])
    ref = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y])
    np.testing.assert_allclose(fam.loss(params, task), ref, rtol=1e-5)
    # binary: gradient is X^T (sigmoid(z) - y) / N
    fam = tasks.LogisticRegression(data="synthetic", dim=5, num_examples=64, n_val=16)
    task = fam.sample(key)
    params = {"w": jax.random.normal(key, (5, 1)), "b": jnp.array([0.2])}
    x, y = np.asarray(task.x_train, np.float64), np.asarray(task.y_train, np.float64)
    z = x @ np.asarray(params["w"], np.float64)[:, 0] + 0.2
    r = 1 / (1 + np.exp(-z)) - y
    g = jax.grad(fam.loss)(params, task)
    np.testing.assert_allclose(g["w"][:, 0], x.T @ r / len(y), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g["b"][0], r.mean(), rtol=1e-4, atol=1e-6)


def test_random_mlps_shapes_and_minibatches():
    mlps = tasks.random_mlps(3, 4)
    assert len(set(mlps)) > 1  # different architectures
    key = jax.random.PRNGKey(0)
    for fam in mlps:
        task = fam.sample(key)
        params = fam.init_params(key, task)
        sizes = [fam.input_dim, *fam.hidden, fam.classes]
        assert [l["w"].shape for l in params["layers"]] == list(zip(sizes[:-1], sizes[1:]))
        batch = fam.sample_batch(key, task)
        assert batch.shape == (fam.batch_size,) and int(batch.max()) < task.x_train.shape[0]
        assert np.isfinite(fam.loss(params, task, batch))


def test_draw_frequencies_follow_weights():
    """1000 draws, weights (1, 3): p = 0.75, sd 0.014; tolerance 0.06 (over 4 sd), so a
    uniform draw (0.5) fails with certainty."""
    mix = tasks.Mixture((tasks.Quadratic(dim=2), tasks.Quadratic(dim=3)), weights=(1, 3), horizons=(5, 7))
    draws = [mix.draw(k) for k in jax.random.split(jax.random.PRNGKey(0), 1000)]
    frac = np.mean([i == 1 for i, _ in draws])
    assert abs(frac - 0.75) < 0.06
    assert {h for _, h in draws} == {5, 7}


def test_second_pass_compiles_nothing():
    members = (tasks.Quadratic(dim=3), tasks.LogisticRegression(data="synthetic", dim=4, num_examples=32, n_val=8),
               *tasks.random_mlps(0, 1, data=("synthetic",), widths=(4,), depths=(1,)))
    mix = tasks.Mixture(members, horizons=(3, 5))
    step = tasks.CompiledPerFamily(mix, _sgd_unroll)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
    )

    def one_pass():
        out = []
        for i, fam in enumerate(mix.members):
            batch = tasks.sample_tasks(fam, jax.random.PRNGKey(i), 2)
            for h in mix.horizons:
                out.append(float(step(i, h)(jnp.log(0.01), batch, jax.random.PRNGKey(7))))
        return out

    first = one_pass()
    n_first = len(compiles)
    assert n_first >= len(members) * len(mix.horizons) and step.built == 6
    second = one_pass()
    assert len(compiles) == n_first, "a second pass over the same families recompiled"
    assert first == second and all(np.isfinite(first))


def test_bad_input_is_named():
    with pytest.raises(ValidationError, match="at least one"):
        tasks.Mixture(())
    with pytest.raises(ValidationError, match=r"members\[1\] is not a task family"):
        tasks.Mixture((tasks.Quadratic(), "quadratic"))
    with pytest.raises(ValidationError, match="weights"):
        tasks.Mixture((tasks.Quadratic(),), weights=(1, 2))
    with pytest.raises(ValidationError, match="horizons"):
        tasks.Mixture((tasks.Quadratic(),), horizons=(0,))
    step = tasks.CompiledPerFamily(tasks.Mixture((tasks.Quadratic(),), horizons=(4,)), _sgd_unroll)
    with pytest.raises(ValidationError, match="horizon 5 is not one"):
        step(0, 5)
    with pytest.raises(ValidationError, match="data must be one of"):
        tasks.SoftmaxRegression(data="mnist")
    with pytest.raises(ValidationError, match="hidden"):
        tasks.MLPClassifier(hidden=(0,))
