"""learned_dco.pretrained: card + msgpack round trip, options, and refusal of bad input.

Every test writes a tiny card into tmp_path with ``save`` (the shipped optimizers are
tested in tests/test_pretrained_shipped.py).
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
    assert "tiny" not in pretrained.list()  # the shipped ones live elsewhere
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


MIXTURE_RUN = {
    "seed": 3,
    "optimizer": {"name": "scheduled_adam", "num_steps": 10, "knots": 3, "learning_rate": 0.01},
    "task": {"name": "mixture", "horizons": [3, 5], "members": [{"name": "quadratic", "dim": 3}, {"name": "quadratic", "dim": 4}]},
    "estimator": {"name": "es", "horizon": 5, "truncation": 5, "num_tasks": 2, "sigma": 0.1, "meta_loss": "mean_log_train"},
    "meta_optimizer": {"name": "adam", "learning_rate": 0.05},
    "train": {"num_steps": 4, "num_train_tasks": None, "checkpoint_every": 2},
    "eval": {"num_tasks": 2, "num_steps": 5},
}


@pytest.mark.integration
def test_a_mixture_run_ships_reproducibly(tmp_path):
    """A `learned-dco train` run on a task mixture -> ship_run -> load: the same config and
    seed give the same weight bytes (the recipe's promise), the card records the recipe,
    non-finite held-out numbers become strings, and the num_steps option reaches the
    optimizer."""
    from learned_dco.app import config as C
    from learned_dco.app import cards, runs

    cfg = C.from_dict(MIXTURE_RUN)
    for d in ("a", "b"):
        runs.train(cfg, tmp_path / d, progress=False)
    assert (tmp_path / "a" / "meta.msgpack").read_bytes() == (tmp_path / "b" / "meta.msgpack").read_bytes()
    trained = runs.load_trained(tmp_path / "a")
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    trainer = runs.make_trainer(runs.build(cfg))
    state = trainer.init(C.stream_key(cfg.seed, "trainer"))
    assert [(r["member"], r["horizon"]) for r in records] == [
        trainer.draw(state._replace(step=jnp.asarray(k, jnp.int32))) for k in range(4)]
    assert not np.allclose(trained.meta["log_lr"], np.log(0.01))  # meta-training moved it

    path = cards.ship_run(tmp_path / "a", "mix", root=tmp_path / "w", config="configs/x.yaml",
                             heldout={"ratio": float("inf"), "rows": [{"final": np.float32(0.5)}]})
    data = pretrained.card("mix", root=tmp_path / "w")
    assert path.name == "mix.json" and data["options"] == {"num_steps": "num_steps"}
    recipe = data["recipe"]
    assert recipe["meta_steps"] == 4 and recipe["metrics_lines"] == 4 and recipe["seed"] == 3
    assert recipe["task"]["name"] == "mixture" and len(recipe["task"]["members"]) == 2
    assert recipe["task"]["members"][1]["dim"] == 4 and recipe["wall_seconds"] > 0
    assert data["heldout"] == {"ratio": "inf", "rows": [{"final": 0.5}]}
    lopt, meta = pretrained.load_lopt("mix", root=tmp_path / "w")
    for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(trained.meta)):
        np.testing.assert_array_equal(a, b)
    import dataclasses

    def fourth_update(tx):
        params, state = {"w": jnp.ones(3)}, None
        state = tx.init(params)
        for _ in range(4):
            u, state = tx.update({"w": jnp.array([1.0, -2.0, 0.5])}, state, params)
        return u["w"]

    got = fourth_update(pretrained.load("mix", root=tmp_path / "w", num_steps=7))
    np.testing.assert_allclose(got, fourth_update(dataclasses.replace(trained.lopt, num_steps=7).opt_fn(meta)), rtol=1e-6)
    assert not np.allclose(got, fourth_update(dataclasses.replace(trained.lopt, num_steps=1000).opt_fn(meta)), rtol=1e-3)


def test_loaded_weights_follow_a_rewrite_and_edits_stay_local(shipped):
    """``load_lopt`` caches per file version: weights saved again under the same name are
    what the next load returns, editing a returned meta does not reach the next load, and a
    load inside ``jit`` leaves no traced values behind for the next one."""
    root, lopt, meta = shipped
    jax.jit(lambda: jax.tree.leaves(pretrained.load_lopt("tiny", root=root)[1]))()  # a first load inside a trace
    _, first = pretrained.load_lopt("tiny", root=root)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(first))  # concrete, not that trace's values
    first["heads"] = None  # a caller's edit
    _, again = pretrained.load_lopt("tiny", root=root)
    for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, other = _perturbed_star(seed=5)
    pretrained.save("tiny", lopt, other, root=root, options={"nominal_step": "nominal_step"})
    _, reloaded = pretrained.load_lopt("tiny", root=root)
    for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(reloaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_without_the_budget_warns_once_per_name(tmp_path, monkeypatch):
    """A schedule-aware card (it takes ``num_steps``) loaded without ``num_steps`` warns once,
    naming the default it falls back to; told the budget, or a second time, it is silent."""
    import warnings

    monkeypatch.setattr(pretrained, "_WARNED_BUDGET", set())
    lopt = ldco.optimizers.ProdigyController(num_steps=777, hidden=4)
    meta = lopt.init(jax.random.PRNGKey(0), {"w": jnp.zeros(3)})
    pretrained.save("sched", lopt, meta, root=tmp_path, options={"num_steps": "num_steps"})
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        pretrained.load("sched", root=tmp_path, num_steps=100)
    assert not [w for w in told if issubclass(w.category, pretrained.BudgetWarning)]
    with pytest.warns(pretrained.BudgetWarning, match="num_steps=777"):
        pretrained.load("sched", root=tmp_path)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        pretrained.load("sched", root=tmp_path)
    assert not [w for w in again if issubclass(w.category, pretrained.BudgetWarning)]
