r"""Run configurations: the schema of ``learned_dco/configs/*.yaml``, builders, resources, random streams.

A run configuration names a learned optimizer, a task family and a meta-gradient
estimator, each as ``{name: <registry key>, <field>: <value>, ...}`` whose fields are
exactly the fields of the registered dataclass, plus the meta-optimizer, the training loop
and the evaluation::

    seed: 0
    optimizer: {name: dcog, learning_rate: 0.001, normalize: true}       # LEARNED_OPTIMIZERS
    task: {name: least_squares, dim: 100}                                 # tasks.FAMILIES
    estimator: {name: full, horizon: 1, num_tasks: 100, meta_loss: final_val}  # meta.ESTIMATORS
    meta_optimizer: {name: rmsprop, learning_rate: 0.01, clip: null}      # rmsprop|adam|adamw|sgd
    train: {num_steps: 20, num_train_tasks: 100, checkpoint_every: 10}
    eval: {num_tasks: 100, num_steps: 30, baselines: [sgd, adam, rmsprop], lr_grid: null}

Validation is strict (:mod:`learned_dco.app.coercion`): every unknown key and every value
of the wrong type, non-finite or out of range raises :class:`ConfigError` naming the dotted
key. Value checks of the target classes (``learning_rate > 0``, ``truncation <= horizon``,
...) run at load time and are reported under the section's key.

A *task mixture* (:class:`learned_dco.tasks.Mixture`) is the task section
``{name: mixture, members: [<task>, ...], horizons: [<int>, ...], weights: null}``: each
member is a task section of its own, validated the same way (errors name
``task.members[1].hidden``); each meta-step draws a member and an inner horizon. A mixture
samples fresh tasks (``train.num_train_tasks: null``) and is meta-trained with an estimator
that unrolls whole episodes (``full`` or ``es``), taken at the drawn horizon every
meta-step (``estimator.with_horizon(T)``; :mod:`learned_dco.meta.schedule`).

Each section is parsed once into its validated value: the component sections
(:mod:`learned_dco.app.components`) carry the constructed learned optimizer, task family
or mixture and estimator, the others are frozen dataclasses (:class:`MetaOptimizerConfig`,
...). The builders, the memory estimate (:mod:`learned_dco.app.resources`), the resolved
config, the fingerprint and the run info all read those values; ``--set`` overrides act on
the raw mapping first (:mod:`learned_dco.app.overrides`).

*Resolved* configs: :meth:`RunConfig.resolved` writes every default of every section out
(the registered classes' field defaults included); a run directory saves the resolved
config, so a run means the same after an upgrade that changes a default.

Memory: :func:`check_memory` estimates what a config will allocate (task shapes from
``jax.eval_shape``, nothing allocated) and refuses sizes beyond the machine's memory with a
:class:`ResourceError` giving the estimate.

Random streams: all keys derive from ``seed`` (see :func:`stream_key`): the fixed pool of
training tasks, the trainer's state, and -- with ``eval.seed`` (default ``seed + 1``) --
the held-out evaluation tasks, so evaluation never reuses a training task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import optax
import yaml

from learned_dco import meta, tasks
from learned_dco.app.coercion import (  # noqa: F401 -- coerce and friends are part of this module's face
    ConfigError,
    check_mapping,
    choice,
    coerce,
    describe,
    init_fields,
    parse_dataclass,
    parse_yaml,
    plain,
    positive,
)
from learned_dco.app.components import (  # noqa: F401 -- parse_mixture is part of this module's face
    MIXTURE,
    REGISTRIES,
    ComponentConfig,
    class_defaults,
    parse_component,
    parse_mixture,
    resolve,
)
from learned_dco.app.overrides import apply_overrides, parse_override
from learned_dco.app.resources import (  # noqa: F401 -- the memory helpers are part of this module's face
    ResourceError,
    available_memory,
    check_memory,
    estimate_memory,
    fmt_bytes,
    host_memory,
)
from learned_dco.io import atomic_write_text

__all__ = [
    "ConfigError", "ResourceError", "ComponentConfig", "MetaOptimizerConfig", "TrainConfig", "EvalConfig", "RunConfig",
    "META_OPTIMIZERS", "REGISTRIES", "from_dict", "load_config", "parse_override", "apply_overrides", "diff",
    "defaults", "build_optimizer", "build_family", "build_estimator", "build_meta_optimizer", "estimate_memory",
    "check_memory", "stream_key", "STREAMS", "parse_yaml", "MIXTURE", "MIXTURE_ESTIMATORS", "task_families",
]


META_OPTIMIZERS = {
    "rmsprop": meta.rmsprop_pytorch,  # PyTorch's defaults, the DCO paper's choice
    "adam": meta.BASELINES["adam"],
    "adamw": optax.adamw,
    "sgd": meta.BASELINES["sgd"],
}
"""Meta-optimizer name -> factory of the learning rate (``adamw`` also takes weight_decay)."""

MIXTURE_ESTIMATORS = tuple(name for name, cls in meta.ESTIMATORS.items() if cls.whole_episodes)
"""Estimators a mixture can be meta-trained with: those that unroll whole episodes at any
horizon (``whole_episodes``), since the member and horizon change every meta-step and no
inner state can be carried over."""


# --------------------------------------------------------------------------------------
# the schema
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetaOptimizerConfig:
    """The outer optimizer of the meta-parameters.

    Attributes:
      name: ``rmsprop`` (PyTorch defaults, the DCO paper's choice), ``adam``, ``adamw`` or
        ``sgd``.
      learning_rate: outer learning rate.
      weight_decay: decoupled weight decay (``adamw`` only; ``null`` = optax's 1e-4).
      clip: global-norm clipping of the meta-gradient applied before the optimizer
        (``null`` = none).
    """

    name: str = "rmsprop"
    learning_rate: float = 0.01
    weight_decay: float | None = None
    clip: float | None = None

    def validate(self, path: str) -> None:
        choice(self.name, tuple(META_OPTIMIZERS), f"{path}.name", "meta-optimizer")
        positive(self.learning_rate, f"{path}.learning_rate")
        if self.weight_decay is not None:
            if self.name != "adamw":
                raise ConfigError(f"{path}.weight_decay: only used by adamw (name is {self.name!r})")
            if not self.weight_decay >= 0:
                raise ConfigError(f"{path}.weight_decay: must be >= 0, got {self.weight_decay!r}")
        if self.clip is not None:
            positive(self.clip, f"{path}.clip")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The meta-training loop.

    Attributes:
      num_steps: meta-steps to take (one estimator call and one outer update each).
      num_train_tasks: size of the fixed pool of training tasks sampled once from the seed
        (the DCO paper's 100 tasks), or ``null`` for fresh tasks every meta-step.
      checkpoint_every: write ``checkpoint.msgpack`` every this many meta-steps (0: only at
        the end).
    """

    num_steps: int = 20
    num_train_tasks: int | None = 100
    checkpoint_every: int = 0

    def validate(self, path: str) -> None:
        positive(self.num_steps, f"{path}.num_steps")
        if self.num_train_tasks is not None:
            positive(self.num_train_tasks, f"{path}.num_train_tasks")
        if self.checkpoint_every < 0:
            raise ConfigError(f"{path}.checkpoint_every: must be >= 0, got {self.checkpoint_every}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``learned-dco eval``: the trained optimizer against tuned optax baselines.

    Attributes:
      num_tasks: held-out tasks to evaluate on.
      num_steps: inner steps per task.
      baselines: optax baselines (``meta.BASELINES`` names) whose learning rates are tuned.
      lr_grid: learning rates swept per baseline (``null``: ``meta.DEFAULT_GRID``,
        1e-4 to 1 with four points per decade).
      seed: seed of the held-out tasks (``null``: the run's ``seed + 1``).
    """

    num_tasks: int = 100
    num_steps: int = 30
    baselines: tuple[str, ...] = ("sgd", "adam", "rmsprop")
    lr_grid: tuple[float, ...] | None = None
    seed: int | None = None

    def validate(self, path: str) -> None:
        positive(self.num_tasks, f"{path}.num_tasks")
        positive(self.num_steps, f"{path}.num_steps")
        for i, name in enumerate(self.baselines):
            choice(name, tuple(meta.BASELINES), f"{path}.baselines[{i}]", "baseline")
        if len(set(self.baselines)) != len(self.baselines):
            raise ConfigError(f"{path}.baselines: duplicate names in {list(self.baselines)}")
        if self.lr_grid is not None:
            if not self.lr_grid:
                raise ConfigError(f"{path}.lr_grid: must be non-empty (or null for the default grid)")
            for i, lr in enumerate(self.lr_grid):
                positive(lr, f"{path}.lr_grid[{i}]")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"{path}.seed: must be >= 0, got {self.seed}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run: what to meta-train, on what, how, and how to evaluate it. The
    component sections carry their constructed values (``cfg.optimizer.value``, ...)."""

    optimizer: ComponentConfig
    task: ComponentConfig
    estimator: ComponentConfig = ComponentConfig("full", (), meta.FullUnroll())
    meta_optimizer: MetaOptimizerConfig = MetaOptimizerConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = 0

    def validate(self, path: str) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed: must be >= 0, got {self.seed}")

    @property
    def eval_seed(self) -> int:
        return self.seed + 1 if self.eval.seed is None else self.eval.seed

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able nested dicts (tuples become lists); ``from_dict`` inverts it."""
        out: dict[str, Any] = {"seed": self.seed}
        for f in dataclasses.fields(self):
            if f.name == "seed":
                continue
            value = getattr(self, f.name)
            if isinstance(value, ComponentConfig):
                out[f.name] = value.to_dict()
            else:
                out[f.name] = {k: plain(v) for k, v in dataclasses.asdict(value).items()}
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def resolved(self) -> RunConfig:
        """The same config with every default written out, read from the sections' values
        (see :func:`learned_dco.app.components.resolve` and :func:`defaults`)."""
        return dataclasses.replace(self, **{s: resolve(getattr(self, s)) for s in REGISTRIES})

    def fingerprint(self) -> str:
        """sha256 of the resolved config without the keys a resume may change
        (:data:`RESUMABLE_CHANGES`, ``eval.*``): equal fingerprints, equal trajectories."""
        data = self.resolved().to_dict()
        data.pop("eval", None)
        for key in RESUMABLE_CHANGES:
            section, field = key.split(".")
            data[section].pop(field, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the *resolved* config atomically."""
        header = "# resolved config: every default written out (learned-dco train)\n"
        return atomic_write_text(path, header + self.resolved().to_yaml())


# Keys that may change when a run is resumed: they do not alter the training trajectory.
RESUMABLE_CHANGES = ("train.num_steps", "train.checkpoint_every")


def defaults(cfg: RunConfig) -> dict[str, Any]:
    """``{dotted key: default value}`` of every field the config's sections have, as this
    version of the library defines them (the registered classes' defaults included)."""
    out: dict[str, Any] = {"seed": RunConfig.__dataclass_fields__["seed"].default}
    for f in dataclasses.fields(RunConfig):
        value = getattr(cfg, f.name)
        if isinstance(value, ComponentConfig) and value.is_mixture:
            out["task.weights"] = None
            for i, member in enumerate(value.members):
                out.update(class_defaults(type(member.value), f"task.members[{i}]"))
        elif isinstance(value, ComponentConfig):
            out.update(class_defaults(type(value.value), f.name))
        elif dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                out[f"{f.name}.{g.name}"] = plain(g.default)
    return out


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------


def _cross_checks(cfg: RunConfig) -> None:
    est = cfg.estimator
    pool = cfg.train.num_train_tasks
    if cfg.task.is_mixture:
        if pool is not None:
            raise ConfigError(
                f"train.num_train_tasks: a task mixture samples fresh tasks of the drawn member every "
                f"meta-step; set train.num_train_tasks: null (got {pool})"
            )
        if not est.value.whole_episodes:
            raise ConfigError(
                f"estimator.name: a task mixture is meta-trained with {' or '.join(MIXTURE_ESTIMATORS)} "
                f"(the member and horizon change every meta-step, so no inner state is carried over), got {est.name!r}"
            )
    if pool is not None:
        try:
            est.value.check_pool(pool, "train.num_train_tasks")
        except ValueError as e:
            raise ConfigError(f"estimator.{getattr(e, 'field', None) or 'num_tasks'}: {e}") from None


def from_dict(data: Any, source: str = "config") -> RunConfig:
    """Validate a nested mapping (e.g. parsed YAML) into a :class:`RunConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {describe(data)}")
    cfg = parse_dataclass(RunConfig, data, "", {ComponentConfig: parse_component})
    _cross_checks(cfg)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``--set`` style overrides, validate.

    A missing or unreadable file raises ``OSError`` (the CLI reports it with its own exit
    status); everything about the content raises :class:`ConfigError`.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {describe(data)}")
    return from_dict(apply_overrides(data, overrides), str(path))


def diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs (compared resolved)."""
    out: list[str] = []

    def walk(x, y, prefix):
        keys = (x.keys() | y.keys()) if isinstance(x, dict) and isinstance(y, dict) else None
        if _list_of_mappings(x) and _list_of_mappings(y) and len(x) == len(y):  # a mixture's members
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{prefix}[{i}]")
            return
        if keys is None:
            if x != y:
                out.append(prefix)
            return
        for k in sorted(keys):
            walk(x.get(k), y.get(k), f"{prefix}.{k}" if prefix else k)

    walk(a.resolved().to_dict(), b.resolved().to_dict(), "")
    return out


def _list_of_mappings(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(v, dict) for v in x)


# --------------------------------------------------------------------------------------
# builders: the parsed values (constructed once, when the config was parsed)
# --------------------------------------------------------------------------------------


def build_optimizer(cfg: RunConfig):
    """The learned optimizer of the config (its parsed value)."""
    return cfg.optimizer.value


def build_family(cfg: RunConfig):
    """The task family of the config, or a :class:`learned_dco.tasks.Mixture` of families
    for ``task: {name: mixture}`` (its parsed value)."""
    return cfg.task.value


def task_families(family) -> tuple:
    """The task families a built family stands for: a mixture's members, else ``(family,)``."""
    return tuple(family.members) if isinstance(family, tasks.Mixture) else (family,)


def build_estimator(cfg: RunConfig):
    """The meta-gradient estimator of the config (its parsed value)."""
    return cfg.estimator.value


def build_meta_optimizer(cfg: RunConfig) -> optax.GradientTransformation:
    """The outer optax transformation (optionally preceded by global-norm clipping)."""
    m = cfg.meta_optimizer
    if m.name == "adamw":
        wd = 1e-4 if m.weight_decay is None else m.weight_decay
        tx = optax.adamw(m.learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
    else:
        tx = META_OPTIMIZERS[m.name](m.learning_rate)
    if m.clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(m.clip), tx)
    return tx


# --------------------------------------------------------------------------------------
# random streams
# --------------------------------------------------------------------------------------

STREAMS = {"pool": 0, "trainer": 1, "heldout": 2, "tuning": 3, "rollout": 4}


def stream_key(seed: int, stream: str):
    """``fold_in(PRNGKey(seed), STREAMS[stream])``: one independent key per purpose."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), STREAMS[stream])
