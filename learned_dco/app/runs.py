r"""Run directories and the I/O loop around the pure :class:`~learned_dco.meta.MetaTrainer`.

A *run directory* holds everything needed to continue or reuse a run:

===========================  ==============================================================
``config.yaml``              the *resolved* configuration (every default written out)
``run.json``                 fingerprint of the config, the defaults in force when the run
                             was created, versions and device (:func:`learned_dco.io.environment`)
``metrics.jsonl``            one JSON object per meta-step, appended and flushed line by line
``checkpoint.msgpack``       the whole training state with the config's fingerprint and every
                             array's shape/dtype (every ``train.checkpoint_every`` steps and at
                             the end); ``checkpoint.prev.msgpack`` the generation before it
``meta.msgpack``             the final meta-parameters (flax msgpack)
``meta.json``                what ``meta.msgpack`` holds and how to load it
===========================  ==============================================================

Crash safety: every file but ``metrics.jsonl`` is replaced atomically; ``metrics.jsonl``
is only ever appended to, so a crash can at worst leave a torn last line, which a resume
drops with a warning (together with every line at or after the checkpoint's step). A
resume falls back to the previous checkpoint if the newest is unreadable, and refuses a
checkpoint whose fingerprint, structure, shapes or dtypes do not match the config.

Key derivation (:func:`learned_dco.app.config.stream_key`): the task pool comes from the
``"pool"`` stream of ``seed`` and the trainer state from the ``"trainer"`` stream, so a
resumed run rebuilds the identical pool and continues the identical key sequence; the
result equals an uninterrupted run's byte for byte.

Use trained meta-parameters in another program::

    from learned_dco.app import runs
    trained = runs.load_trained("runs/my-run")
    tx = trained.lopt.opt_fn(trained.meta)        # an optax.GradientTransformation
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from flax import serialization

from learned_dco import meta, tasks
from learned_dco.app import config as C
from learned_dco.app import stepcache
from learned_dco.app.rundir import CONFIG_FILE, METRICS, RUN_INFO, RunError
from learned_dco.io import atomic_write_json, atomic_write_text, dumps, environment, remove_temporaries
from learned_dco.meta import checkpoint, distributed

CHECKPOINT = checkpoint.CHECKPOINT
META = checkpoint.META
RESUMABLE_CHANGES = C.RESUMABLE_CHANGES

Warn = Callable[[str], None]


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=2)


# --------------------------------------------------------------------------------------
# building what a config describes
# --------------------------------------------------------------------------------------


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
    return None if n is None else tasks.sample_tasks(family, C.stream_key(cfg.seed, "pool"), n)


def build(cfg: C.RunConfig, *, check_memory: bool = True) -> Built:
    """The objects of ``cfg``: its parsed values, the meta-optimizer and the task pool
    (sizes checked against memory first)."""
    if check_memory:
        C.check_memory(cfg)
    family = C.build_family(cfg)
    return Built(
        config=cfg,
        lopt=C.build_optimizer(cfg),
        family=family,
        estimator=C.build_estimator(cfg),
        meta_optimizer=C.build_meta_optimizer(cfg),
        pool=training_pool(cfg, family),
    )


def make_trainer(built: Built, devices: list | None = None) -> meta.MetaTrainer:
    try:
        return meta.MetaTrainer(
            built.lopt, built.family, built.estimator, built.meta_optimizer, pool=built.pool, devices=devices
        )
    except ValueError as e:  # e.g. num_tasks not a multiple of the number of devices
        raise C.ConfigError(f"estimator.num_tasks: {e}") from None


# --------------------------------------------------------------------------------------
# the run directory
# --------------------------------------------------------------------------------------


def has_run(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in (CHECKPOINT, CONFIG_FILE, checkpoint.previous(CHECKPOINT).name))


def saved_config(run_dir: str | Path, overrides=()) -> C.RunConfig:
    """The config saved in ``run_dir`` (with optional ``--set`` overrides)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise RunError(f"{path}: no saved config; is {run_dir} a run directory made by `learned-dco train`?")
    return C.load_config(path, overrides)


def check_resumable(saved: C.RunConfig, new: C.RunConfig) -> None:
    """Raise ConfigError if ``new`` changes anything that shapes the training trajectory."""
    changed = [k for k in C.diff(saved, new) if k not in RESUMABLE_CHANGES and not k.startswith("eval")]
    if changed:
        raise C.ConfigError(
            f"{changed[0]}: differs from the saved config of the run being resumed "
            f"(changed: {', '.join(changed)}; only {', '.join(RESUMABLE_CHANGES)} and eval.* may change)"
        )


def write_run_info(run_dir: Path, cfg: C.RunConfig) -> Path:
    """``run.json``: the config's fingerprint, today's defaults, versions and device."""
    info = {"fingerprint": cfg.fingerprint(), "defaults": C.defaults(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **environment()}
    return atomic_write_json(run_dir / RUN_INFO, info)


def changed_defaults(run_dir: Path, cfg: C.RunConfig) -> list[str]:
    """Messages for every default that differs between the run's creation and now."""
    path = run_dir / RUN_INFO
    try:
        then = json.loads(path.read_text()).get("defaults", {})
    except (OSError, ValueError):
        return []
    now = C.defaults(cfg)
    return [
        f"{k}: default changed from {then[k]!r} (when this run was created) to {now[k]!r}; "
        f"the run keeps {then[k]!r} as written in {CONFIG_FILE}"
        for k in sorted(then.keys() & now.keys())
        if then[k] != now[k]
    ]


# --------------------------------------------------------------------------------------
# metrics: append-only JSON lines
# --------------------------------------------------------------------------------------


def recover_metrics(path: Path, start: int, warn: Warn = _warn) -> int:
    """Keep the lines of ``path`` for steps before ``start`` (rewritten atomically); a torn
    last line is dropped with a warning. Returns the number of lines kept."""
    if not path.exists():
        return 0
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    kept = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            if i == len(lines) - 1:
                warn(f"{path}: ignoring a torn last line (line {i + 1}, {len(line)} bytes; a crash mid-append)")
                continue
            raise RunError(f"{path}: line {i + 1} is not a metrics record; the file is corrupt") from None
        if step < start:
            kept.append(line.decode() + "\n")
    atomic_write_text(path, "".join(kept))
    return len(kept)


def _to_python(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x.tolist()


# --------------------------------------------------------------------------------------
# checkpoints and the loop around MetaTrainer.step
# --------------------------------------------------------------------------------------


def restore(trainer: meta.MetaTrainer, run_dir: str | Path, key, fingerprint: str | None = None, warn: Warn = _warn):
    """The state saved in ``run_dir`` (newest readable generation; the template comes from
    ``trainer.init(key)``), placed on the trainer's devices."""
    template = trainer.init(key)
    # read by process 0 and broadcast when there are several processes (meta/distributed.py)
    return distributed.restore_checkpoint(Path(run_dir) / CHECKPOINT, template, fingerprint, warn=warn)


def run(
    trainer: meta.MetaTrainer,
    state,
    num_steps: int,
    *,
    run_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
    fingerprint: str | None = None,
    warn: Warn = _warn,
    step_cache: str | Path | None = None,
    tensorboard: bool = False,
):
    """Meta-train with ``trainer.step`` until ``state.step == num_steps``.

    With ``step_cache`` (a directory) and ``fingerprint``, the meta-step is loaded from or
    stored to that directory by :func:`learned_dco.app.stepcache.cached_step` (same
    results, no re-tracing on a second run of the same config).

    With ``run_dir``: metrics are appended to ``metrics.jsonl`` (one JSON object per
    meta-step, flushed), a checkpoint generation is written every ``checkpoint_every``
    steps and at the end, and the final meta-parameters go to ``meta.msgpack``. Starting
    from a restored state drops the metrics lines at or after its step, then appends.
    With ``tensorboard`` each record also goes to TensorBoard event files in
    ``run_dir/tensorboard`` (:mod:`learned_dco.app.observe`; needs tensorboardX).
    """
    start = int(state.step)
    primary = distributed.is_primary()  # several processes: only process 0 writes and prints
    metrics_file = None
    if run_dir is not None:
        run_dir = Path(run_dir)
    if run_dir is not None and primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        recover_metrics(run_dir / METRICS, start, warn)
        metrics_file = open(run_dir / METRICS, "a")
    board = None
    if tensorboard and run_dir is not None and primary:
        from learned_dco.app import observe

        board = observe.tensorboard_writer(run_dir)
    bar = None
    if progress and primary:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=start, desc="meta-train", unit="step", dynamic_ncols=True)
    step = trainer.step
    if step_cache is not None and fingerprint is not None and start < num_steps:
        step = stepcache.cached_step(trainer, fingerprint, step_cache)
    try:
        for k in range(start, num_steps):
            t0 = time.perf_counter()
            labels = trainer.stage(state).labels  # a task mixture: the member and horizon this step runs
            state, metrics = step(state)
            record = {name: _to_python(v) for name, v in metrics._asdict().items()}
            record.update(step=k, seconds=time.perf_counter() - t0, **labels)
            if metrics_file is not None:
                metrics_file.write(dumps(record, indent=None) + "\n")
                metrics_file.flush()
            if board is not None:
                board.write(k, record)
            if bar is not None:
                bar.set_postfix(meta_loss=f"{record['meta_loss']:.4g}", refresh=False)
                bar.update(1)
            if on_step is not None:
                on_step(k, record)
            if run_dir is not None and checkpoint_every and (k + 1) % checkpoint_every == 0:
                distributed.save_checkpoint(run_dir / CHECKPOINT, state, fingerprint)
    finally:
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if board is not None:
            board.close()
    if run_dir is not None:
        distributed.save_checkpoint(run_dir / CHECKPOINT, state, fingerprint)
    return state


def train(
    cfg: C.RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    devices: list | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    warn: Warn = _warn,
    tensorboard: bool = False,
):
    """Meta-train ``cfg`` in ``run_dir`` until ``train.num_steps``.

    With ``resume`` the state is restored from the run's newest readable checkpoint and
    training continues; the result equals that of an uninterrupted run (same pool, same
    keys). Returns the final :class:`~learned_dco.meta.TrainState`.
    """
    run_dir = Path(run_dir)
    if not distributed.is_primary():
        warn = lambda msg: None  # noqa: E731 -- process 0 reports
    built = build(cfg)
    trainer = make_trainer(built, devices)
    key = C.stream_key(cfg.seed, "trainer")
    fingerprint = cfg.fingerprint()
    if resume:
        stale = remove_temporaries(run_dir)
        if stale:
            warn(f"removed {len(stale)} temporary file(s) left by an interrupted write: {', '.join(p.name for p in stale)}")
        for msg in changed_defaults(run_dir, cfg):
            warn(msg)
        if not distributed.checkpoint_exists(run_dir / CHECKPOINT):
            warn(f"{run_dir}: no checkpoint yet (stopped before the first one); starting from step 0")
            state = trainer.init(key)
        else:
            state = restore(trainer, run_dir, key, fingerprint, warn)
        if int(state.step) > cfg.train.num_steps:
            raise C.ConfigError(
                f"train.num_steps: the checkpoint is already at step {int(state.step)} > {cfg.train.num_steps}"
            )
    else:
        state = trainer.init(key)
    if distributed.is_primary():
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG_FILE)
        if not resume or not (run_dir / RUN_INFO).exists():
            write_run_info(run_dir, cfg)
    state = run(
        trainer, state, cfg.train.num_steps, run_dir=run_dir, checkpoint_every=cfg.train.checkpoint_every,
        progress=progress, on_step=on_step, fingerprint=fingerprint, warn=warn,
        step_cache=jax.config.jax_compilation_cache_dir or None,  # beside XLA's cache when one is on
        tensorboard=tensorboard,
    )
    resolved = cfg.resolved()
    info = {
        "optimizer": resolved.optimizer.to_dict(),
        "task": resolved.task.to_dict(),
        "meta_step": int(state.step),
        "skipped_updates": int(state.skipped),
        "load": "learned_dco.app.runs.load_trained(run_dir) -> .lopt.opt_fn(.meta)",
    }
    if distributed.is_primary():
        checkpoint.save_meta(run_dir / META, state.meta, info)
    return state


# --------------------------------------------------------------------------------------
# reading a finished run
# --------------------------------------------------------------------------------------


def shape_family(family):
    """The family whose parameters shape the meta-parameters: a mixture's first member
    (a learned optimizer trained on a mixture has meta-parameters that do not depend on
    the model's shapes, so any member gives the same structure), else ``family``."""
    return C.task_families(family)[0]


def example_params(family, key):
    """Parameters of one task of ``family`` (shapes the meta-parameters; a mixture: its
    first member's, see :func:`shape_family`)."""
    family = shape_family(family)
    k_task, k_init = jax.random.split(key)
    return family.init_params(k_init, family.sample(k_task))


def initial_meta(built: Built):
    """The untrained meta-parameters: those :meth:`MetaTrainer.init` starts from (a
    mixture: from its first member's parameters)."""
    k_params, k_meta, _, _ = jax.random.split(C.stream_key(built.config.seed, "trainer"), 4)
    k_task, k_init = jax.random.split(k_params)
    family = shape_family(built.family)
    params = family.init_params(k_init, meta.sample_task(family, built.pool, k_task))
    return built.lopt.init(k_meta, params)


class Trained(NamedTuple):
    """A trained learned optimizer loaded from a run directory."""

    config: C.RunConfig
    lopt: Any  # the learned optimizer (``lopt.opt_fn(meta)`` -> optax transformation)
    family: Any  # the task family it was trained on (a ``tasks.Mixture`` for a mixture run)
    meta: Any  # the trained meta-parameters
    meta_step: int | None  # meta-steps they were trained for (from meta.json), if recorded


def load_trained(run_dir: str | Path, *, latest: bool = False) -> Trained:
    """Load ``config.yaml`` and ``meta.msgpack`` from a run directory; with ``latest=True``, a
    run that has not finished gives the meta-parameters of its latest checkpoint instead."""
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir)
    path = run_dir / META
    if not path.exists() and not (latest and (run_dir / checkpoint.CHECKPOINT).exists()):
        raise RunError(f"{path}: missing; has `learned-dco train` finished in {run_dir}?")
    lopt, family = C.build_optimizer(cfg), C.build_family(cfg)
    template = lopt.init(jax.random.PRNGKey(0), example_params(family, jax.random.PRNGKey(0)))
    if not path.exists():
        raw = checkpoint.read_raw(run_dir / checkpoint.CHECKPOINT)["state"]
        step = int(raw["step"]) if "step" in raw else None
        return Trained(cfg, lopt, family, serialization.from_state_dict(template, raw["meta"]), step)
    try:
        meta_params = checkpoint.load_meta(path, template=template)
    except Exception as e:  # msgpack/flax raise several types for a torn or foreign file
        raise checkpoint.CheckpointError(f"{path}: unreadable meta-parameters ({type(e).__name__}: {e})") from None
    info_path = path.with_suffix(".json")
    try:
        meta_step = json.loads(info_path.read_text()).get("meta_step") if info_path.exists() else None
    except ValueError:
        meta_step = None
    return Trained(cfg, lopt, family, meta_params, meta_step)
