"""Blackbox, Hyperparam and STAR against independent references: a NumPy re-implementation
of the accumulators, the 39 features and the per-parameter MLP, optax's Adam, and the
AdamW weight-decay algebra.

Each update function is jitted once (eagerly, the ``lax.cond`` of the non-finite guard would
recompile on every call). Comparisons with the reference run in float64 (the ``x64``
fixture), so they can be tight.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_dco as ldco
from learned_dco.optimizers import features as F
from learned_dco.optimizers.star import count_meta_parameters, decay_values

TIME_SCALES = np.array([1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000], np.float64)


@jax.jit
def _make_params(key):
    ks = jax.random.split(key, 4)
    return {
        "dense": {"w": 0.5 * jax.random.normal(ks[0], (5, 7)), "b": 0.01 * jax.random.normal(ks[1], (7,))},
        "scale": jnp.asarray(1.3),
        "conv": 0.2 * jax.random.normal(ks[2], (3, 3, 2, 4)),
    }


def _params(key=0):
    """Every rank: a matrix, a vector, a scalar and a conv kernel, at different scales."""
    return _make_params(jax.random.PRNGKey(key))


@jax.jit
def _grads(params, step):
    """Deterministic, differently scaled gradients per step (no model needed)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(100), step), len(leaves))
    scales = [10.0 ** (-i) for i in range(len(leaves))]
    return jax.tree.unflatten(treedef, [s * jax.random.normal(k, jnp.shape(p), jnp.result_type(p)) for s, k, p in zip(scales, keys, leaves)])


@functools.lru_cache(maxsize=None)
def _update_fn(lopt):
    """``(meta, grads, state, params) -> (updates, state)``, jitted once per optimizer config
    (meta is an argument, so new meta-parameters do not recompile)."""
    return jax.jit(lambda meta, grads, state, params: lopt.opt_fn(meta).update(grads, state, params))


# --- NumPy reference ----------------------------------------------------------------------


class NumpyReference:
    """Accumulators, features and MLP of the module docstrings, written out in NumPy."""

    def __init__(self, lopt, meta):
        self.lopt = lopt
        self.meta = jax.tree.map(lambda x: np.asarray(x, np.float64), meta)
        theta = self.meta.get("decays")
        sig = lambda base, th: 1 / (1 + np.exp(-(np.log(base) - np.log1p(-base) + 10 * th)))
        base_m, base_f = np.asarray(lopt.momentum_decays), np.asarray(lopt.adafactor_decays)
        if theta is None:
            self.bm, self.bv, self.bf = base_m, float(lopt.rms_decay), base_f
        else:
            self.bm = sig(base_m, theta["momentum"])
            self.bv = float(sig(lopt.rms_decay, theta["rms"]))
            self.bf = sig(base_f, theta["adafactor"])
        self.acc = {}
        self.count = 0

    def step(self, path, p, g):
        """Update this tensor's accumulators (call once per tensor per step)."""
        K = len(self.bm)
        a = self.acc.setdefault(path, None)
        if a is None:
            a = {"m": np.zeros(p.shape + (K,)), "v": np.zeros(p.shape)}
            if p.ndim >= 2:
                a["R"] = np.zeros(p.shape[:-1] + (K,))
                a["C"] = np.zeros(p.shape[:-2] + p.shape[-1:] + (K,))
            else:
                a["F"] = np.zeros(p.shape + (K,))
        for k in range(K):
            a["m"][..., k] = self.bm[k] * a["m"][..., k] + (1 - self.bm[k]) * g
            G = g * g + 1e-30
            if p.ndim >= 2:
                a["R"][..., k] = self.bf[k] * a["R"][..., k] + (1 - self.bf[k]) * G.mean(axis=-1)
                a["C"][..., k] = self.bf[k] * a["C"][..., k] + (1 - self.bf[k]) * G.mean(axis=-2)
            else:
                a["F"][..., k] = self.bf[k] * a["F"][..., k] + (1 - self.bf[k]) * G
        a["v"] = self.bv * a["v"] + (1 - self.bv) * g * g
        self.acc[path] = a

    def raw_features(self, path, p, g):
        a = self.acc[path]
        m, v, K = a["m"], a["v"], len(self.bm)
        rho = lambda x: 1 / np.sqrt(x + 1e-8)
        rho_s = lambda x: 1 / np.sqrt(np.maximum(x, 1e-9))
        ch = [g, p] + [m[..., k] for k in range(K)] + [v] + [m[..., k] * rho(v) for k in range(K)] + [rho(v)]
        fac_grad, row, col, fac_mom = [], [], [], []
        for k in range(K):
            if p.ndim >= 2:
                R, C = a["R"][..., k], a["C"][..., k]
                Rb = np.broadcast_to(R[..., :, None], p.shape)
                Cb = np.broadcast_to(C[..., None, :], p.shape)
                rbar = R.mean(axis=-1, keepdims=True)
                pre = rho_s(R / (rbar + 1e-9))[..., :, None] * rho_s(C)[..., None, :]
                fac_grad.append(g * pre)
                fac_mom.append(m[..., k] * pre)
                row.append(Rb)
                col.append(Cb)
            else:
                Fk = a["F"][..., k]
                fac_grad.append(g * rho_s(Fk + 1e-9))
                fac_mom.append(m[..., k] / np.sqrt(Fk + 1e-6))
                row.append(Fk)
                col.append(Fk)
        ch += fac_grad + row + col + [rho(x) for x in row] + [rho(x) for x in col] + fac_mom
        return [np.broadcast_to(c, p.shape) for c in ch]

    def inputs(self, path, p, g):
        eps = self.lopt.feature_eps
        ch = [c / np.sqrt(eps + np.mean(c * c)) for c in self.raw_features(path, p, g)]
        time = np.tanh(self.count / TIME_SCALES - 1.0)
        return np.stack(ch + [np.full(p.shape, t) for t in time], axis=-1)

    def heads(self, x):
        h = x
        for layer in self.meta["trunk"]:
            h = np.maximum(h @ layer["w"] + layer["b"], 0.0)
        return {name: h @ hd["w"] + hd["b"] for name, hd in self.meta["heads"].items()}

    def update(self, params, grads):
        """One step: the reference update pytree."""
        flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
        flat_g = jax.tree.leaves(grads)
        out = []
        for (path, p), g in zip(flat_p, flat_g):
            p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
            key = jax.tree_util.keystr(path)
            self.step(key, p, g)
            out.append(self.tensor_update(key, p, g))
        self.count += 1
        return jax.tree.unflatten(jax.tree.structure(params), out)

    def tensor_update(self, key, p, g):
        lopt, a = self.lopt, self.acc[key]
        heads = self.heads(self.inputs(key, p, g))
        t = self.count + 1
        v_hat = a["v"] / (1 - self.bv**t)
        m_hat = a["m"] / (1 - self.bm**t)
        step = np.zeros(p.shape)
        beta = lopt.magnitude_scale
        if "direction" in heads:
            bb = lopt.blackbox_step * heads["direction"] * np.exp(beta * heads["magnitude"])
            if getattr(lopt, "precondition", False):
                bb = bb / np.sqrt(v_hat + lopt.precond_eps)
            step += bb
        if "nominal_magnitude" in heads:
            direction = {
                "adam": m_hat[..., 0] / (np.sqrt(v_hat) + lopt.eps),
                "adam_aggmo": m_hat.mean(-1) / (np.sqrt(v_hat) + lopt.eps),
                "aggmo": m_hat.mean(-1),
                "sgd": g,
            }[lopt.nominal]
            step += lopt.nominal_step * np.exp(beta * heads["nominal_magnitude"]) * direction
        return -step


def _run(lopt, meta, params, steps=3, ref=None):
    """Apply ``steps`` updates (parameters move) with the library and the reference."""
    state, update = lopt.opt_fn(meta).init(params), _update_fn(lopt)
    ref = ref or NumpyReference(lopt, meta)
    for k in range(steps):
        grads = _grads(params, k)
        updates, state = update(meta, grads, state, params)
        expected = ref.update(params, grads)
        for u, e in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(u), e, rtol=1e-7, atol=1e-12)
        params = optax.apply_updates(params, updates)
    return params, state, updates


@functools.partial(jax.jit, static_argnums=(1, 2))
def _perturb(meta, key, scale):
    leaves, treedef = jax.tree.flatten(meta)
    keys = jax.random.split(jax.random.PRNGKey(key), len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)])


_tensor_inputs = jax.jit(F.tensor_inputs, static_argnums=8)


# --- features -----------------------------------------------------------------------------


def test_feature_list_and_per_tensor_normalisation(x64):
    names = F.feature_names()
    assert len(names) == F.num_features() == 39 and len(set(names)) == 39
    assert names[:2] == ("grad", "param") and names[-11:] == tuple(f"time_{int(t)}" for t in TIME_SCALES)
    lopt = ldco.Blackbox(direction_init="random")
    params = _params()
    meta = lopt.init(jax.random.PRNGKey(0), params)
    ref = NumpyReference(lopt, meta)
    state = lopt.opt_fn(meta).init(params)
    grads = _grads(params, 0)
    _, state = _update_fn(lopt)(meta, grads, state, params)
    inner = state.inner_state
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    fields = [jax.tree.leaves(getattr(inner, f)) for f in ("momentum", "rms", "fac_row", "fac_col", "fac_full")]
    for i, ((path, p), g) in enumerate(zip(flat_p, jax.tree.leaves(grads))):
        key = jax.tree_util.keystr(path)
        pn, gn = np.asarray(p, np.float64), np.asarray(g, np.float64)
        ref.step(key, pn, gn)
        x = np.asarray(_tensor_inputs(p, g, *[f[i] for f in fields], jnp.asarray(0), lopt.feature_eps))
        assert x.shape == p.shape + (39,)
        np.testing.assert_allclose(x, ref.inputs(key, pn, gn), rtol=1e-7, atol=1e-10)
        # The normalised channels have second moment m2 / (eps + m2) <= 1 over the tensor;
        # channels whose raw second moment is large are unit-normalised.
        raw = np.stack(ref.raw_features(key, pn, gn), -1).reshape(-1, 28)
        m2_raw = np.mean(raw**2, 0)
        m2 = np.mean(x.reshape(-1, 39)[:, :28].astype(np.float64) ** 2, 0)
        np.testing.assert_allclose(m2, m2_raw / (lopt.feature_eps + m2_raw), rtol=1e-3, atol=1e-7)
        big = m2_raw > 1e3 * lopt.feature_eps
        assert big.any()
        np.testing.assert_allclose(m2[big], 1.0, rtol=1e-2)
        # time features at t = 0: tanh(-1), not normalised
        np.testing.assert_allclose(x[..., 28:], np.tanh(-1.0), rtol=1e-6)


def test_features_are_invariant_to_the_scale_of_a_tensor():
    """Rescaling a tensor's gradient history by c (c^2 for the squares) leaves channels with
    a large second moment unchanged: the normalisation is per tensor."""
    p = jax.random.normal(jax.random.PRNGKey(1), (6, 5))
    g = jax.random.normal(jax.random.PRNGKey(2), (6, 5))
    state = F.init_state(p, 3, 3)
    dec = jnp.asarray([0.9, 0.99, 0.999])
    for c in (1.0, 30.0):
        s = F.update_state(state, c * g, dec, jnp.asarray(0.999), dec)
        x = F.tensor_inputs(p, c * g, s.momentum, s.rms, s.fac_row, s.fac_col, s.fac_full, s.count - 1, 1e-30)
        if c == 1.0:
            base = x
    names = F.feature_names()
    for ch in ("grad", "momentum_0", "fac_grad_1", "fac_mom_2", "row_0", "col_2"):
        i = names.index(ch)
        np.testing.assert_allclose(x[..., i], base[..., i], rtol=1e-4, atol=1e-6)


# --- update rules against the reference ---------------------------------------------------


def test_blackbox_step_is_beta1_d_exp_beta2_m_from_the_mlp(x64):
    lopt = ldco.Blackbox(direction_init="random")
    params = _params()
    meta = _perturb(lopt.init(jax.random.PRNGKey(3), params), 4, 0.05)  # learned decays too
    _run(lopt, meta, params, steps=3)


def test_blackbox_descent_init_takes_normalised_adam_steps(x64):
    """direction_init='descent': d is exactly the per-tensor normalised m_0 rho(v)."""
    lopt = ldco.Blackbox()
    params = _params()
    meta = lopt.init(jax.random.PRNGKey(5), params)
    state, update = lopt.opt_fn(meta).init(params), _update_fn(lopt)
    ref = NumpyReference(lopt, meta)
    for k in range(2):
        grads = _grads(params, k)
        updates, state = update(meta, grads, state, params)
        flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
        for (path, p), g, u in zip(flat_p, jax.tree.leaves(grads), jax.tree.leaves(updates)):
            key = jax.tree_util.keystr(path)
            pn, gn = np.asarray(p, np.float64), np.asarray(g, np.float64)
            ref.step(key, pn, gn)
            x = ref.inputs(key, pn, gn)
            adam = x[..., F.feature_names().index("adam_0")]
            mag = ref.heads(x)["magnitude"]
            np.testing.assert_allclose(np.asarray(u), -1e-3 * adam * np.exp(1e-3 * mag), rtol=1e-7, atol=1e-12)
        ref.count += 1
        params = optax.apply_updates(params, updates)


def test_star_matches_reference(x64):
    lopt = ldco.STAR(nominal_step=3e-3, blackbox_step=2e-3, direction_init="random")
    params = _params()
    meta = _perturb(lopt.init(jax.random.PRNGKey(6), params), 7, 0.05)
    _run(lopt, meta, params, steps=3)


def test_nominal_directions():
    rng = np.random.default_rng(0)
    g, v = rng.normal(size=(4, 3)), rng.uniform(0.1, 2.0, (4, 3))
    m = rng.normal(size=(4, 3, 3))
    expected = {
        "adam": m[..., 0] / (np.sqrt(v) + 1e-8),
        "adam_aggmo": m.mean(-1) / (np.sqrt(v) + 1e-8),
        "aggmo": m.mean(-1),
        "sgd": g,
    }
    for name, want in expected.items():
        got = ldco.optimizers.star.nominal_direction(name, jnp.asarray(g), jnp.asarray(m), jnp.asarray(v), 1e-8)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_star_without_blackbox_output_is_its_nominal_term(x64):
    """Zero direction head: STAR == Hyperparam with the same trunk, nominal head, decays."""
    star = ldco.STAR(nominal_step=2e-3)
    hyper = ldco.Hyperparam(nominal_step=2e-3)
    params = _params()
    meta = _perturb(star.init(jax.random.PRNGKey(8), params), 9, 0.05)
    meta["heads"]["direction"] = jax.tree.map(jnp.zeros_like, meta["heads"]["direction"])
    hmeta = {**meta, "heads": {"nominal_magnitude": meta["heads"]["nominal_magnitude"]}}
    s_s, s_h = star.opt_fn(meta).init(params), hyper.opt_fn(hmeta).init(params)
    ref = NumpyReference(hyper, hmeta)
    for k in range(3):
        grads = _grads(params, k)
        u_s, s_s = _update_fn(star)(meta, grads, s_s, params)
        u_h, s_h = _update_fn(hyper)(hmeta, grads, s_h, params)
        expected = ref.update(params, grads)
        for a, b, e in zip(jax.tree.leaves(u_s), jax.tree.leaves(u_h), jax.tree.leaves(expected)):
            # equal up to float64 rounding (the fused path adds a zero blackbox term in its own order)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14, atol=0)
            np.testing.assert_allclose(np.asarray(a), e, rtol=1e-7, atol=1e-12)
        params = optax.apply_updates(params, u_s)
    # the default STAR starts exactly there
    assert not np.any(np.asarray(star.init(jax.random.PRNGKey(0), params)["heads"]["direction"]["w"]))


def test_star_with_zero_nominal_step_is_the_preconditioned_blackbox_term(x64):
    lopt = ldco.STAR(nominal_step=0.0, direction_init="random")
    params = _params()
    meta = _perturb(lopt.init(jax.random.PRNGKey(10), params), 11, 0.05)
    _run(lopt, meta, params, steps=3)  # the reference adds nothing when nominal_step = 0
    # and the nominal head then has no influence at all
    other = {**meta, "heads": {**meta["heads"], "nominal_magnitude": {"w": jnp.ones(4), "b": jnp.asarray(5.0)}}}
    grads, state = _grads(params, 0), lopt.opt_fn(meta).init(params)
    u1, u2 = (_update_fn(lopt)(m, grads, state, params)[0] for m in (meta, other))
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_hyperparam_is_adam_with_step_exp_head(x64):
    """nominal='adam', nominal head w = 0, b = c: exactly optax.adam(lr * exp(1e-3 c))."""
    lr, c = 3e-2, 400.0
    lopt = ldco.Hyperparam(nominal="adam", nominal_step=lr)
    params = _params()
    meta = _perturb(lopt.init(jax.random.PRNGKey(12), params), 13, 0.1)
    meta["heads"]["nominal_magnitude"] = {"w": jnp.zeros(4), "b": jnp.asarray(c)}
    meta["decays"] = jax.tree.map(jnp.zeros_like, meta["decays"])  # the base decays 0.9 / 0.999
    tx, adam = lopt.opt_fn(meta), optax.adam(lr * np.exp(1e-3 * c), b1=0.9, b2=0.999, eps=1e-8)
    s, sa, update = tx.init(params), adam.init(params), _update_fn(lopt)
    p, pa = params, params
    for k in range(5):
        u, s = update(meta, _grads(p, k), s, p)
        ua, sa = adam.update(_grads(pa, k), sa, pa)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ua)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)
        p, pa = optax.apply_updates(p, u), optax.apply_updates(pa, ua)
    # and with the learned head the step is per-parameter nominal_step * exp(1e-3 m_g)
    _run(lopt, _perturb(meta, 15, 0.05), params, steps=2)


def test_learned_decays():
    theta = jnp.asarray([0.0, 0.1, -0.3])
    np.testing.assert_allclose(decay_values((0.9, 0.99, 0.999), jnp.zeros(3)), [0.9, 0.99, 0.999], rtol=1e-6)
    vals = np.asarray(decay_values((0.9, 0.99, 0.999), theta))
    np.testing.assert_allclose(np.log(vals / (1 - vals)), np.log(np.array([9.0, 99.0, 999.0])) + 10 * np.asarray(theta), rtol=1e-4)
    assert np.all((decay_values(0.999, jnp.asarray(1e3)) <= 1) & (decay_values(0.9, jnp.asarray(-1e3)) >= 0))
    lopt = ldco.Blackbox(learn_decays=False)
    assert "decays" not in lopt.init(jax.random.PRNGKey(0), _params())


# --- model-agnostic meta-parameters -------------------------------------------------------


@pytest.mark.parametrize("cls,count", [(ldco.Blackbox, 197), (ldco.Hyperparam, 192), (ldco.STAR, 202)])
def test_meta_parameters_are_independent_of_the_model(cls, count):
    lopt = cls()
    small = {"w": jnp.ones((2, 3))}
    meta = lopt.init(jax.random.PRNGKey(0), small)
    big = lopt.init(jax.random.PRNGKey(0), _params())
    assert jax.tree.structure(meta) == jax.tree.structure(big)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(big)))
    assert count_meta_parameters(meta) == count
    assert count_meta_parameters(cls(learn_decays=False).init(jax.random.PRNGKey(0), small)) == count - 7
    params = _params()
    state, update = lopt.opt_fn(meta).init(params), _update_fn(lopt)
    for k in range(2):
        updates, new_state = update(meta, _grads(params, k), state, params)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state) == jax.tree.map(lambda x: (x.shape, x.dtype), state)
        assert all(u.shape == p.shape and bool(jnp.all(jnp.isfinite(u))) for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)))
        params, state = optax.apply_updates(params, updates), new_state


def test_nonfinite_gradients_are_skipped():
    lopt = ldco.STAR()
    params = _params()
    meta = lopt.init(jax.random.PRNGKey(0), params)
    state = lopt.opt_fn(meta).init(params)
    grads = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), _grads(params, 0))
    updates, new_state = _update_fn(lopt)(meta, grads, state, params)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
    assert int(new_state.notfinite_count) == 1
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_state.inner_state), jax.tree.leaves(state.inner_state)))


# --- the outer optimizer ------------------------------------------------------------------


def test_weight_decay_mask_and_adamw_decay_only_blackbox_weights():
    star = ldco.STAR()
    meta = _perturb(star.init(jax.random.PRNGKey(0), _params()), 1, 0.1)
    mask = ldco.optimizers.blackbox_weight_mask(meta)
    assert all(jax.tree.leaves(mask["trunk"]))
    assert all(jax.tree.leaves(mask["heads"]["direction"])) and all(jax.tree.leaves(mask["heads"]["magnitude"]))
    assert not any(jax.tree.leaves(mask["heads"]["nominal_magnitude"])) and not any(jax.tree.leaves(mask["decays"]))
    hyper_meta = ldco.Hyperparam().init(jax.random.PRNGKey(0), _params())
    assert not any(jax.tree.leaves(ldco.optimizers.blackbox_weight_mask(hyper_meta)))

    lr, factor = 1e-2, 0.3
    opt = ldco.star_meta_optimizer(learning_rate=lr, weight_decay_factor=factor, clip=1.0)
    zero = jax.tree.map(jnp.zeros_like, meta)
    updates, _ = opt.update(zero, opt.init(meta), meta)
    new = optax.apply_updates(meta, updates)
    for m, n, decayed in zip(jax.tree.leaves(meta), jax.tree.leaves(new), jax.tree.leaves(mask)):
        np.testing.assert_allclose(n, m * (1 - lr * factor) if decayed else m, rtol=1e-6)
    # a non-zero gradient: Adam's first step is -lr * sign(g) (clipped first) on top of the decay
    grad = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), meta)
    updates, _ = opt.update(grad, opt.init(meta), meta)
    for u, m, decayed in zip(jax.tree.leaves(updates), jax.tree.leaves(meta), jax.tree.leaves(mask)):
        np.testing.assert_allclose(u, -lr * (1 + (factor * m if decayed else 0)), rtol=1e-4, atol=1e-7)


def test_validation_errors():
    for kwargs in (
        dict(nominal_step=-1e-3),
        dict(nominal_step=float("nan")),
        dict(blackbox_step=0.0),
        dict(nominal="nesterov"),
        dict(direction_init="ones"),
        dict(momentum_decays=(0.9, 1.0, 0.5)),
        dict(momentum_decays=(0.9, 0.99), adafactor_decays=(0.9, 0.99, 0.999)),
        dict(rms_decay=1.0),
        dict(hidden_sizes=()),
        dict(hidden_sizes=(4, 0)),
        dict(feature_eps=0.0),
        dict(magnitude_scale=-1.0),
        dict(precond_eps=0.0),
        dict(max_consecutive_nonfinite=-1),
    ):
        with pytest.raises(ValueError):
            ldco.STAR(**kwargs)
    with pytest.raises(ValueError):
        ldco.Blackbox(direction_init="descent", hidden_sizes=(1, 4)).init(jax.random.PRNGKey(0), _params())
    star_meta = ldco.STAR().init(jax.random.PRNGKey(0), _params())
    with pytest.raises(ValueError, match="heads"):
        ldco.Blackbox().opt_fn(star_meta)
    with pytest.raises(ValueError, match="decays"):
        ldco.STAR(learn_decays=False).opt_fn(star_meta)
    with pytest.raises(ValueError, match="hidden layers"):
        ldco.STAR(hidden_sizes=(4, 4, 4)).opt_fn(star_meta)
    with pytest.raises(ValueError, match="fuse_features"):
        ldco.STAR(fuse_features=1)
    with pytest.raises(ValueError, match="fuse_features"):
        ldco.STAR(fuse_features="yes")
    for kwargs in (dict(learning_rate=0.0), dict(weight_decay_factor=-0.1), dict(clip=0.0)):
        with pytest.raises(ValueError):
            ldco.star_meta_optimizer(**kwargs)
    with pytest.raises(ValueError):
        ldco.optimizers.adafac_mlp(star_meta["trunk"], {"direction": star_meta["heads"]["direction"]})
    assert dataclasses.replace(ldco.STAR(), nominal_step=0.0).nominal_step == 0.0


def test_meta_training_with_pes_and_adamw_on_the_nqm():
    """Integration: MetaTrainer + PES + star_meta_optimizer runs and the masked weights decay."""
    from learned_dco import meta as lmeta
    from learned_dco import tasks

    family = tasks.NoisyQuadratic.star()
    lopt = ldco.STAR(nominal_step=1e-2)
    est = lmeta.PES(horizon=20, truncation=10, num_tasks=2, sigma=0.01, meta_loss="mean_train")
    trainer = lmeta.MetaTrainer(lopt, family, est, ldco.star_meta_optimizer(1e-3, weight_decay_factor=0.5))
    state, metrics = jax.jit(trainer.train, static_argnums=1)(jax.random.PRNGKey(0), 4)
    assert np.all(np.isfinite(np.asarray(metrics.meta_loss)))
    assert int(state.skipped) == 0
    assert not np.array_equal(np.asarray(state.meta["heads"]["direction"]["w"]), np.zeros(4))


# --- the fused update (fuse_features=True) against the materialised one --------------------


@functools.lru_cache(maxsize=None)
def _pair_fns(lopt):
    """Jitted ``(meta, grads, state, params) -> (updates, state)`` of the materialised
    (default) and the fused update of one optimizer config."""
    fused = dataclasses.replace(lopt, fuse_features=True)
    return _update_fn(lopt), _update_fn(fused)


@pytest.mark.parametrize(
    "lopt",
    [
        ldco.Blackbox(direction_init="random"),
        ldco.STAR(nominal_step=3e-3, direction_init="random"),
        ldco.Hyperparam(max_consecutive_nonfinite=None),
        ldco.STAR(direction_init="random", max_consecutive_nonfinite=None, bias_correction=False),
    ],
    ids=["blackbox", "star", "hyperparam-noguard", "star-noguard-nobc"],
)
def test_fused_update_equals_materialised(lopt, x64):
    """Every tensor kind (matrix, vector, scalar, 4-D conv kernel) at steps 1-4: the fused
    first layer (normalisation in the weights, time in the bias) gives the same updates and
    the same state."""
    params = _params()
    meta = _perturb(lopt.init(jax.random.PRNGKey(20), params), 21, 0.05)
    old, new = _pair_fns(lopt)
    state = lopt.opt_fn(meta).init(params)
    for k in range(4):
        grads = _grads(params, k)
        u_old, s_old = old(meta, grads, state, params)
        u_new, s_new = new(meta, grads, state, params)
        for a, b in zip(jax.tree.leaves(u_new), jax.tree.leaves(u_old)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-15)
        for a, b in zip(jax.tree.leaves(s_new), jax.tree.leaves(s_old)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        params, state = optax.apply_updates(params, u_old), s_old


def test_fused_update_float32_within_1e6():
    """In float32 the two paths round differently: equal to 1e-6 of each tensor's largest
    update (the sums are reordered, so single entries near a cancellation can differ more
    in relative terms)."""
    lopt = ldco.STAR(direction_init="random")
    params = _params()
    meta = _perturb(lopt.init(jax.random.PRNGKey(22), params), 23, 0.05)
    old, new = _pair_fns(lopt)
    state = lopt.opt_fn(meta).init(params)
    for k in range(3):
        grads = _grads(params, k)
        u_old, state_next = old(meta, grads, state, params)
        u_new, _ = new(meta, grads, state, params)
        for a, b in zip(jax.tree.leaves(u_new), jax.tree.leaves(u_old)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(b)) * 4, (np.max(np.abs(a - b)), np.max(np.abs(b)))
        params, state = optax.apply_updates(params, u_old), state_next


def test_auto_takes_the_fused_path_on_cpu_and_the_materialised_one_elsewhere(monkeypatch):
    """``fuse_features="auto"`` (the default) is exactly ``True`` on XLA:CPU and exactly
    ``False`` when the default backend is an accelerator."""
    from learned_dco.optimizers import star as star_module

    lopt = ldco.STAR(direction_init="random")
    params = _params()
    meta = lopt.init(jax.random.PRNGKey(3), params)
    state = lopt.opt_fn(meta).init(params)
    grads = _grads(params, 0)

    def update(fuse):
        return dataclasses.replace(lopt, fuse_features=fuse).opt_fn(meta).update(grads, state, params)[0]

    assert lopt.fuse_features == "auto"
    explicit = {}
    for backend, same_as in (("cpu", True), ("gpu", False)):
        monkeypatch.setattr(star_module.jax, "default_backend", lambda b=backend: b)
        got, explicit[same_as] = update("auto"), update(same_as)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(explicit[same_as])):
            np.testing.assert_array_equal(a, b)
    # the two paths round differently, so "equal to the chosen path" tells them apart
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(explicit[True]), jax.tree.leaves(explicit[False])))


def test_fused_meta_gradient_equals_materialised(x64):
    """jax.grad w.r.t. every meta-parameter (MLP, heads, learned decays) of a loss of the
    parameters after 3 inner steps: the same through both paths.

    The 3 steps are a ``lax.scan`` over the stacked per-step gradient noise (the same maths
    as a Python loop, but the update is traced and compiled once per path, not 3 times:
    this test compiled for ~2 minutes of CPU unrolled)."""
    lopt = ldco.STAR(nominal_step=3e-3, direction_init="random", max_consecutive_nonfinite=None)
    params = _params()
    meta = _perturb(lopt.init(jax.random.PRNGKey(24), params), 25, 0.05)
    target = jax.tree.map(lambda p: 0.5 * p + 0.1, params)
    noise = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(params, k) for k in range(3)])

    def loss_after(meta, fused):
        tx = dataclasses.replace(lopt, fuse_features=fused).opt_fn(meta)

        def step(carry, noise_k):
            p, s = carry
            g = jax.tree.map(lambda a, b, c: (a - b) + c, p, target, noise_k)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), noise)
        return sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))

    g_old = jax.jit(jax.grad(lambda m: loss_after(m, False)))(meta)
    g_new = jax.jit(jax.grad(lambda m: loss_after(m, True)))(meta)
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(g_old["decays"]))
    for path, a in jax.tree_util.tree_flatten_with_path(g_new)[0]:
        b = np.asarray(functools.reduce(lambda t, k: t[k.key if hasattr(k, "key") else k.idx], path, g_old))
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-8, atol=1e-14 * np.max(np.abs(b)), err_msg=jax.tree_util.keystr(path))


def test_channels_and_second_moments_match_the_feature_tensor(x64):
    """features.channels broadcast to the tensor and stacked is raw_features; the one-pass
    second moments are the per-channel means of its squares."""
    params = _params()
    dec = jnp.asarray([0.9, 0.99, 0.999])
    state = F.init_state(params, 3, 3)
    for k in range(2):
        state = F.update_state(state, _grads(params, k), dec, jnp.asarray(0.999), dec)
    fields = [jax.tree.leaves(getattr(state, f)) for f in ("momentum", "rms", "fac_row", "fac_col", "fac_full")]
    for i, (p, g) in enumerate(zip(jax.tree.leaves(params), jax.tree.leaves(_grads(params, 1)))):
        args = (p, g, *[f[i] for f in fields])
        raw = np.asarray(F.raw_features(*args))
        chans = F.channels(*args)
        stacked = np.stack([np.broadcast_to(np.asarray(c), p.shape) for c in chans], -1)
        np.testing.assert_array_equal(stacked, raw)
        m2 = np.asarray(F.second_moments(chans, p.shape))
        np.testing.assert_allclose(m2, np.mean(raw.reshape(-1, raw.shape[-1]) ** 2, 0), rtol=1e-12)


def test_fused_path_differentiates_as_the_materialised_path():
    """The fused path only evaluates: ``jax.jvp`` through its update (w.r.t. the
    meta-parameters and the gradients) gives the materialised path's value and tangent,
    bit for bit (both compile to the same program; differentiating the fused loops
    themselves gives the same maths in a different rounding order). Without
    differentiation the fused value is its own (it differs from the materialised one in
    rounding)."""
    lopt = ldco.STAR(nominal_step=3e-3, direction_init="random", max_consecutive_nonfinite=None)
    params = _params()
    meta = _perturb(lopt.init(jax.random.PRNGKey(24), params), 25, 0.05)
    grads = _grads(params, 0)
    state = lopt.opt_fn(meta).init(params)
    d_meta = _perturb(jax.tree.map(jnp.zeros_like, meta), 26, 1.0)
    d_grads = _grads(params, 1)

    def update(fused):
        def f(m, g):
            return dataclasses.replace(lopt, fuse_features=fused).opt_fn(m).update(g, state, params)[0]
        return f

    jvp = lambda fused: jax.jit(lambda m, g, dm, dg: jax.jvp(update(fused), (m, g), (dm, dg)))(meta, grads, d_meta, d_grads)
    (v_fused, t_fused), (v_mat, t_mat) = jvp(True), jvp(False)
    plain_fused = jax.jit(update(True))(meta, grads)
    for a, b in zip(jax.tree.leaves((v_fused, t_fused)), jax.tree.leaves((v_mat, t_mat))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plain_fused), jax.tree.leaves(v_mat)))
    for a, b in zip(jax.tree.leaves(plain_fused), jax.tree.leaves(v_mat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-7 * float(np.max(np.abs(np.asarray(b)))))
