r"""Runs on disk: meta-train from a :class:`~learned_dco.config.RunConfig`, resume, reload.

A *run directory* holds everything needed to continue or reuse a run:

==========================  ==============================================================
``config.yaml``             the validated configuration (``learned_dco.config``)
``metrics.jsonl``           one JSON object per meta-step (meta-loss, grad norm, seconds...)
``checkpoint.msgpack``      the whole training state (atomic; written every
                            ``train.checkpoint_every`` steps and at the end)
``meta.msgpack``            the final meta-parameters (flax msgpack)
``meta.json``               what ``meta.msgpack`` holds and how to load it
==========================  ==============================================================

Key derivation (:func:`learned_dco.config.stream_key`): the task pool comes from the
``"pool"`` stream of ``seed`` and the trainer state from the ``"trainer"`` stream, so a
resumed run rebuilds the identical pool and continues the identical key sequence.

Use trained meta-parameters in another program::

    from learned_dco import experiment
    trained = experiment.load_trained("runs/my-run")
    tx = trained.lopt.opt_fn(trained.meta)        # an optax.GradientTransformation
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax

from learned_dco import config as C
from learned_dco.meta import checkpoint
from learned_dco.meta.trainer import MetaTrainer, TrainState
from learned_dco.meta.unroll import sample_task
from learned_dco.tasks import sample_tasks

CONFIG_FILE = "config.yaml"

# Keys that may change when a run is resumed: they do not alter the training trajectory.
RESUMABLE_CHANGES = ("train.num_steps", "train.checkpoint_every")


@dataclasses.dataclass(frozen=True)
class Built:
    """The objects a config describes."""

    config: C.RunConfig
    lopt: Any
    family: Any
    estimator: Any
    meta_optimizer: Any
    pool: Any  # fixed training tasks (leading axis), or None


def training_pool(cfg: C.RunConfig, family):
    """The fixed pool of ``train.num_train_tasks`` tasks (``None`` if tasks are fresh)."""
    n = cfg.train.num_train_tasks
    return None if n is None else sample_tasks(family, C.stream_key(cfg.seed, "pool"), n)


def build(cfg: C.RunConfig) -> Built:
    family = C.build_family(cfg)
    return Built(
        config=cfg,
        lopt=C.build_optimizer(cfg),
        family=family,
        estimator=C.build_estimator(cfg),
        meta_optimizer=C.build_meta_optimizer(cfg),
        pool=training_pool(cfg, family),
    )


def make_trainer(built: Built, devices: list | None = None) -> MetaTrainer:
    return MetaTrainer(built.lopt, built.family, built.estimator, built.meta_optimizer, pool=built.pool, devices=devices)


def has_run(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / checkpoint.CHECKPOINT).exists() or (run_dir / CONFIG_FILE).exists()


def saved_config(run_dir: str | Path, overrides=()) -> C.RunConfig:
    """The config saved in ``run_dir`` (with optional ``--set`` overrides)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise C.ConfigError(f"{path}: no saved config; is {run_dir} a run directory made by `learned-dco train`?")
    return C.load_config(path, overrides)


def check_resumable(saved: C.RunConfig, new: C.RunConfig) -> None:
    """Raise ConfigError if ``new`` changes anything that shapes the training trajectory."""
    changed = [k for k in C.diff(saved, new) if k not in RESUMABLE_CHANGES and not k.startswith("eval")]
    if changed:
        raise C.ConfigError(
            f"{changed[0]}: differs from the saved config of the run being resumed "
            f"(changed: {', '.join(changed)}; only {', '.join(RESUMABLE_CHANGES)} and eval.* may change)"
        )


def train(
    cfg: C.RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    devices: list | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> TrainState:
    """Meta-train ``cfg`` in ``run_dir`` until ``train.num_steps``.

    With ``resume`` the state is restored from ``run_dir/checkpoint.msgpack`` and training
    continues; the result equals that of an uninterrupted run (same pool, same keys).
    """
    run_dir = Path(run_dir)
    built = build(cfg)
    try:
        trainer = make_trainer(built, devices)
    except ValueError as e:  # e.g. num_tasks not a multiple of the number of devices
        raise C.ConfigError(f"estimator.num_tasks: {e}") from None
    key = C.stream_key(cfg.seed, "trainer")
    if resume:
        if not (run_dir / checkpoint.CHECKPOINT).exists():
            raise C.ConfigError(f"{run_dir}: no {checkpoint.CHECKPOINT} to resume from")
        state = trainer.restore(run_dir, key)
        if int(state.step) > cfg.train.num_steps:
            raise C.ConfigError(
                f"train.num_steps: the checkpoint is already at step {int(state.step)} > {cfg.train.num_steps}"
            )
    else:
        state = trainer.init(key)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / CONFIG_FILE)
    state = trainer.run(
        state,
        cfg.train.num_steps,
        run_dir=run_dir,
        checkpoint_every=cfg.train.checkpoint_every,
        progress=progress,
        on_step=on_step,
    )
    info = {
        "optimizer": cfg.optimizer.to_dict(),
        "task": cfg.task.to_dict(),
        "meta_step": int(state.step),
        "skipped_updates": int(state.skipped),
        "load": "learned_dco.experiment.load_trained(run_dir) -> .lopt.opt_fn(.meta)",
    }
    checkpoint.save_meta(run_dir / checkpoint.META, state.meta, info)
    return state


def example_params(family, key):
    """Parameters of one task of ``family`` (shapes the meta-parameters)."""
    k_task, k_init = jax.random.split(key)
    return family.init_params(k_init, family.sample(k_task))


def initial_meta(built: Built):
    """The untrained meta-parameters: those :meth:`MetaTrainer.init` starts from."""
    k_params, k_meta, _, _ = jax.random.split(C.stream_key(built.config.seed, "trainer"), 4)
    k_task, k_init = jax.random.split(k_params)
    params = built.family.init_params(k_init, sample_task(built.family, built.pool, k_task))
    return built.lopt.init(k_meta, params)


class Trained(NamedTuple):
    """A trained learned optimizer loaded from a run directory."""

    config: C.RunConfig
    lopt: Any  # the learned optimizer (``lopt.opt_fn(meta)`` -> optax transformation)
    family: Any  # the task family it was trained on
    meta: Any  # the trained meta-parameters
    meta_step: int | None  # meta-steps they were trained for (from meta.json), if recorded


def load_trained(run_dir: str | Path) -> Trained:
    """Load ``config.yaml`` and ``meta.msgpack`` from a run directory."""
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir)
    path = run_dir / checkpoint.META
    if not path.exists():
        raise C.ConfigError(f"{path}: missing; has `learned-dco train` finished in {run_dir}?")
    lopt, family = C.build_optimizer(cfg), C.build_family(cfg)
    template = lopt.init(jax.random.PRNGKey(0), example_params(family, jax.random.PRNGKey(0)))
    meta = checkpoint.load_meta(path, template=template)
    info_path = path.with_suffix(".json")
    meta_step = json.loads(info_path.read_text()).get("meta_step") if info_path.exists() else None
    return Trained(cfg, lopt, family, meta, meta_step)
