"""Tests for learned_dco.tasks (the registry and tasks/base.py): every family follows the
TaskFamily protocol (deterministic, vmap == loop, info) and names the field at fault on bad
input. Each family's own maths is tested in tests/test_<module>.py against an independent
reference; the shared helpers live in tests/_task_helpers.py.

Kept cheap (2 shared CPU cores): one jitted probe per family, reused for the vmap/loop
comparison.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from learned_dco import tasks as T
from _task_helpers import fast_compiles  # noqa: F401

# Family instances for the protocol tests. The ConvNet used for the vmap comparison is
# narrowed (vmap correctness does not depend on width); everything else is the default.
DEFAULTS = {name: cls() for name, cls in T.FAMILIES.items()}
PROBE_FAMILIES = dict(DEFAULTS, digits_convnet=T.DigitsConvNet(channels=(8, 8, 8)))
STOCHASTIC = {
    "noisy_quadratic",
    "spectral_noisy_quadratic",
    "digits_mlp",
    "digits_convnet",
    "softmax_regression",
    "logistic_regression",
    "mlp_classifier",
}


def _probe(family):
    """key -> (task, params, batch, training loss at init, validation loss at init)."""

    def probe(key):
        k_task, k_init, k_batch = jax.random.split(key, 3)
        task = family.sample(k_task)
        params = family.init_params(k_init, task)
        batch = family.sample_batch(k_batch, task)
        return task, params, batch, family.loss(params, task, batch), family.val_loss(params, task)

    return probe


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


# --- registry -------------------------------------------------------------------------------


def test_registry_names_and_make_family():
    assert set(T.FAMILIES) == {
        "least_squares",
        "shifted_least_squares",
        "beverton_holt",
        "smooth_interpolation",
        "noisy_quadratic",
        "spectral_noisy_quadratic",
        "lasso",
        "quadratic",
        "rosenbrock",
        "digits_mlp",
        "digits_convnet",
        "softmax_regression",
        "logistic_regression",
        "mlp_classifier",
        "nonneg_least_squares",
        "simplex_least_squares",
        "box_lqr",
    }
    for cls in T.FAMILIES.values():
        assert issubclass(cls, T.TaskFamilyBase)
        assert cls.__doc__ and cls.source
    fam = T.make_family("least_squares", dim=7, num_samples=9)
    assert fam == T.LeastSquares(num_samples=9, dim=7)
    with pytest.raises(ValueError, match="nope"):
        T.make_family("nope")


def test_yaml_style_lists_are_normalised_and_hashable():
    # A YAML config gives lists; families must stay hashable (static jit arguments).
    fam = T.BevertonHolt(hidden=[5, 5], r0_range=[1, 2], k_range=[1, 2], n_range=[0, 10])
    assert fam == T.BevertonHolt() and hash(fam) == hash(T.BevertonHolt())
    nq = T.NoisyQuadratic(hessian=[[1.11, 0.596], [0.596, 0.486]])
    assert nq == T.NoisyQuadratic.star()
    conv = T.DigitsConvNet(channels=[32, 64, 64], strides=[2, 1, 1])
    assert hash(conv) == hash(T.DigitsConvNet())


# --- protocol: determinism, vmap == loop, info ---------------------------------------------

# Parameter counts of the default families, worked out by hand from their docstrings.
NUM_PARAMS = {
    "least_squares": 100,
    "shifted_least_squares": 20,
    "beverton_holt": (1 * 5 + 5) + (5 * 5 + 5) + (5 * 1 + 1),  # 1-5-5-1
    "smooth_interpolation": (1 * 10 + 10) + (10 * 10 + 10) + (10 * 1 + 1),  # 1-10-10-1
    "noisy_quadratic": 2,
    "spectral_noisy_quadratic": 10,
    "lasso": 40,
    "quadratic": 10,
    "rosenbrock": 2,
    "digits_mlp": (64 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10),
    "digits_convnet": (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 64 + 64) + (64 * 10 + 10),
    "softmax_regression": 64 * 10 + 10,
    "logistic_regression": 64 * 1 + 1,
    "mlp_classifier": (64 * 32 + 32) + (32 * 10 + 10),
    "nonneg_least_squares": 10,
    "simplex_least_squares": 10,
    "box_lqr": 10 * 2,  # horizon x input_dim
}
HAS_OPTIMUM = {
    "least_squares",
    "shifted_least_squares",
    "noisy_quadratic",
    "spectral_noisy_quadratic",
    "lasso",
    "quadratic",
    "rosenbrock",
    "nonneg_least_squares",
    "simplex_least_squares",
    "box_lqr",
}


@pytest.mark.parametrize("name", sorted(PROBE_FAMILIES))
def test_deterministic_and_vmap_matches_loop(name):
    family = PROBE_FAMILIES[name]
    probe = _probe(family)
    single = jax.jit(probe)
    keys = jax.random.split(jax.random.PRNGKey(42), 64)
    batched = jax.device_get(jax.jit(jax.vmap(probe))(keys))

    first = jax.device_get(single(keys[0]))
    assert _leaves_equal(first, single(keys[0])), "same key must give the same task"
    assert not _leaves_equal(first[0], single(keys[1])[0]), "different keys must differ"
    assert (first[2] is None) == (name not in STOCHASTIC)

    for i in range(keys.shape[0]):
        out = jax.device_get(single(keys[i]))
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(jax.tree.map(lambda x: x[i], batched))):
            assert a.shape == b.shape and a.dtype == b.dtype
            if np.issubdtype(a.dtype, np.integer):
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)
    loss, val = batched[3], batched[4]
    assert loss.shape == val.shape == (64,)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(val))
    # info.num_params is the size of the ravelled params
    assert family.info.num_params == ravel_pytree(first[1])[0].size


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_info(name):
    family = DEFAULTS[name]
    info = family.info
    assert info.num_params == NUM_PARAMS[name]
    assert info.name == type(family).__name__ and info.source
    assert info.stochastic == (name in STOCHASTIC)
    assert info.has_optimum == (name in HAS_OPTIMUM)
    if not info.has_optimum:
        with pytest.raises(NotImplementedError):
            family.optimum(jax.eval_shape(family.sample, jax.random.PRNGKey(0)))
    else:  # optimum has the params' structure and shapes (abstract evaluation only)
        task = jax.eval_shape(family.sample, jax.random.PRNGKey(0))
        params = jax.eval_shape(family.init_params, jax.random.PRNGKey(0), task)
        opt = jax.eval_shape(family.optimum, task)
        assert jax.tree.structure(opt) == jax.tree.structure(params)
        assert [o.shape for o in jax.tree.leaves(opt)] == [p.shape for p in jax.tree.leaves(params)]


# --- bad input ----------------------------------------------------------------------------

BAD = [
    (T.LeastSquares, dict(dim=-1), "dim"),
    (T.LeastSquares, dict(dim=2.5), "dim"),
    (T.LeastSquares, dict(num_samples=0), "num_samples"),
    (T.LeastSquares, dict(reduction="max"), "reduction"),
    (T.LeastSquares, dict(init_scale=-1.0), "init_scale"),
    (T.ShiftedLeastSquares, dict(num_samples=10, dim=20), "num_samples"),
    (T.ShiftedLeastSquares, dict(shift_scale=-1.0), "shift_scale"),
    (T.ShiftedLeastSquares, dict(data_seed=-3), "data_seed"),
    (T.BevertonHolt, dict(noise_var=-0.1), "noise_var"),
    (T.BevertonHolt, dict(num_train=-5), "num_train"),
    (T.BevertonHolt, dict(r0_range=(2.0, 1.0)), "r0_range"),
    (T.BevertonHolt, dict(k_range=(0.0, 1.0)), "k_range"),
    (T.BevertonHolt, dict(hidden=(5, -5)), "hidden"),
    (T.BevertonHolt, dict(activation="swish9"), "activation"),
    (T.SmoothInterpolation, dict(x_range=(1.0,)), "x_range"),
    (T.SmoothInterpolation, dict(num_val=0), "num_val"),
    (T.SmoothInterpolation, dict(c_range=(-1.0, 1.0)), "c_range"),
    (T.NoisyQuadratic, dict(hessian=((1.0, 2.0), (3.0, 4.0))), "hessian"),
    (T.NoisyQuadratic, dict(hessian=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))), "hessian"),
    (T.NoisyQuadratic, dict(hessian=((1.0, 0.0), (0.0, -1.0))), "hessian"),
    (T.NoisyQuadratic, dict(init_var=-10.0), "init_var"),
    (T.NoisyQuadratic, dict(noise_std=-1.0), "noise_std"),
    (T.SpectralNoisyQuadratic, dict(dim=0), "dim"),
    (T.SpectralNoisyQuadratic, dict(spectrum="flat"), "spectrum"),
    (T.SpectralNoisyQuadratic, dict(eig_min=2.0, eig_max=1.0), "eig_min"),
    (T.Lasso, dict(lam=-0.005), "lam"),
    (T.Lasso, dict(sparsity=1.5), "sparsity"),
    (T.Lasso, dict(dim=-1), "dim"),
    (T.Lasso, dict(shift=float("nan")), "shift"),
    (T.Quadratic, dict(dim=0), "dim"),
    (T.Rosenbrock, dict(dim=1), "dim"),
    (T.Rosenbrock, dict(curvature=0.0), "curvature"),
    (T.DigitsMLP, dict(n_val=0), "n_val"),
    (T.DigitsMLP, dict(n_val=1797), "n_val"),
    (T.DigitsMLP, dict(batch_size=-1), "batch_size"),
    (T.DigitsMLP, dict(hidden=()), "hidden"),
    (T.DigitsConvNet, dict(strides=(2, 1)), "strides"),
    (T.DigitsConvNet, dict(pooling="max"), "pooling"),
    (T.DigitsConvNet, dict(split_seed=-1), "split_seed"),
]


@pytest.mark.parametrize("cls, kwargs, field", BAD, ids=[f"{c.__name__}-{f}" for c, _, f in BAD])
def test_bad_input_names_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)
