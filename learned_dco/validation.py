"""Input validation shared by the whole package: one place, one error style.

Every check raises :class:`ValidationError` (a ``ValueError``, so ``except ValueError``
keeps working) whose message names the owner and the offending setting, e.g.
``"DigitsMLP.hidden must be a non-empty tuple of positive ints, got (0,)"``. Two kinds of
checks live here:

* *value checks* ``(owner, name, value)``: :func:`positive_int`, :func:`positive_number`,
  :func:`number_in`, :func:`one_of`, :func:`pair_range`; each returns the normalised value
  (an ``int``, a ``float``, a tuple) so frozen dataclasses can store it back;
* *field checks* on a frozen dataclass ``obj`` (owner = ``type(obj).__name__``):
  :func:`check_fields`, :func:`check_range`, :func:`check_choice`, :func:`check_positive`;
* *array checks* on meta-parameters: :func:`is_concrete` and :func:`check_values`, which
  inspect a pytree only when it holds values (inside ``jit``/``vmap``/``grad`` the learned
  optimizers' parameterisations guarantee validity by construction).

Nothing here imports from the rest of the package (it sits beside ``types``, at the bottom
of the import graph), so any layer may use it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import jax
import numpy as np

__all__ = [
    "ValidationError",
    "check_choice",
    "check_fields",
    "check_positive",
    "check_range",
    "check_values",
    "finite_number",
    "is_concrete",
    "number_in",
    "one_of",
    "pair_range",
    "positive_int",
    "positive_ints",
    "positive_number",
    "set_field",
]


class ValidationError(ValueError):
    """Bad input: the message names the owner, the setting, the rule and the value.

    ``field`` is the name of the offending setting when one setting is at fault (the
    checks below set it), so a caller can point at it (a config's dotted key) without
    reading the message; ``None`` when the fault is not one field's.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )


# --- value checks -------------------------------------------------------------------------


def positive_int(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool or float) ``> 0`` (``>= 0``)."""
    low = 0 if allow_zero else 1
    if not _is_int(value) or value < low:
        raise ValidationError(f"{owner}.{name} must be an integer >= {low}, got {value!r}", field=name)
    return int(value)


def positive_number(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite real number ``> 0`` (``>= 0``)."""
    ok = _is_real(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        rule = ">= 0" if allow_zero else "> 0"
        raise ValidationError(f"{owner}.{name} must be a finite number {rule}, got {value!r}", field=name)
    return float(value)


def finite_number(owner: str, name: str, value: Any) -> float:
    """``value`` as a ``float`` if it is a finite real number."""
    if not _is_real(value):
        raise ValidationError(f"{owner}.{name} must be a finite number, got {value!r}", field=name)
    return float(value)


def positive_ints(owner: str, name: str, value: Any) -> tuple[int, ...]:
    """``value`` as a non-empty tuple of positive ints (layer widths, shapes)."""
    try:
        items = tuple(value)
    except TypeError:
        raise ValidationError(f"{owner}.{name} must be a sequence of positive integers, got {value!r}", field=name) from None
    if not items or not all(_is_int(v) and v > 0 for v in items):
        raise ValidationError(f"{owner}.{name} must be non-empty positive integers, got {value!r}", field=name)
    return tuple(int(v) for v in items)


def number_in(
    owner: str,
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    closed: tuple[bool, bool] = (True, True),
) -> float:
    """``value`` as a ``float`` if it lies in the interval from ``low`` to ``high``.

    ``closed`` says whether each end belongs to the interval: ``(True, False)`` is
    ``[low, high)``.
    """
    ok = _is_real(value)
    if ok:
        ok = (value >= low if closed[0] else value > low) and (value <= high if closed[1] else value < high)
    if not ok:
        interval = f"{'[' if closed[0] else '('}{low}, {high}{']' if closed[1] else ')'}"
        raise ValidationError(f"{owner}.{name} must be a number in {interval}, got {value!r}", field=name)
    return float(value)


def one_of(owner: str, name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` unchanged if it is one of ``choices``; the error lists them."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set-like container
        ok = False
    if not ok:
        raise ValidationError(f"{owner}.{name} must be one of {choices}, got {value!r}", field=name)
    return value


def pair_range(owner: str, name: str, value: Any, *, lower: float | None = None) -> tuple[float, float]:
    """``(low, high)`` as floats if ``value`` is two numbers with ``lower <= low <= high``.

    YAML configs give lists; a frozen dataclass passed to ``jax.jit`` as a static argument
    must hold hashable values, so callers store the returned tuple back.
    """
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValidationError(f"{owner}.{name} must be a pair (low, high), got {value!r}", field=name) from None
    if not low <= high:
        raise ValidationError(f"{owner}.{name} must have low <= high, got {value!r}", field=name)
    if lower is not None and not low >= lower:
        raise ValidationError(f"{owner}.{name} must lie in [{lower}, inf), got {value!r}", field=name)
    return low, high


# --- field checks on frozen dataclasses ----------------------------------------------------


def set_field(obj: Any, field: str, value: Any) -> None:
    """Store a normalised value on a frozen dataclass (from its ``__post_init__``)."""
    object.__setattr__(obj, field, value)


def check_fields(
    obj: Any,
    positive: tuple[str, ...] = (),
    nonnegative: tuple[str, ...] = (),
    integer: tuple[str, ...] = (),
) -> None:
    """Raise :class:`ValidationError` naming the first field of ``obj`` that breaks its rule.

    ``integer`` fields must be Python/NumPy integers (not bools, not floats): they are array
    sizes, and a float would only fail later, deep inside ``jax.random``. ``positive`` and
    ``nonnegative`` fields are compared with ``> 0`` / ``>= 0`` (NaN fails both).
    """
    name = type(obj).__name__
    for field in integer:
        value = getattr(obj, field)
        if not _is_int(value):
            raise ValidationError(f"{name}.{field} must be an integer, got {value!r}", field=field)
    for field in positive:
        value = getattr(obj, field)
        if not value > 0:
            raise ValidationError(f"{name}.{field} must be > 0, got {value!r}", field=field)
    for field in nonnegative:
        value = getattr(obj, field)
        if not value >= 0:
            raise ValidationError(f"{name}.{field} must be >= 0, got {value!r}", field=field)


def check_positive(obj: Any, field: str, *, allow_zero: bool = False) -> None:
    """:func:`positive_number` on ``obj.field`` (a finite real, ``> 0`` or ``>= 0``)."""
    positive_number(type(obj).__name__, field, getattr(obj, field), allow_zero=allow_zero)


def check_range(obj: Any, field: str, lower: float | None = None) -> None:
    """Validate a ``(low, high)`` field with :func:`pair_range` and store it back as a tuple."""
    set_field(obj, field, pair_range(type(obj).__name__, field, getattr(obj, field), lower=lower))


def check_choice(obj: Any, field: str, choices: tuple[Any, ...]) -> None:
    """Raise :class:`ValidationError` naming ``field`` unless its value is one of ``choices``."""
    one_of(type(obj).__name__, field, getattr(obj, field), choices)


# --- array checks -----------------------------------------------------------------------


def is_concrete(x: Any) -> bool:
    """True when every leaf of ``x`` holds a value (not a tracer inside jit/vmap/grad)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def check_values(owner: str, name: str, value: Any, ok: Callable[[np.ndarray], np.ndarray], rule: str) -> None:
    """Raise :class:`ValidationError` if a *concrete* pytree has a non-finite entry or breaks ``rule``.

    ``ok`` maps a leaf (as a NumPy array) to a boolean array. Traced values cannot be
    inspected and pass unchecked.
    """
    if not is_concrete(value):
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
        arr = np.asarray(leaf)
        if not np.all(np.isfinite(arr)):
            raise ValidationError(f"{owner}: {name}{jax.tree_util.keystr(path)} has non-finite entries")
        if not np.all(ok(arr)):
            raise ValidationError(f"{owner}: {name}{jax.tree_util.keystr(path)} must be {rule}")
