"""learned_dco.pretrained: card + msgpack round trip, options, and refusal of bad input.

No weights ship yet, so every test writes a tiny card into tmp_path with ``save``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_dco as ldco
from learned_dco import pretrained


def _perturbed_star(seed=0):
    lopt = ldco.STAR(nominal_step=1e-3)
    meta = lopt.init(jax.random.PRNGKey(seed), {"w": jnp.zeros(3)})
    leaves, tree = jax.tree.flatten(meta)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    meta = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, jnp.shape(x)) for x, k in zip(leaves, keys)])
    return lopt, meta


@pytest.fixture
def shipped(tmp_path):
    lopt, meta = _perturbed_star()
    pretrained.save("tiny", lopt, meta, root=tmp_path, options={"nominal_step": "nominal_step"},
                    recipe={"seed": 0}, heldout={"iqm_ratio": None})
    return tmp_path, lopt, meta


def test_list_and_round_trip(shipped):
    root, lopt, meta = shipped
    assert pretrained.list(root) == ["tiny"]
    assert pretrained.list() == []  # nothing ships yet
    lopt2, meta2 = pretrained.load_lopt("tiny", root=root)
    assert lopt2 == lopt
    for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(meta2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_matches_opt_fn_and_composes(shipped):
    root, lopt, meta = shipped
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)
    want, _ = lopt.opt_fn(meta).update(grads, lopt.opt_fn(meta).init(params), params)
    tx = optax.chain(optax.clip_by_global_norm(1.0), pretrained.load("tiny", root=root))
    ref = optax.chain(optax.clip_by_global_norm(1.0), lopt.opt_fn(meta))
    got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    exp, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(exp)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    # the option reaches the optimizer: a 10x nominal step changes the update
    tx10 = pretrained.load("tiny", root=root, nominal_step=1e-2)
    u10, _ = tx10.update(grads, tx10.init(params), params)
    assert not np.allclose(jax.tree.leaves(u10)[0], jax.tree.leaves(want)[0])


def test_unknown_name_lists_shipped(shipped):
    root, *_ = shipped
    with pytest.raises(pretrained.PretrainedError, match=r"unknown pretrained optimizer 'nope'.*\['tiny'\]"):
        pretrained.load("nope", root=root)


def test_unknown_option_names_accepted(shipped):
    root, *_ = shipped
    with pytest.raises(pretrained.PretrainedError, match=r"no option\(s\) \['horizon'\].*\['nominal_step'\]"):
        pretrained.load("tiny", root=root, horizon=100)


def test_architecture_change_is_refused(shipped):
    root, *_ = shipped
    path = root / "tiny.json"
    data = json.loads(path.read_text())
    data["architecture"]["fields"]["hidden_sizes"] = [8, 8]  # a wider network than the weights
    path.write_text(json.dumps(data))
    with pytest.raises(pretrained.PretrainedError, match="different version"):
        pretrained.load_lopt("tiny", root=root)


def test_weights_of_another_architecture_are_refused(shipped, tmp_path_factory):
    root, *_ = shipped
    other = tmp_path_factory.mktemp("other")
    lopt = ldco.STAR(nominal_step=1e-3, hidden_sizes=(8,))
    pretrained.save("tiny", lopt, lopt.init(jax.random.PRNGKey(0), {"w": jnp.zeros(2)}), root=other)
    (root / "tiny.msgpack").write_bytes((other / "tiny.msgpack").read_bytes())  # card says (4, 4)
    with pytest.raises(pretrained.PretrainedError, match="weights"):
        pretrained.load_lopt("tiny", root=root)


def test_card_format_is_checked(shipped):
    root, *_ = shipped
    path = root / "tiny.json"
    data = json.loads(path.read_text())
    data["format"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(pretrained.PretrainedError, match="card format 999"):
        pretrained.card("tiny", root=root)


def test_save_refuses_mismatched_meta(tmp_path):
    lopt = ldco.STAR(nominal_step=1e-3)
    wrong = ldco.STAR(nominal_step=1e-3, hidden_sizes=(8,)).init(jax.random.PRNGKey(0), {"w": jnp.zeros(2)})
    with pytest.raises(pretrained.PretrainedError, match="do not match"):
        pretrained.save("bad", lopt, wrong, root=tmp_path)
