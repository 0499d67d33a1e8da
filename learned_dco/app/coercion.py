r"""YAML -> typed values: a small, strict coercion engine driven by type annotations.

:func:`coerce` checks one value against one annotation; :func:`parse_dataclass` builds a
frozen dataclass from a mapping, field by field, so every error names the dotted key at
fault (``estimator.horizon: expected int, got str 'ten'``). Rules:

* ``bool`` accepts only ``true``/``false``; ``int`` rejects bools and floats and must fit in
  a signed 32-bit integer (JAX's default integer); ``float`` accepts ints and must be
  finite (``.nan``/``.inf`` are named errors);
* ``X | None`` accepts ``null``; ``Literal[...]`` accepts exactly its members;
* ``tuple[T, ...]`` and ``tuple[A, B]`` accept YAML lists and store tuples (configs stay
  hashable).

The loader (:func:`parse_yaml`) is PyYAML's safe loader with YAML 1.2 floats (``1e-3`` is
a float, not the string YAML 1.1 makes of it). Nothing here knows about learned
optimizers: the schema lives in :mod:`learned_dco.app.config`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Callable, Mapping, Sequence

import yaml

__all__ = [
    "ConfigError", "parse_yaml", "coerce", "parse_dataclass", "describe", "check_mapping", "positive", "choice",
    "freeze", "plain", "init_fields", "INT_RANGE",
]

INT_RANGE = (-(2**31), 2**31 - 1)  # int32: what JAX uses for integer options by default


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
    """Parse YAML text with the float-friendly safe loader (every failure is a ConfigError)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(e).split())}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # e.g. a timestamp out of range
        raise ConfigError(f"{source}: invalid YAML value: {e}") from None


def describe(value: Any) -> str:
    """``"int 3"``, ``"str 'ten'"``, ``"null"``: a value and its YAML kind for messages."""
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
        return freeze(value)
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {describe(value)}")
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
        raise ConfigError(f"{path}: expected {_type_name(hint)}, got {describe(value)}")
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(f"{path}: expected {_type_name(hint)}, got {describe(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(hint)}, got {describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise ConfigError(f"{path}: expected {_type_name(hint)}, got {len(value)} items {describe(value)}")
        if not args:
            return tuple(freeze(v) for v in value)
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT_RANGE[0] <= value <= INT_RANGE[1]:
                raise ConfigError(f"{path}: out of range: {value} does not fit in a 32-bit integer")
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                x = float(value)
            except OverflowError:
                raise ConfigError(f"{path}: out of range: {describe(value)} does not fit in a float") from None
            if not math.isfinite(x):
                raise ConfigError(f"{path}: must be a finite number, got {value!r}")
            return x
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{path}: expected {_type_name(hint)}, got {describe(value)}")


def freeze(value: Any) -> Any:
    """Lists -> tuples and mappings -> tuples of pairs, recursively (hashable)."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, freeze(v)) for k, v in value.items())
    return value


def plain(value: Any) -> Any:
    """Tuples back to lists, recursively, for YAML/JSON."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def init_fields(cls: type) -> dict[str, Any]:
    """``{field name: resolved type hint}`` of a dataclass's ``__init__`` fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def check_mapping(value: Any, path: str) -> Mapping[str, Any]:
    """``value`` as a mapping with string keys (``null`` -> ``{}``), else a ConfigError."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {describe(value)}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"{path or 'config'}: keys must be strings, got {describe(k)}")
    return value


def positive(value: Any, path: str) -> None:
    if not value > 0:
        raise ConfigError(f"{path}: must be > 0, got {value!r}")


def choice(value: str, choices: Sequence[str], path: str, what: str) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: unknown {what} {value!r} (known: {', '.join(choices)})")


FieldParser = Callable[[str, Any, str], Any]  # (field name, raw value, dotted path) -> value


def parse_dataclass(cls: type, data: Any, path: str, parsers: Mapping[Any, FieldParser] | None = None) -> Any:
    """Build the frozen dataclass ``cls`` from a mapping, checking keys and types.

    ``parsers`` maps a field *type* to a custom parser (e.g. registry components); nested
    dataclass fields are parsed recursively; every other field goes through :func:`coerce`.
    After construction, ``obj.validate(path)`` runs if the class defines it.
    """
    parsers = parsers or {}
    data = check_mapping(data, path)
    fields = init_fields(cls)
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(f"{sub}: unknown key (known: {', '.join(fields)})")
        hint = fields[key]
        if hint in parsers:
            kwargs[key] = parsers[hint](key, value, sub)
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = parse_dataclass(hint, value, sub, parsers)
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
