"""tasks.from_flax: the family's loss, gradient, data split and initialisation against the
flax model computed directly, vmapping over a task batch, and meta-training through it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

from _task_helpers import fast_compiles  # noqa: F401
from learned_dco import DCOG, meta, tasks
from learned_dco.validation import ValidationError


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(3, 5, rngs=rngs)
        self.out = nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


class Dense(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(2)(jnp.tanh(linen.Dense(4)(x)))


def mse(pred, y):
    return jnp.mean((pred - y) ** 2)


N, N_VAL = 30, 6
X = jax.random.normal(jax.random.PRNGKey(0), (N, 3))
Y = jnp.stack([jnp.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1)


@pytest.fixture(scope="module")
def family():
    return tasks.from_flax(lambda rngs: MLP(rngs), mse, (X, Y), n_val=N_VAL, batch_size=4, name="toy")


def _rows(a):
    return {tuple(np.round(np.asarray(r), 6)) for r in a}


def test_split_partitions_the_data(family):
    task = family.sample(jax.random.PRNGKey(1))
    assert task.x_train.shape == (N - N_VAL, 3) and task.x_val.shape == (N_VAL, 3)
    assert _rows(task.x_train) | _rows(task.x_val) == _rows(X)
    assert not _rows(task.x_train) & _rows(task.x_val)
    # targets stay paired with their inputs
    lookup = {tuple(np.round(np.asarray(x), 6)): np.asarray(y) for x, y in zip(X, Y)}
    for x, y in zip(task.x_val, task.y_val):
        np.testing.assert_allclose(lookup[tuple(np.round(np.asarray(x), 6))], y, rtol=1e-6)
    other = family.sample(jax.random.PRNGKey(2))
    assert _rows(other.x_val) != _rows(task.x_val)  # tasks differ by their split


def test_nnx_loss_and_grad_equal_the_model_directly(family):
    task = family.sample(jax.random.PRNGKey(3))
    key = jax.random.PRNGKey(4)
    params = family.init_params(key, task)
    model = MLP(nnx.Rngs(key))  # the same draw, built as a user would
    loss, grads = nnx.value_and_grad(lambda m: mse(m(task.x_train), task.y_train))(model)
    got_loss, got_grads = jax.value_and_grad(family.loss)(params, task)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    want = nnx.to_pure_dict(nnx.state(grads, nnx.Param))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got_grads, want)
    np.testing.assert_allclose(family.val_loss(params, task), mse(model(task.x_val), task.y_val), rtol=1e-6)
    batch = jnp.array([0, 3, 3, 7])
    np.testing.assert_allclose(family.loss(params, task, batch),
                               mse(model(task.x_train[batch]), task.y_train[batch]), rtol=1e-6)


def test_init_draws_differ_per_key_and_nnx_instance_is_a_fixed_start(family):
    task = family.sample(jax.random.PRNGKey(0))
    a = family.init_params(jax.random.PRNGKey(0), task)
    b = family.init_params(jax.random.PRNGKey(1), task)
    assert not np.allclose(a["hidden"]["kernel"], b["hidden"]["kernel"])
    instance = MLP(nnx.Rngs(7))
    fixed = tasks.from_flax(instance, mse, (X, Y))
    start = fixed.init_params(jax.random.PRNGKey(5), fixed.sample(jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(start["out"]["kernel"], nnx.to_pure_dict(nnx.state(instance, nnx.Param))["out"]["kernel"])


def test_linen_loss_and_grad_equal_apply():
    family = tasks.from_flax(Dense(), mse, (X, Y), n_val=N_VAL)
    task = family.sample(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    params = family.init_params(key, task)
    want = Dense().init(key, X[:1])["params"]
    jax.tree.map(np.testing.assert_array_equal, params, want)
    direct = lambda p: mse(Dense().apply({"params": p}, task.x_train), task.y_train)  # noqa: E731
    np.testing.assert_allclose(family.loss(params, task), direct(params), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
                 jax.grad(family.loss)(params, task), jax.grad(direct)(params))


def test_task_batch_vmaps(family):
    pool = tasks.sample_tasks(family, jax.random.PRNGKey(0), 4)
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    params = jax.vmap(family.init_params)(keys, pool)
    got = jax.jit(jax.vmap(family.val_loss))(params, pool)
    for i in range(4):
        one = jax.tree.map(lambda a: a[i], pool)
        np.testing.assert_allclose(got[i], family.val_loss(family.init_params(keys[i], one), one), rtol=1e-5)
    assert isinstance(family, tasks.TaskFamily)
    assert family.info.num_params == 3 * 5 + 5 + 5 * 2 + 2 and family.info.stochastic


def test_generated_data_per_task():
    def data(key):
        x = jax.random.normal(key, (20, 3))
        return x, jnp.zeros((20, 2))

    family = tasks.from_flax(lambda rngs: MLP(rngs), mse, data, n_val=5)
    a, b = family.sample(jax.random.PRNGKey(0)), family.sample(jax.random.PRNGKey(1))
    assert a.x_train.shape == (15, 3) and a.x_val.shape == (5, 3)
    assert _rows(a.x_train) | _rows(a.x_val) != _rows(b.x_train) | _rows(b.x_val)  # a fresh data set per task


def test_meta_training_through_the_adapter(family):
    lopt = DCOG(learning_rate=0.05)
    trainer = meta.MetaTrainer(lopt, family, meta.FullUnroll(horizon=3, num_tasks=2), meta.rmsprop_pytorch(1e-2))
    state, metrics = trainer.train(jax.random.PRNGKey(0), 2)
    assert np.all(np.isfinite(metrics.meta_loss)) and np.all(metrics.grad_norm > 0)
    start = lopt.init(jax.random.PRNGKey(0), trainer.example_params(jax.random.PRNGKey(0)))
    assert not np.allclose(state.meta["log_lam"]["hidden"]["kernel"], start["log_lam"]["hidden"]["kernel"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_fn=lambda p, y: (p - y) ** 2), "scalar"),
    (dict(data=(X, Y[:10])), "same length"),
    (dict(data=X), "pair"),
    (dict(n_val=N), "n_val"),
    (dict(model=3), "model must be"),
])
def test_bad_input_is_named(kwargs, message):
    args = dict(model=lambda rngs: MLP(rngs), loss_fn=mse, data=(X, Y))
    args.update(kwargs)
    with pytest.raises(ValidationError, match=message):
        tasks.from_flax(args.pop("model"), args.pop("loss_fn"), args.pop("data"), **args)
