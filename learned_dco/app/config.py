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
samples fresh tasks (``train.num_train_tasks: null``) and is meta-trained with the ``full``
or ``es`` estimator, whose ``horizon`` (and ES's ``truncation``) is replaced per meta-step
by the drawn horizon.

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
    "check_memory", "stream_key", "STREAMS", "parse_yaml", "MIXTURE", "MIXTURE_ESTIMATORS", "task_families",
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

MIXTURE = "mixture"
"""The task name of a mixture of task families (:class:`learned_dco.tasks.Mixture`)."""

MIXTURE_KEYS = ("members", "horizons", "weights")  # fields of a mixture's task section
MIXTURE_ESTIMATORS = ("full", "es")
"""Estimators a mixture can be meta-trained with (stateless across meta-steps: the member
and horizon change every meta-step, so no inner state can be carried over)."""


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

    @property
    def is_mixture(self) -> bool:
        return self.name == MIXTURE

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: _plain_option(v) for k, v in self.options}}


def _plain_option(value: Any) -> Any:
    """:func:`plain`, also turning nested components (a mixture's members) into mappings."""
    if isinstance(value, ComponentConfig):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain_option(v) for v in value]
    return value


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
    if section == "task" and comp.is_mixture:
        given = comp.kwargs
        options = {
            "members": tuple(_resolve_component("task", m) for m in given["members"]),
            "horizons": given["horizons"],
            "weights": given.get("weights"),
        }
        return ComponentConfig(comp.name, tuple(sorted(options.items())))
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
        if isinstance(value, ComponentConfig) and f.name == "task" and value.is_mixture:
            out["task.weights"] = None
            for i, member in enumerate(value.kwargs["members"]):
                out.update(_class_defaults(tasks.FAMILIES[member.name], f"task.members[{i}]"))
        elif isinstance(value, ComponentConfig):
            out.update(_class_defaults(REGISTRIES[f.name][1][value.name], f.name))
        elif dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                out[f"{f.name}.{g.name}"] = plain(g.default)
    return out


def _class_defaults(cls: type, prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}.{g.name}": plain(g.default)
        for g in dataclasses.fields(cls)
        if g.init and g.default is not dataclasses.MISSING and _is_plain(g.default)
    }


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------


def parse_component(section: str, data: Any, path: str | None = None, *, member: bool = False) -> ComponentConfig:
    """``{name: ..., **fields}`` checked against the registered class's fields; the class is
    instantiated once so its own value checks run now. ``task: {name: mixture, ...}`` is
    parsed by :func:`parse_mixture` (``member``: parsing a mixture's member, which cannot be
    a mixture itself)."""
    path = path or section
    what, registry = REGISTRIES[section]
    names = tuple(registry) + ((MIXTURE,) if section == "task" and not member else ())
    data = dict(check_mapping(data, path))
    if "name" not in data:
        raise ConfigError(f"{path}.name: missing required key (known {what}s: {', '.join(names)})")
    name = data.pop("name")
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: expected str, got {describe(name)}")
    if section == "task" and name == MIXTURE:
        if member:
            raise ConfigError(f"{path}.name: a mixture cannot be a member of a mixture (list its families instead)")
        return parse_mixture(data, path)
    choice(name, names, f"{path}.name", what)
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


def parse_mixture(data: Mapping[str, Any], path: str = "task") -> ComponentConfig:
    """The fields of ``task: {name: mixture, ...}`` (``name`` already removed): ``members``
    (non-empty list of task sections, each checked by :func:`parse_component`),
    ``horizons`` (non-empty list of positive ints) and ``weights`` (``null`` or one
    non-negative number per member with a positive sum)."""
    for key in data:
        if key not in MIXTURE_KEYS:
            raise ConfigError(f"{path}.{key}: unknown key for a task mixture (known: name, {', '.join(MIXTURE_KEYS)})")
    for key in ("members", "horizons"):
        if key not in data:
            raise ConfigError(f"{path}.{key}: missing required key for a task mixture")
    raw = data["members"]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"{path}.members: expected a non-empty list of task sections, got {describe(raw)}")
    members = tuple(parse_component("task", m, f"{path}.members[{i}]", member=True) for i, m in enumerate(raw))
    horizons = coerce(data["horizons"], tuple[int, ...], f"{path}.horizons")
    if not horizons:
        raise ConfigError(f"{path}.horizons: must hold at least one inner horizon")
    for i, h in enumerate(horizons):
        positive(h, f"{path}.horizons[{i}]")
    weights = coerce(data.get("weights"), tuple[float, ...] | None, f"{path}.weights")
    if weights is not None:
        if len(weights) != len(members):
            raise ConfigError(
                f"{path}.weights: expected one weight per member ({len(members)}), got {len(weights)}"
            )
        for i, w in enumerate(weights):
            if not w >= 0:
                raise ConfigError(f"{path}.weights[{i}]: must be >= 0, got {w!r}")
        if not sum(weights) > 0:
            raise ConfigError(f"{path}.weights: must have a positive sum, got {list(weights)}")
    comp = ComponentConfig(MIXTURE, tuple(sorted({"members": members, "horizons": horizons, "weights": weights}.items())))
    try:
        _build_mixture(comp)
    except ValueError as e:  # the Mixture's own checks (ValidationError is a ValueError)
        raise ConfigError(f"{path}: {e}") from None
    return comp


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
    if cfg.task.is_mixture:
        if pool is not None:
            raise ConfigError(
                f"train.num_train_tasks: a task mixture samples fresh tasks of the drawn member every "
                f"meta-step; set train.num_train_tasks: null (got {pool})"
            )
        if est.name not in MIXTURE_ESTIMATORS:
            raise ConfigError(
                f"estimator.name: a task mixture is meta-trained with {' or '.join(MIXTURE_ESTIMATORS)} "
                f"(the member and horizon change every meta-step, so no inner state is carried over), got {est.name!r}"
            )
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


_KEY_PART = re.compile(r"^([^.\[\]]+)((?:\[[0-9]+\])*)$")


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"a.b=value"`` -> ``(["a", "b"], value)`` with ``value`` parsed as YAML; a list
    element is addressed by its index, ``"task.members[1].hidden=[64]"`` ->
    ``(["task", "members", 1, "hidden"], (64,))``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. estimator.horizon=10")
    parts: list[str | int] = []
    for part in key.split("."):
        match = _KEY_PART.match(part)
        if not match:
            raise ConfigError(f"--set {text!r}: malformed key {key!r}")
        parts.append(match.group(1))
        parts += [int(i) for i in re.findall(r"\[([0-9]+)\]", match.group(2))]
    return parts, parse_yaml(raw, f"--set {key}") if raw.strip() else None


def _dotted(parts: Sequence[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(parts))


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``KEY=VALUE`` override set (creating sections)."""
    out = copy.deepcopy(dict(data))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(part, int):
                if not isinstance(node, list):
                    raise ConfigError(f"{_dotted(parts[:i])}: holds {describe(node)}, not a list; cannot set {_dotted(parts)}")
                if part >= len(node):
                    raise ConfigError(f"{_dotted(parts[:i + 1])}: index out of range (the list has {len(node)} items)")
            elif not isinstance(node, dict):
                raise ConfigError(f"{_dotted(parts[:i])}: holds {describe(node)}, cannot set {_dotted(parts)}")
            if last:
                node[part] = value
                break
            child = node[part] if isinstance(part, int) else node.get(part)
            if child is None and not isinstance(parts[i + 1], int):
                child = node[part] = {}
            node = child
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
# builders (thin: each calls the registry its section names; see the module docstring)
# --------------------------------------------------------------------------------------


def build_optimizer(cfg: RunConfig):
    """The learned optimizer: :func:`learned_dco.optimizers.make_optimizer` of the config."""
    return make_optimizer(cfg.optimizer.name, **cfg.optimizer.kwargs)


def build_family(cfg: RunConfig):
    """The task family: :func:`learned_dco.tasks.make_family` of the config, or a
    :class:`learned_dco.tasks.Mixture` of such families for ``task: {name: mixture}``."""
    if cfg.task.is_mixture:
        return _build_mixture(cfg.task)
    return tasks.make_family(cfg.task.name, **cfg.task.kwargs)


def _build_mixture(comp: ComponentConfig) -> tasks.Mixture:
    kw = comp.kwargs
    members = tuple(tasks.make_family(m.name, **m.kwargs) for m in kw["members"])
    return tasks.Mixture(members=members, weights=kw["weights"], horizons=kw["horizons"])


def task_families(family) -> tuple:
    """The task families a built family stands for: a mixture's members, else ``(family,)``."""
    return tuple(family.members) if isinstance(family, tasks.Mixture) else (family,)


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

    A task mixture is estimated for its worst member (largest total) at its largest
    horizon (the horizon replaces the estimator's truncation/horizon); ``member`` is then
    that member's index.
    """
    family = build_family(cfg)
    est = build_estimator(cfg)
    key = jax.random.PRNGKey(0)
    n = int(getattr(est, "num_tasks", 1))
    if isinstance(family, tasks.Mixture):
        steps = max(family.horizons)
    else:
        steps = int(getattr(est, "truncation", None) or getattr(est, "horizon", 1) or 1)
    worst = None
    for i, member in enumerate(task_families(family)):
        where = f"task.members[{i}]" if isinstance(family, tasks.Mixture) else "task"
        try:
            task = jax.eval_shape(member.sample, key)
            params = jax.eval_shape(member.init_params, key, task)
        except (ValueError, TypeError, OverflowError, MemoryError) as e:
            raise ConfigError(f"{where}: cannot build a task of this size: {e}") from None
        t, p = _bytes(task), _bytes(params)
        out = {
            "task": t,
            "params": p,
            "pool": (cfg.train.num_train_tasks or 0) * t,
            "meta_step": n * (t + p * (steps + 2)),
            "eval": 2 * cfg.eval.num_tasks * t,
        }
        if isinstance(family, tasks.Mixture):
            out["member"] = i
        if worst is None or _total(out) > _total(worst):
            worst = out
    return worst


def _total(est: Mapping[str, int]) -> int:
    return est["pool"] + est["meta_step"] + est["eval"]


def check_memory(cfg: RunConfig, limit: int | None = None, *, fraction: float = 0.8) -> dict[str, int]:
    """Raise :class:`ResourceError` if :func:`estimate_memory` exceeds ``fraction`` of the
    available memory (``limit`` bytes, default :func:`available_memory`); return the estimate."""
    est = estimate_memory(cfg)
    where = "given limit"
    if limit is None:
        limit, where = available_memory()
    total = _total(est)
    if total > fraction * limit:
        worst = max(("pool", "meta_step", "eval"), key=est.get)
        blame = {
            "pool": f"train.num_train_tasks={cfg.train.num_train_tasks} x one task",
            "meta_step": f"estimator.num_tasks x (one task + parameters per unrolled step)",
            "eval": f"2 x eval.num_tasks={cfg.eval.num_tasks} x one task",
        }[worst]
        member = (
            f"; worst member task.members[{est['member']}] ({cfg.task.kwargs['members'][est['member']].name}) "
            f"at horizon {max(cfg.task.kwargs['horizons'])}"
            if "member" in est else ""
        )
        raise ResourceError(
            f"task: this config needs about {fmt_bytes(total)}{member} (one task {fmt_bytes(est['task'])}, "
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
