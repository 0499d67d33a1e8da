r"""Run configurations: the schema of ``configs/*.yaml``, builders, resources, random streams.

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

import copy
import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import optax
import yaml

from learned_dco import meta, tasks
from learned_dco.app.coercion import (
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
from learned_dco.io import atomic_write_text
from learned_dco.optimizers import LEARNED_OPTIMIZERS, make_optimizer

__all__ = [
    "ConfigError", "ResourceError", "ComponentConfig", "MetaOptimizerConfig", "TrainConfig", "EvalConfig", "RunConfig",
    "META_OPTIMIZERS", "REGISTRIES", "from_dict", "load_config", "parse_override", "apply_overrides", "diff",
    "defaults", "build_optimizer", "build_family", "build_estimator", "build_meta_optimizer", "estimate_memory",
    "check_memory", "stream_key", "STREAMS", "parse_yaml",
]


class ResourceError(ConfigError):
    """A config whose sizes exceed what this machine can hold (the message gives the estimate)."""


# --------------------------------------------------------------------------------------
# registries and the meta-optimizer factory
# --------------------------------------------------------------------------------------

REGISTRIES: dict[str, tuple[str, Mapping[str, type]]] = {
    "optimizer": ("learned optimizer", LEARNED_OPTIMIZERS),
    "task": ("task family", tasks.FAMILIES),
    "estimator": ("estimator", meta.ESTIMATORS),
}
"""Config section -> (what it names, the registry its ``name`` is looked up in)."""

META_OPTIMIZERS = {
    "rmsprop": meta.rmsprop_pytorch,  # PyTorch's defaults, the DCO paper's choice
    "adam": meta.BASELINES["adam"],
    "adamw": optax.adamw,
    "sgd": meta.BASELINES["sgd"],
}
"""Meta-optimizer name -> factory of the learning rate (``adamw`` also takes weight_decay)."""


# --------------------------------------------------------------------------------------
# the schema
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ComponentConfig:
    """A registry entry and the keyword arguments of its dataclass.

    Attributes:
      name: the registry key (``LEARNED_OPTIMIZERS``, ``tasks.FAMILIES`` or
        ``meta.ESTIMATORS``).
      options: validated ``(field, value)`` pairs (sorted); in a resolved config every
        field of the class, otherwise only those given.
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: plain(v) for k, v in self.options}}


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
    """A whole run: what to meta-train, on what, how, and how to evaluate it."""

    optimizer: ComponentConfig
    task: ComponentConfig
    estimator: ComponentConfig = ComponentConfig("full")
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
        """The same config with every default written out (see :func:`defaults`)."""
        return dataclasses.replace(
            self, **{s: _resolve_component(s, getattr(self, s)) for s in REGISTRIES}
        )

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

_PLAIN = (bool, int, float, str, type(None))


def _is_plain(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _yaml_spelling(value: Any) -> Any:
    """A choice stored as a value (a QP solver, a meta-loss) by the name YAML gives it, when
    that name alone rebuilds it (default options); other values are returned unchanged."""
    name = getattr(value, "name", None)
    if dataclasses.is_dataclass(value) and isinstance(name, str):
        try:
            if type(value)() == value:
                return name
        except TypeError:
            pass
    return value


def _resolve_component(section: str, comp: ComponentConfig) -> ComponentConfig:
    _, registry = REGISTRIES[section]
    obj = registry[comp.name](**comp.kwargs)
    given = comp.kwargs
    options = dict(given)
    for f in dataclasses.fields(obj):
        if f.init and f.name not in given:
            value = _yaml_spelling(getattr(obj, f.name))
            if _is_plain(value):  # a value YAML cannot spell stays implicit
                options[f.name] = value
    return ComponentConfig(comp.name, tuple(sorted(options.items())))


def defaults(cfg: RunConfig) -> dict[str, Any]:
    """``{dotted key: default value}`` of every field the config's sections have, as this
    version of the library defines them (the registered classes' defaults included)."""
    out: dict[str, Any] = {"seed": RunConfig.__dataclass_fields__["seed"].default}
    for f in dataclasses.fields(RunConfig):
        value = getattr(cfg, f.name)
        if isinstance(value, ComponentConfig):
            cls = REGISTRIES[f.name][1][value.name]
            for g in dataclasses.fields(cls):
                if g.init and g.default is not dataclasses.MISSING and _is_plain(g.default):
                    out[f"{f.name}.{g.name}"] = plain(g.default)
        elif dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                out[f"{f.name}.{g.name}"] = plain(g.default)
    return out


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------


def parse_component(section: str, data: Any, path: str | None = None) -> ComponentConfig:
    """``{name: ..., **fields}`` checked against the registered class's fields; the class is
    instantiated once so its own value checks run now."""
    path = path or section
    what, registry = REGISTRIES[section]
    data = dict(check_mapping(data, path))
    if "name" not in data:
        raise ConfigError(f"{path}.name: missing required key (known {what}s: {', '.join(registry)})")
    name = data.pop("name")
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: expected str, got {describe(name)}")
    choice(name, tuple(registry), f"{path}.name", what)
    cls = registry[name]
    fields = init_fields(cls)
    options = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{path}.{key}: unknown key for {what} {name!r} (known: name, {', '.join(fields)})")
        options[key] = coerce(value, fields[key], f"{path}.{key}")
    if section == "task":
        _check_construction_size(cls, options, path)
    try:
        cls(**options)
    except MemoryError as e:  # a family that allocates its data when constructed
        raise ResourceError(f"{path}: building {what} {name!r} ran out of memory ({e})") from None
    except (ValueError, TypeError, OverflowError) as e:
        # Point at the field when the class's message names one ("DCOG.learning_rate ...").
        match = re.search(rf"\b{re.escape(cls.__name__)}\.(\w+)", str(e))
        where = f"{path}.{match.group(1)}" if match and match.group(1) in fields else path
        raise ConfigError(f"{where}: {e}") from None
    return ComponentConfig(name, tuple(sorted(options.items())))


def host_memory() -> int:
    """Physical memory of this host in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 2**62


def _check_construction_size(cls: type, options: Mapping[str, Any], path: str, fraction: float = 0.8) -> None:
    """Families with ``num_samples`` and ``dim`` fields build a float64 design matrix of
    that size when constructed (e.g. the shifted least-squares family's fixed ``X``):
    refuse it before NumPy tries. (Other sizes are checked by :func:`check_memory`.)"""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.init}
    sizes = {**defaults, **options}
    n, d = sizes.get("num_samples"), sizes.get("dim")
    if not (isinstance(n, int) and isinstance(d, int)):
        return
    need, limit = 8 * n * d, host_memory()
    if need > fraction * limit:
        raise ResourceError(
            f"{path}.num_samples: {n} samples x {d} dimensions is a {fmt_bytes(need)} data matrix, more than "
            f"{fraction:.0%} of the {fmt_bytes(limit)} of host memory; reduce {path}.num_samples or {path}.dim"
        )


def _cross_checks(cfg: RunConfig) -> None:
    est = cfg.estimator
    pool = cfg.train.num_train_tasks
    if est.name == "full" and pool is not None:
        num_tasks = build_estimator(cfg).num_tasks
        if num_tasks > pool:
            raise ConfigError(
                f"estimator.num_tasks: a full unroll draws {num_tasks} distinct tasks per meta-step "
                f"from the pool, but train.num_train_tasks is {pool}"
            )


def from_dict(data: Any, source: str = "config") -> RunConfig:
    """Validate a nested mapping (e.g. parsed YAML) into a :class:`RunConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {describe(data)}")
    cfg = parse_dataclass(RunConfig, data, "", {ComponentConfig: parse_component})
    _cross_checks(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> ``(["a", "b"], value)`` with ``value`` parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. estimator.horizon=10")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {text!r}: malformed key {key!r}")
    return parts, parse_yaml(raw, f"--set {key}") if raw.strip() else None


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``KEY=VALUE`` override set (creating sections)."""
    out = copy.deepcopy(dict(data))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"{where}: holds {describe(child)}, cannot set {'.'.join(parts)}")
            node = child
        node[parts[-1]] = value
    return out


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
        if keys is None:
            if x != y:
                out.append(prefix)
            return
        for k in sorted(keys):
            walk(x.get(k), y.get(k), f"{prefix}.{k}" if prefix else k)

    walk(a.resolved().to_dict(), b.resolved().to_dict(), "")
    return out


# --------------------------------------------------------------------------------------
# builders (thin: each calls the registry its section names; see the module docstring)
# --------------------------------------------------------------------------------------


def build_optimizer(cfg: RunConfig):
    """The learned optimizer: :func:`learned_dco.optimizers.make_optimizer` of the config."""
    return make_optimizer(cfg.optimizer.name, **cfg.optimizer.kwargs)


def build_family(cfg: RunConfig):
    """The task family: :func:`learned_dco.tasks.make_family` of the config."""
    return tasks.make_family(cfg.task.name, **cfg.task.kwargs)


def build_estimator(cfg: RunConfig):
    """The meta-gradient estimator: :func:`learned_dco.meta.make_estimator` of the config."""
    return meta.make_estimator(cfg.estimator.name, **cfg.estimator.kwargs)


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
# memory: refuse sizes the machine cannot hold, before anything is allocated
# --------------------------------------------------------------------------------------


def _bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def available_memory() -> tuple[int, str]:
    """``(bytes, where)``: the first device's memory limit, or the host's physical memory."""
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # not every backend implements it
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{dev.platform} device memory"
    return host_memory(), "host memory"


def estimate_memory(cfg: RunConfig) -> dict[str, int]:
    """A lower-bound estimate in bytes of the arrays a run of ``cfg`` holds at once.

    Shapes come from ``jax.eval_shape`` (nothing is allocated): one task ``T`` and its
    parameters ``P``. Terms: the fixed training pool (``num_train_tasks x T``); a meta-step's
    batch (``num_tasks x (T + P x (steps + 2))``: reverse mode keeps the parameters of every
    unrolled step, ``steps`` = the truncation or the horizon); the evaluation's held-out and
    tuning tasks (``2 x eval.num_tasks x T``).
    """
    family = build_family(cfg)
    est = build_estimator(cfg)
    key = jax.random.PRNGKey(0)
    try:
        task = jax.eval_shape(family.sample, key)
        params = jax.eval_shape(family.init_params, key, task)
    except (ValueError, TypeError, OverflowError, MemoryError) as e:
        raise ConfigError(f"task: cannot build a task of this size: {e}") from None
    t, p = _bytes(task), _bytes(params)
    steps = int(getattr(est, "truncation", None) or getattr(est, "horizon", 1) or 1)
    n = int(getattr(est, "num_tasks", 1))
    return {
        "task": t,
        "params": p,
        "pool": (cfg.train.num_train_tasks or 0) * t,
        "meta_step": n * (t + p * (steps + 2)),
        "eval": 2 * cfg.eval.num_tasks * t,
    }


def check_memory(cfg: RunConfig, limit: int | None = None, *, fraction: float = 0.8) -> dict[str, int]:
    """Raise :class:`ResourceError` if :func:`estimate_memory` exceeds ``fraction`` of the
    available memory (``limit`` bytes, default :func:`available_memory`); return the estimate."""
    est = estimate_memory(cfg)
    where = "given limit"
    if limit is None:
        limit, where = available_memory()
    total = est["pool"] + est["meta_step"] + est["eval"]
    if total > fraction * limit:
        worst = max(("pool", "meta_step", "eval"), key=est.get)
        blame = {
            "pool": f"train.num_train_tasks={cfg.train.num_train_tasks} x one task",
            "meta_step": f"estimator.num_tasks x (one task + parameters per unrolled step)",
            "eval": f"2 x eval.num_tasks={cfg.eval.num_tasks} x one task",
        }[worst]
        raise ResourceError(
            f"task: this config needs about {fmt_bytes(total)} (one task {fmt_bytes(est['task'])}, "
            f"its parameters {fmt_bytes(est['params'])}; largest term {worst}: {blame} = {fmt_bytes(est[worst])}), "
            f"more than {fraction:.0%} of the {fmt_bytes(limit)} of {where}; reduce the task's sizes "
            f"(e.g. task.num_samples) or the number of tasks"
        )
    return est


# --------------------------------------------------------------------------------------
# random streams
# --------------------------------------------------------------------------------------

STREAMS = {"pool": 0, "trainer": 1, "heldout": 2, "tuning": 3, "rollout": 4}


def stream_key(seed: int, stream: str):
    """``fold_in(PRNGKey(seed), STREAMS[stream])``: one independent key per purpose."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), STREAMS[stream])
