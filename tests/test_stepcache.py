"""The stored meta-step (learned_dco.app.stepcache): same results as the jitted step, loaded
without tracing on a second run, keyed so that nothing stale is ever used."""

import jax
import numpy as np
import pytest

import learned_dco as ldco
from learned_dco import meta, tasks
from learned_dco.app import runs, stepcache

FAMILY = tasks.Quadratic(dim=4)
EST = meta.TruncatedBPTT(horizon=4, truncation=2, num_tasks=2)  # persistent state, per-step keys


def _trainer(estimator=EST, family=FAMILY):
    return meta.MetaTrainer(ldco.LearnedStepSize(learning_rate=0.01), family, estimator)


def _run(tmp_path, name, cache, fingerprint="cfg-a", steps=3, estimator=EST, family=FAMILY):
    trainer = _trainer(estimator, family)
    return runs.run(trainer, trainer.init(jax.random.PRNGKey(0)), steps, run_dir=tmp_path / name, progress=False,
                    fingerprint=fingerprint, step_cache=cache)


def _entries(cache):
    return sorted((cache / stepcache.SUBDIR).glob("*.jaxexport")) if (cache / stepcache.SUBDIR).exists() else []


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_stored_step_gives_the_jitted_steps_results_and_is_reused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    plain = _run(tmp_path, "plain", None)
    first = _run(tmp_path, "first", cache)
    assert len(_entries(cache)) == 1
    assert _same(first, plain)
    # a second run must load the stored program, not trace the meta-step again
    def no_tracing(*a, **k):
        raise AssertionError("the meta-step was traced although a stored one matches")

    monkeypatch.setattr(jax.export, "export", no_tracing)
    monkeypatch.setattr(meta.MetaTrainer, "_meta_step", no_tracing)
    second = _run(tmp_path, "second", cache)
    assert _same(second, plain)
    metrics = [(tmp_path / n / "metrics.jsonl").read_text().splitlines() for n in ("plain", "second")]
    strip = lambda lines: [ln.split('"seconds"')[0] for ln in lines]  # noqa: E731 -- times differ
    assert strip(metrics[0]) == strip(metrics[1])


def test_another_config_or_shape_gets_its_own_entry(tmp_path):
    cache = tmp_path / "cache"
    _run(tmp_path, "a", cache, fingerprint="cfg-a")
    _run(tmp_path, "b", cache, fingerprint="cfg-b")
    assert len(_entries(cache)) == 2
    _run(tmp_path, "c", cache, fingerprint="cfg-a", estimator=meta.TruncatedBPTT(horizon=4, truncation=2, num_tasks=4))
    assert len(_entries(cache)) == 3


def test_the_key_covers_the_library_source(monkeypatch):
    state = _trainer().init(jax.random.PRNGKey(0))
    leaves, treedef = jax.tree.flatten(state)
    before = stepcache.entry_key("cfg", leaves, treedef)
    monkeypatch.setattr(stepcache, "source_digest", lambda: "edited")
    assert stepcache.entry_key("cfg", leaves, treedef) != before


def test_a_damaged_entry_is_replaced(tmp_path):
    cache = tmp_path / "cache"
    plain = _run(tmp_path, "plain", None)
    _run(tmp_path, "first", cache)
    (entry,) = _entries(cache)
    entry.write_bytes(entry.read_bytes()[: len(entry.read_bytes()) // 2])
    again = _run(tmp_path, "again", cache)
    assert _same(again, plain)
    assert entry.stat().st_size > 0 and len(_entries(cache)) == 1


def test_a_mixture_keeps_the_plain_step(tmp_path):
    mix = tasks.Mixture((FAMILY, tasks.Quadratic(dim=3)))
    cache = tmp_path / "cache"
    trainer = meta.MetaTrainer(ldco.LearnedStepSize(), mix, meta.ES(horizon=4, truncation=2, num_tasks=2))
    assert not stepcache.usable(trainer)
    assert stepcache.cached_step(trainer, "cfg", cache) == trainer.step
    assert not _entries(cache)


@pytest.mark.parametrize("resume_at", [2])
def test_resumed_run_uses_the_same_entry(tmp_path, resume_at):
    cache = tmp_path / "cache"
    full = _run(tmp_path, "full", cache, steps=4)
    trainer = _trainer()
    runs.run(trainer, trainer.init(jax.random.PRNGKey(0)), resume_at, run_dir=tmp_path / "cut", progress=False,
             checkpoint_every=resume_at, fingerprint="cfg-a", step_cache=cache)
    second = _trainer()
    restored = runs.restore(second, tmp_path / "cut", jax.random.PRNGKey(0))
    resumed = runs.run(second, restored, 4, run_dir=tmp_path / "cut", progress=False, fingerprint="cfg-a", step_cache=cache)
    assert _same(resumed, full)
    assert len(_entries(cache)) == 1
