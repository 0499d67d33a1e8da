r"""Run configurations: YAML files parsed into typed, frozen, validated dataclasses.

A run configuration (``configs/*.yaml``) names a learned optimizer, a task family and a
meta-gradient estimator, each as ``{name: <registry key>, <field>: <value>, ...}`` whose
fields are exactly the fields of the registered dataclass, plus the meta-optimizer, the
training loop and the evaluation::

    seed: 0
    optimizer: {name: dcog, learning_rate: 0.001, normalize: true}       # LEARNED_OPTIMIZERS
    task: {name: least_squares, dim: 100}                                 # tasks.FAMILIES
    estimator: {name: full, horizon: 1, num_tasks: 100, meta_loss: final_val}  # meta.ESTIMATORS
    meta_optimizer: {name: rmsprop, learning_rate: 0.01, clip: null}      # rmsprop|adam|adamw|sgd
    train: {num_steps: 20, num_train_tasks: 100, checkpoint_every: 10}
    eval: {num_tasks: 100, num_steps: 30, baselines: [sgd, adam, rmsprop], lr_grid: null}

Validation is strict: every unknown key (at any depth, including the fields of the
registered optimizer / task / estimator class) and every value of the wrong type raises
:class:`ConfigError` naming the dotted key, e.g. ``estimator.horizon: expected int, got
str 'ten'``. Types come from the dataclasses' annotations (``typing.get_type_hints``):
``bool`` accepts only ``true``/``false``; ``int`` rejects bools and floats; ``float``
accepts ints; ``X | None`` accepts ``null``; ``tuple[T, ...]`` and ``tuple[A, B]`` accept
YAML lists (stored as tuples, so configs stay hashable). Value checks of the target classes
(``learning_rate > 0``, ``truncation <= horizon``, ...) run at load time and are reported
under the section's key.

YAML note: the loader reads ``1e-3`` as a float (YAML 1.2). Plain PyYAML follows YAML 1.1
and would read it as the string ``"1e-3"``.

Random streams: all keys derive from ``seed`` (see :func:`stream_key`): the fixed pool of
training tasks, the trainer's state, and -- with ``eval.seed`` (default ``seed + 1``) --
the held-out evaluation tasks, so evaluation never reuses a training task.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

# --------------------------------------------------------------------------------------
# errors and YAML
# --------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key at fault."""


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that reads ``1e-3``-style numbers as floats (YAML 1.2)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text with the float-friendly safe loader (errors become ConfigError)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None


# --------------------------------------------------------------------------------------
# the schema
# --------------------------------------------------------------------------------------

META_OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class ComponentConfig:
    """A registry entry and the keyword arguments of its dataclass.

    Attributes:
      name: the registry key (``LEARNED_OPTIMIZERS``, ``tasks.FAMILIES`` or
        ``meta.ESTIMATORS``).
      options: validated ``(field, value)`` pairs given in the config (sorted; class
        defaults fill the rest).
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: _plain(v) for k, v in self.options}}


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
        _choice(self.name, META_OPTIMIZERS, f"{path}.name", "meta-optimizer")
        _positive(self.learning_rate, f"{path}.learning_rate")
        if self.weight_decay is not None:
            if self.name != "adamw":
                raise ConfigError(f"{path}.weight_decay: only used by adamw (name is {self.name!r})")
            if not self.weight_decay >= 0:
                raise ConfigError(f"{path}.weight_decay: must be >= 0, got {self.weight_decay!r}")
        if self.clip is not None:
            _positive(self.clip, f"{path}.clip")


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
        _positive(self.num_steps, f"{path}.num_steps")
        if self.num_train_tasks is not None:
            _positive(self.num_train_tasks, f"{path}.num_train_tasks")
        if self.checkpoint_every < 0:
            raise ConfigError(f"{path}.checkpoint_every: must be >= 0, got {self.checkpoint_every}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``learned-dco eval``: the trained optimizer against tuned optax baselines.

    Attributes:
      num_tasks: held-out tasks to evaluate on.
      num_steps: inner steps per task.
      baselines: optax baselines (``meta.BASELINES`` names) whose learning rates are tuned.
      lr_grid: learning rates swept per baseline (``null``: ``meta.evaluate.DEFAULT_GRID``,
        1e-4 to 1 with four points per decade).
      seed: seed of the held-out tasks (``null``: the run's ``seed + 1``).
    """

    num_tasks: int = 100
    num_steps: int = 30
    baselines: tuple[str, ...] = ("sgd", "adam", "rmsprop")
    lr_grid: tuple[float, ...] | None = None
    seed: int | None = None

    def validate(self, path: str) -> None:
        from learned_dco.meta.evaluate import BASELINES

        _positive(self.num_tasks, f"{path}.num_tasks")
        _positive(self.num_steps, f"{path}.num_steps")
        for i, name in enumerate(self.baselines):
            _choice(name, tuple(BASELINES), f"{path}.baselines[{i}]", "baseline")
        if len(set(self.baselines)) != len(self.baselines):
            raise ConfigError(f"{path}.baselines: duplicate names in {list(self.baselines)}")
        if self.lr_grid is not None:
            if not self.lr_grid:
                raise ConfigError(f"{path}.lr_grid: must be non-empty (or null for the default grid)")
            for i, lr in enumerate(self.lr_grid):
                _positive(lr, f"{path}.lr_grid[{i}]")


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
                out[f.name] = {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml())
        return path


# Which registry each component section looks names up in (imported lazily).
def _registries() -> dict[str, tuple[str, Mapping[str, type]]]:
    from learned_dco import tasks
    from learned_dco.meta.estimators import ESTIMATORS
    from learned_dco.optimizers import LEARNED_OPTIMIZERS

    return {
        "optimizer": ("learned optimizer", LEARNED_OPTIMIZERS),
        "task": ("task family", tasks.FAMILIES),
        "estimator": ("estimator", ESTIMATORS),
    }


# --------------------------------------------------------------------------------------
# type checking against annotations
# --------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list", tuple: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return str(hint)


def coerce(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against the type annotation ``hint``; return it normalised.

    Ints are accepted (and converted) where floats are expected; lists become tuples.
    Raises :class:`ConfigError` naming ``path`` otherwise.
    """
    if hint is Any:
        return _freeze(value)
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {_describe(value)}")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: report X's own (more precise) error
            return coerce(value, options[0], path)
        for arg in options:
            try:
                return coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(hint)}, got {_describe(value)}")
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(f"{path}: expected {_type_name(hint)}, got {_describe(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(hint)}, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise ConfigError(f"{path}: expected {_type_name(hint)}, got {len(value)} items {_describe(value)}")
        if not args:
            return tuple(_freeze(v) for v in value)
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{path}: expected {_type_name(hint)}, got {_describe(value)}")


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    return value


def _plain(value: Any) -> Any:
    """Tuples back to lists for YAML/JSON."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _init_fields(cls: type) -> dict[str, Any]:
    """``{field name: resolved type hint}`` of a dataclass's ``__init__`` fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _known(names) -> str:
    return ", ".join(names)


def _check_mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"{path}: keys must be strings, got {_describe(k)}")
    return value


def _positive(value: Any, path: str) -> None:
    if not value > 0:
        raise ConfigError(f"{path}: must be > 0, got {value!r}")


def _choice(value: str, choices: Sequence[str], path: str, what: str) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: unknown {what} {value!r} (known: {_known(choices)})")


def parse_dataclass(cls: type, data: Any, path: str) -> Any:
    """Build the frozen dataclass ``cls`` from a mapping, checking keys and types."""
    data = _check_mapping(data, path)
    fields = _init_fields(cls)
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(f"{sub}: unknown key (known: {_known(fields)})")
        hint = fields[key]
        if hint is ComponentConfig:
            kwargs[key] = parse_component(key, value, sub)
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = parse_dataclass(hint, value, sub)
        else:
            kwargs[key] = coerce(value, hint, sub)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{missing[0]}: missing required key")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path)
    return obj


def parse_component(section: str, data: Any, path: str | None = None) -> ComponentConfig:
    """``{name: ..., **fields}`` checked against the registered class's fields; the class is
    instantiated once so its own value checks run now."""
    path = path or section
    what, registry = _registries()[section]
    data = dict(_check_mapping(data, path))
    if "name" not in data:
        raise ConfigError(f"{path}.name: missing required key (known {what}s: {_known(registry)})")
    name = data.pop("name")
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: expected str, got {_describe(name)}")
    _choice(name, tuple(registry), f"{path}.name", what)
    cls = registry[name]
    fields = _init_fields(cls)
    options = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{path}.{key}: unknown key for {what} {name!r} (known: name, {_known(fields)})")
        options[key] = coerce(value, fields[key], f"{path}.{key}")
    try:
        cls(**options)
    except (ValueError, TypeError) as e:
        # Point at the field when the class's message names one ("DCOG.learning_rate ...").
        match = re.search(rf"\b{re.escape(cls.__name__)}\.(\w+)", str(e))
        where = f"{path}.{match.group(1)}" if match and match.group(1) in fields else path
        raise ConfigError(f"{where}: {e}") from None
    return ComponentConfig(name, tuple(sorted(options.items())))


def _cross_checks(cfg: RunConfig) -> None:
    est = cfg.estimator
    pool = cfg.train.num_train_tasks
    if est.name == "full" and pool is not None:
        num_tasks = est.kwargs.get("num_tasks", build_estimator(cfg).num_tasks)
        if num_tasks > pool:
            raise ConfigError(
                f"estimator.num_tasks: a full unroll draws {num_tasks} distinct tasks per meta-step "
                f"from the pool, but train.num_train_tasks is {pool}"
            )


def from_dict(data: Any, source: str = "config") -> RunConfig:
    """Validate a nested mapping (e.g. parsed YAML) into a :class:`RunConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_describe(data)}")
    cfg = parse_dataclass(RunConfig, data, "")
    _cross_checks(cfg)
    return cfg


# --------------------------------------------------------------------------------------
# files and overrides
# --------------------------------------------------------------------------------------


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
    import copy

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
                raise ConfigError(f"{where}: holds {_describe(child)}, cannot set {'.'.join(parts)}")
            node = child
        node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``--set`` style overrides, validate."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_describe(data)}")
    return from_dict(apply_overrides(data, overrides), str(path))


def diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    out: list[str] = []

    def walk(x, y, prefix):
        keys = (x.keys() | y.keys()) if isinstance(x, dict) and isinstance(y, dict) else None
        if keys is None:
            if x != y:
                out.append(prefix)
            return
        for k in sorted(keys):
            walk(x.get(k), y.get(k), f"{prefix}.{k}" if prefix else k)

    walk(a.to_dict(), b.to_dict(), "")
    return out


# --------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------


def build_optimizer(cfg: RunConfig):
    """The learned optimizer (``LEARNED_OPTIMIZERS[name](**fields)``)."""
    return _registries()["optimizer"][1][cfg.optimizer.name](**cfg.optimizer.kwargs)


def build_family(cfg: RunConfig):
    """The task family (``tasks.FAMILIES[name](**fields)``)."""
    return _registries()["task"][1][cfg.task.name](**cfg.task.kwargs)


def build_estimator(cfg: RunConfig):
    """The meta-gradient estimator (``meta.ESTIMATORS[name](**fields)``)."""
    return _registries()["estimator"][1][cfg.estimator.name](**cfg.estimator.kwargs)


def build_meta_optimizer(cfg: RunConfig):
    """The outer optax transformation (optionally preceded by global-norm clipping)."""
    import optax

    from learned_dco.meta.trainer import rmsprop_pytorch

    m = cfg.meta_optimizer
    if m.name == "rmsprop":
        tx = rmsprop_pytorch(m.learning_rate)
    elif m.name == "adam":
        tx = optax.adam(m.learning_rate, b1=0.9, b2=0.999, eps=1e-8)
    elif m.name == "adamw":
        wd = 1e-4 if m.weight_decay is None else m.weight_decay
        tx = optax.adamw(m.learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
    elif m.name == "sgd":
        tx = optax.sgd(m.learning_rate)
    else:  # validated at load time
        raise ConfigError(f"meta_optimizer.name: unknown meta-optimizer {m.name!r}")
    if m.clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(m.clip), tx)
    return tx


# --------------------------------------------------------------------------------------
# random streams
# --------------------------------------------------------------------------------------

STREAMS = {"pool": 0, "trainer": 1, "heldout": 2, "tuning": 3, "rollout": 4}


def stream_key(seed: int, stream: str):
    """``fold_in(PRNGKey(seed), STREAMS[stream])``: one independent key per purpose."""
    import jax

    return jax.random.fold_in(jax.random.PRNGKey(seed), STREAMS[stream])
