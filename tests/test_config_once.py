"""A run config is parsed once into its values: one ``learned-dco train`` constructs each
component (learned optimizer, task family or mixture with its members, estimator) exactly
once, and everything downstream reads those values; a mixture's stages add one estimator
and one horizon-aware optimizer per drawn horizon (``with_horizon``) and nothing else."""

import collections
import warnings

import jax
import pytest

from learned_dco import meta, tasks
from learned_dco.app import config as C
from learned_dco.app import report, runs
from learned_dco.app.components import spelling
from learned_dco.optimizers import LEARNED_OPTIMIZERS, LearnedStepSize, ScheduledAdam

SINGLE = {
    "seed": 0,
    "optimizer": {"name": "dcogd", "learning_rate": 0.01},
    "task": {"name": "shifted_least_squares", "num_samples": 8, "dim": 4},
    "estimator": {"name": "full", "horizon": 1, "num_tasks": 4, "meta_loss": "final_val"},
    "meta_optimizer": {"name": "adam", "learning_rate": 0.003},
    "train": {"num_steps": 2, "num_train_tasks": 4, "checkpoint_every": 1},
}

MIXTURE = {
    "seed": 3,
    "optimizer": {"name": "scheduled_adam"},
    "task": {"name": "mixture", "horizons": [2, 3], "members": [{"name": "quadratic", "dim": 3}, {"name": "rosenbrock"}]},
    "estimator": {"name": "full", "num_tasks": 2, "meta_loss": "mean_train"},
    "train": {"num_steps": 3, "num_train_tasks": None},
}


@pytest.fixture
def constructions(monkeypatch):
    """Counts ``__init__`` calls of every registered class (and ``tasks.Mixture``),
    ``dataclasses.replace`` included, by config name."""
    counts = collections.Counter()
    classes = {**{f"estimator:{n}": c for n, c in meta.ESTIMATORS.items()},
               **{f"task:{n}": c for n, c in tasks.FAMILIES.items()},
               **{f"optimizer:{n}": c for n, c in LEARNED_OPTIMIZERS.items()},
               "task:mixture": tasks.Mixture}
    for label, cls in classes.items():
        original = cls.__init__

        def init(self, *args, __original=original, __cls=cls, __label=label, **kwargs):
            if type(self) is __cls:
                counts[__label] += 1
            __original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)
    return counts


def test_train_builds_each_component_once(constructions, tmp_path):
    cfg = C.from_dict(SINGLE)
    assert dict(constructions) == {"optimizer:dcogd": 1, "task:shifted_least_squares": 1, "estimator:full": 1}
    runs.train(cfg, tmp_path / "run", progress=False)
    # what train reads (memory estimate, builders, fingerprint, resolved config, run info,
    # meta.json) rebuilt nothing
    assert dict(constructions) == {"optimizer:dcogd": 1, "task:shifted_least_squares": 1, "estimator:full": 1}
    trained = runs.load_trained(tmp_path / "run")  # a second parse of the saved config: once more each
    assert dict(constructions) == {"optimizer:dcogd": 2, "task:shifted_least_squares": 2, "estimator:full": 2}
    assert trained.lopt is trained.config.optimizer.value and trained.family is trained.config.task.value


def test_a_mixture_builds_members_once_and_one_stage_per_horizon(constructions, tmp_path):
    cfg = C.from_dict(MIXTURE)
    parsed = dict(constructions)
    assert parsed == {"optimizer:scheduled_adam": 1, "task:quadratic": 1, "task:rosenbrock": 1, "task:mixture": 1,
                      "estimator:full": 1}
    runs.train(cfg, tmp_path / "run", progress=False)
    trainer = runs.make_trainer(runs.build(cfg))
    state = trainer.init(C.stream_key(cfg.seed, "trainer"))
    horizons = {trainer.draw(state._replace(step=k))[1] for k in range(cfg.train.num_steps)}
    counts = dict(constructions)
    for key in ("task:quadratic", "task:rosenbrock", "task:mixture"):
        assert counts[key] == 1, key
    # each stage: the estimator and the horizon-aware optimizer at the drawn horizon
    assert 1 < counts["estimator:full"] <= 1 + 2 * len(horizons)
    assert counts["estimator:full"] == counts["optimizer:scheduled_adam"]


def test_the_schedule_yields_each_member_at_its_horizon():
    """A stage is the drawn member's family, the estimator at that horizon and the
    optimizer at that horizon (against dataclasses built by hand); one family has one
    stage whose state persists."""
    members = (tasks.Quadratic(dim=3), tasks.Rosenbrock())
    mix = tasks.Mixture(members, horizons=(4, 9))
    est = meta.ES(horizon=10, truncation=5, num_tasks=2)
    schedule = meta.Schedule(ScheduledAdam(), mix, est)
    stage = schedule.stage(1, 9)
    assert stage.family is members[1] and stage.fresh and stage.labels == {"member": 1, "horizon": 9}
    assert stage.estimator == meta.ES(horizon=9, truncation=9, num_tasks=2, stagger=False)
    assert stage.lopt == ScheduledAdam(num_steps=9)
    assert schedule.stage(1, 9) is stage  # built once per pair
    single = meta.Schedule(LearnedStepSize(), members[0], est)
    assert single.stage(*single.draw(jax.random.PRNGKey(0), 5)) is single.initial
    assert not single.initial.fresh and single.initial.estimator is est and single.initial.labels == {}
    with pytest.raises(ValueError, match="horizon 5 is not one of"):
        schedule.stage(0, 5)


def test_with_horizon_and_whole_episodes():
    assert meta.FullUnroll(horizon=3, num_tasks=2).with_horizon(7) == meta.FullUnroll(horizon=7, num_tasks=2)
    es = meta.ES(horizon=10, truncation=2, sigma=0.1)
    assert es.with_horizon(6) == meta.ES(horizon=6, truncation=6, sigma=0.1, stagger=False)
    for est in (meta.PES(), meta.TruncatedBPTT()):
        assert not est.whole_episodes
        with pytest.raises(ValueError, match="carries inner states across meta-steps"):
            est.with_horizon(5)
    assert meta.FullUnroll.whole_episodes and meta.ES.whole_episodes
    assert C.MIXTURE_ESTIMATORS == ("full", "es")


def test_es_and_pes_differ_by_a_field_not_a_class_test():
    """PES is ES with a fresh perturbation every truncation: an ES whose ``per_truncation``
    is set behaves as PES (same first state and estimate), so the shared code reads the
    field."""
    import dataclasses

    import jax.numpy as jnp

    from learned_dco.optimizers import DCOM

    lopt, family = DCOM(learning_rate=0.01), tasks.Quadratic(dim=3)
    pes = meta.PES(horizon=4, truncation=2, num_tasks=2, sigma=0.1)
    as_es = meta.ES(horizon=4, truncation=2, num_tasks=2, sigma=0.1)
    object.__setattr__(as_es, "per_truncation", True)
    m = lopt.init(jax.random.PRNGKey(0), family.init_params(jax.random.PRNGKey(1), family.sample(jax.random.PRNGKey(2))))
    key = jax.random.PRNGKey(3)
    a = pes.bind(lopt, family)(m, pes.bind(lopt, family).init(m, key), key)
    b = as_es.bind(lopt, family)(m, as_es.bind(lopt, family).init(m, key), key)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert jnp.array_equal(x, y)
    assert pes.per_truncation and not meta.ES().per_truncation
    assert "per_truncation" not in {f.name for f in dataclasses.fields(pes) if f.init}  # not a config key


def test_bound_is_a_deprecated_alias_of_bound_estimator():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert meta.Bound is meta.BoundEstimator
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert meta.RegretBound is not meta.BoundEstimator


def test_yaml_spelling_reads_the_value():
    """A named choice at its defaults is written as its name; with another field it cannot
    be spelled by name (``None``); plain values are themselves."""
    assert spelling(meta.FinalVal()) == "final_val"
    assert spelling(meta.MeanLogTrain()) == "mean_log_train"
    assert spelling(meta.MeanLogTrain(floor=1e-6)) is None
    assert spelling((1, 2.0)) == (1, 2.0)
    cfg = C.from_dict({**MIXTURE, "estimator": {"name": "full", "num_tasks": 2, "meta_loss": "mean_log_train"}})
    assert cfg.resolved().estimator.kwargs["meta_loss"] == "mean_log_train"
    resolved_member = cfg.resolved().task.members[0].kwargs
    assert resolved_member["dim"] == 3 and set(resolved_member) >= {"dim"}
    assert report.member_config(cfg, 1).name == "rosenbrock"


def test_field_errors_come_from_the_value_not_the_message():
    """The dotted key of a failing class check is the error's ``field``, whatever the
    message says."""
    from learned_dco.app.components import parse_component
    from learned_dco.validation import ValidationError

    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Odd:
        width: int = 1

        def __post_init__(self):
            raise ValidationError("no field named in this text", field="width")

    C.REGISTRIES["optimizer"][1]["_odd"] = Odd
    try:
        with pytest.raises(C.ConfigError, match=r"^optimizer\.width: no field named"):
            parse_component("optimizer", {"name": "_odd", "width": 2})
    finally:
        del C.REGISTRIES["optimizer"][1]["_odd"]
