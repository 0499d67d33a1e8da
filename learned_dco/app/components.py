r"""Config sections that name a registered class: parsed once into the value they describe.

A *component* section is ``{name: <registry key>, <field>: <value>, ...}`` whose fields are
exactly the ``__init__`` fields of the registered frozen dataclass: the learned optimizer
(:data:`learned_dco.optimizers.LEARNED_OPTIMIZERS`), the task family
(:data:`learned_dco.tasks.FAMILIES`) or the estimator (:data:`learned_dco.meta.ESTIMATORS`).
:func:`parse_component` checks every key and type, then constructs the class once; the
result, a :class:`ComponentConfig`, carries that constructed value, and everything
downstream (builders, memory estimate, resolved config, fingerprint, run info) reads it.

A task *mixture* ``{name: mixture, members: [...], horizons: [...], weights: null}`` is
parsed member by member into a :class:`learned_dco.tasks.Mixture` of the members' values.

Serialising back (:meth:`ComponentConfig.to_dict`, :func:`resolve`) goes from the value:
a field holding a value that YAML spells by name (a meta-loss, a QP solver) is written as
that name when its other fields are their defaults (:func:`spelling`); a value YAML cannot
spell stays implicit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from learned_dco import meta, tasks
from learned_dco.app.coercion import ConfigError, check_mapping, choice, coerce, describe, init_fields, plain, positive
from learned_dco.app.resources import ResourceError, check_construction_size
from learned_dco.optimizers import LEARNED_OPTIMIZERS

__all__ = [
    "REGISTRIES", "MIXTURE", "MIXTURE_KEYS", "ComponentConfig", "parse_component", "parse_mixture", "resolve",
    "spelling", "class_defaults", "is_plain",
]

REGISTRIES: dict[str, tuple[str, Mapping[str, type]]] = {
    "optimizer": ("learned optimizer", LEARNED_OPTIMIZERS),
    "task": ("task family", tasks.FAMILIES),
    "estimator": ("estimator", meta.ESTIMATORS),
}
"""Config section -> (what it names, the registry its ``name`` is looked up in)."""

MIXTURE = "mixture"
"""The task name of a mixture of task families (:class:`learned_dco.tasks.Mixture`)."""

MIXTURE_KEYS = ("members", "horizons", "weights")  # fields of a mixture's task section


@dataclasses.dataclass(frozen=True)
class ComponentConfig:
    """A registry entry, the options given for it and the value they build.

    Attributes:
      name: the registry key (``LEARNED_OPTIMIZERS``, ``tasks.FAMILIES``,
        ``meta.ESTIMATORS``, or ``mixture``).
      options: validated ``(field, value)`` pairs as given (sorted); a mixture's
        ``members`` are components themselves.
      value: the constructed, validated object (a learned optimizer, a task family or
        :class:`~learned_dco.tasks.Mixture`, an estimator); not part of equality or hash
        (the options determine it).
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    value: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def is_mixture(self) -> bool:
        return self.name == MIXTURE

    @property
    def members(self) -> tuple[ComponentConfig, ...]:
        """A mixture's member sections (``()`` for a single family)."""
        return self.kwargs["members"] if self.is_mixture else ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: _plain_option(v) for k, v in self.options}}


def _plain_option(value: Any) -> Any:
    """Plain YAML values: nested components (a mixture's members) become mappings, tuples lists."""
    if isinstance(value, ComponentConfig):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain_option(v) for v in value]
    return value


# --------------------------------------------------------------------------------------
# values back to YAML
# --------------------------------------------------------------------------------------

_PLAIN = (bool, int, float, str, type(None))


def is_plain(value: Any) -> bool:
    """Whether YAML spells ``value`` as it is (scalars and tuples of them)."""
    if isinstance(value, tuple):
        return all(is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def spelling(value: Any) -> Any:
    """``value`` as YAML writes it: a named choice (a frozen dataclass with a ``name``,
    e.g. a meta-loss or a QP solver) whose every field is its default is its name; a plain
    value is itself; anything else is ``None`` (YAML cannot spell it)."""
    if is_plain(value):
        return value
    name = getattr(value, "name", None)
    if dataclasses.is_dataclass(value) and isinstance(name, str):
        at_defaults = all(
            f.default is not dataclasses.MISSING and getattr(value, f.name) == f.default
            for f in dataclasses.fields(value)
            if f.init
        )
        if at_defaults:
            return name
    return None


def resolve(comp: ComponentConfig) -> ComponentConfig:
    """``comp`` with every ``__init__`` field of its value written out (those YAML can
    spell); a mixture resolves each member."""
    if comp.is_mixture:
        given = comp.kwargs
        options = {
            "members": tuple(resolve(m) for m in given["members"]),
            "horizons": given["horizons"],
            "weights": given.get("weights"),
        }
        return ComponentConfig(comp.name, tuple(sorted(options.items())), comp.value)
    options = comp.kwargs
    for f in dataclasses.fields(comp.value):
        if f.init and f.name not in options:
            value = spelling(getattr(comp.value, f.name))
            if value is not None or getattr(comp.value, f.name) is None:
                options[f.name] = value
    return ComponentConfig(comp.name, tuple(sorted(options.items())), comp.value)


def class_defaults(cls: type, prefix: str) -> dict[str, Any]:
    """``{prefix.field: default}`` of the plain-valued ``__init__`` defaults of ``cls``."""
    return {
        f"{prefix}.{g.name}": plain(g.default)
        for g in dataclasses.fields(cls)
        if g.init and g.default is not dataclasses.MISSING and is_plain(g.default)
    }


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------


def parse_component(section: str, data: Any, path: str | None = None, *, member: bool = False) -> ComponentConfig:
    """``{name: ..., **fields}`` checked against the registered class's fields and built
    once (its own value checks run now; a failing check is reported under the field it
    names). ``task: {name: mixture, ...}`` is parsed by :func:`parse_mixture` (``member``:
    parsing a mixture's member, which cannot be a mixture itself)."""
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
        check_construction_size(cls, options, path)
    try:
        value = cls(**options)
    except MemoryError as e:  # a family that allocates its data when constructed
        raise ResourceError(f"{path}: building {what} {name!r} ran out of memory ({e})") from None
    except (ValueError, TypeError, OverflowError) as e:
        field = getattr(e, "field", None)
        where = f"{path}.{field}" if field in fields else path
        raise ConfigError(f"{where}: {e}") from None
    return ComponentConfig(name, tuple(sorted(options.items())), value)


def parse_mixture(data: Mapping[str, Any], path: str = "task") -> ComponentConfig:
    """The fields of ``task: {name: mixture, ...}`` (``name`` already removed): ``members``
    (non-empty list of task sections, each checked by :func:`parse_component`),
    ``horizons`` (non-empty list of positive ints) and ``weights`` (``null`` or one
    non-negative number per member with a positive sum). The value is the
    :class:`~learned_dco.tasks.Mixture` of the members' values."""
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
    try:
        value = tasks.Mixture(members=tuple(m.value for m in members), weights=weights, horizons=horizons)
    except ValueError as e:  # the Mixture's own checks (ValidationError is a ValueError)
        raise ConfigError(f"{path}: {e}") from None
    options = {"members": members, "horizons": horizons, "weights": weights}
    return ComponentConfig(MIXTURE, tuple(sorted(options.items())), value)
