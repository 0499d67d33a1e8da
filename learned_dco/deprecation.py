"""Old public names kept for one release: each access warns and hands over the new value."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping


def resolve(owner: str, name: str, renamed: Mapping[str, tuple[str, Callable[[], Any]]]) -> Any:
    """For a module's ``__getattr__``: the value of deprecated ``owner.name`` from ``renamed``
    (old name -> (the new name to use, a function returning its value)), after a
    ``DeprecationWarning`` naming the new one; ``AttributeError`` for any other name."""
    if name not in renamed:
        raise AttributeError(f"module {owner!r} has no attribute {name!r}")
    new, value = renamed[name]
    warnings.warn(f"{owner}.{name} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=3)
    return value()


__all__ = ["resolve"]
