"""Tests for learned_dco.tasks.digits: the bundled digits, DigitsMLP and DigitsConvNet."""

from __future__ import annotations

import hashlib
import importlib.resources

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from learned_dco import tasks as T
from _task_helpers import fast_compiles, sample, sample_many  # noqa: F401


def test_bundled_digits_file():
    images, labels = T.load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(np.round(images * 16), images * 16)  # counts 0..16 / 16
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 170 and set(np.unique(labels)) == set(range(10))
    raw = (importlib.resources.files("learned_dco.tasks") / "data" / "digits.npz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == (
        "b2dab7b501728c22e9119ad76740b2e17c77a231e42d1e592380d90886f1a05e"
    )


@pytest.mark.parametrize("cls", [T.DigitsMLP, T.DigitsConvNet])
def test_digits_split_and_batches(cls):
    fam = cls(channels=(4, 4, 4)) if cls is T.DigitsConvNet else cls()
    tasks = sample_many(fam, 0, 3)
    assert tasks.train_idx.shape == (3, 1500) and tasks.val_idx.shape == (3, 297)
    for i in range(3):
        tr, va = np.asarray(tasks.train_idx[i]), np.asarray(tasks.val_idx[i])
        assert len(np.intersect1d(tr, va)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(1797))
    assert not np.array_equal(tasks.val_idx[0], tasks.val_idx[1])  # per-task split
    fixed = sample_many(cls(split_seed=7), 0, 2)
    np.testing.assert_array_equal(fixed.val_idx[0], fixed.val_idx[1])

    @jax.jit
    def probe(task, key):
        k_init, k_batch = jax.random.split(key)
        params = fam.init_params(k_init, task)
        batch = fam.sample_batch(k_batch, task)
        logits = fam._logits(params, jnp.asarray(T.load_digits()[0])[batch])
        return batch, logits, fam.loss(params, task, batch), fam.accuracy(params, task, "train")

    task = jax.tree.map(lambda v: v[0], tasks)
    batch, logits, loss, acc = (np.asarray(v) for v in probe(task, jax.random.PRNGKey(1)))
    assert batch.shape == (128,) and len(np.unique(batch)) == 128  # without replacement
    assert np.all(np.isin(batch, np.asarray(task.train_idx)))
    # loss on a batch is the cross-entropy of those examples (independent log-softmax)
    labels = T.load_digits()[1]
    logits = logits.astype(np.float64)
    assert logits.shape == (128, 10)
    lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
    np.testing.assert_allclose(loss, np.mean(lse - logits[np.arange(128), labels[batch]]), rtol=1e-5)
    assert 0.0 <= acc <= 1.0


def test_digits_mlp_learns():
    fam = T.DigitsMLP()
    task = sample(fam, 0)
    opt = optax.adam(1e-3)

    @jax.jit
    def train(key):
        params0 = fam.init_params(key, task)

        def step(carry, k):
            params, state = carry
            grads = jax.grad(fam.loss)(params, task, fam.sample_batch(k, task))
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        keys = jax.random.split(key, 300)
        (params, _), _ = jax.lax.scan(step, (params0, opt.init(params0)), keys)
        return [(fam.accuracy(p, task, "val"), fam.val_loss(p, task)) for p in (params0, params)]

    (acc0, val0), (acc, val) = jax.device_get(train(jax.random.PRNGKey(1)))
    assert acc0 < 0.35
    assert acc > 0.9, acc  # chance is 0.1
    assert val < 0.5 * val0


def test_digits_convnet_shapes_and_learns():
    fam = T.DigitsConvNet()
    params = jax.eval_shape(fam.init_params, jax.random.PRNGKey(0), None)
    assert [c["w"].shape for c in params["conv"]] == [(3, 3, 1, 32), (3, 3, 32, 64), (3, 3, 64, 64)]
    assert params["head"]["w"].shape == (64, 10)
    flat = jax.eval_shape(T.DigitsConvNet(pooling="flatten").init_params, jax.random.PRNGKey(0), None)
    assert flat["head"]["w"].shape == (4 * 4 * 64, 10)
    # a few Adam steps (python loop: XLA:CPU runs convolutions inside lax.scan slowly)
    task = sample(fam, 0)
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, state, key):
        grads = jax.grad(fam.loss)(params, task, fam.sample_batch(key, task))
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = fam.init_params(jax.random.PRNGKey(1), task)
    state = opt.init(params)
    for key in jax.random.split(jax.random.PRNGKey(2), 40):
        params, state = step(params, state, key)
    assert float(jax.jit(fam.accuracy)(params, task)) > 0.6  # chance is 0.1
