"""Optional dependencies (pip extras), imported where they are used.

The core install (``pip install learned-dco``) trains, evaluates and loads optimizers; a
feature that needs more names its extra when it is asked for without it, in one line
(:class:`MissingExtra`): figures need ``matplotlib`` from ``learned-dco[plots]``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message is one line naming the pip
    extra that installs it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` (``purpose`` says what needs it)."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the module is there but one of its own dependencies is not
        raise MissingExtra(
            f"{purpose} need {top}, which is not installed: pip install 'learned-dco[{extra}]'", name=top
        ) from None


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are written to
    files), or :class:`MissingExtra` naming the ``plots`` extra."""
    matplotlib = require("matplotlib", "plots", "figures")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
