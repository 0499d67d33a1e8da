r"""``--set KEY=VALUE`` overrides of a parsed YAML mapping, by dotted key.

``"task.members[1].hidden=[64]"`` addresses a list element by its index; the value is
parsed as YAML (:func:`learned_dco.app.coercion.parse_yaml`). Overrides act on the raw
mapping, before it is validated into a run config.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping, Sequence

from learned_dco.app.coercion import ConfigError, describe, parse_yaml

__all__ = ["parse_override", "apply_overrides", "dotted"]

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


def dotted(parts: Sequence[str | int]) -> str:
    """``["task", "members", 1, "hidden"]`` -> ``"task.members[1].hidden"``."""
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
                    raise ConfigError(f"{dotted(parts[:i])}: holds {describe(node)}, not a list; cannot set {dotted(parts)}")
                if part >= len(node):
                    raise ConfigError(f"{dotted(parts[:i + 1])}: index out of range (the list has {len(node)} items)")
            elif not isinstance(node, dict):
                raise ConfigError(f"{dotted(parts[:i])}: holds {describe(node)}, cannot set {dotted(parts)}")
            if last:
                node[part] = value
                break
            child = node[part] if isinstance(part, int) else node.get(part)
            if child is None and not isinstance(parts[i + 1], int):
                child = node[part] = {}
            node = child
    return out
