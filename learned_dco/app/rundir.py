"""The files of a run directory and the error for one that cannot be used as asked.

:mod:`learned_dco.app.runs` writes and reads run directories (its docstring describes every
file); :mod:`learned_dco.app.observe` reads their metrics to plot them. Both take the names
from here.
"""

from __future__ import annotations

CONFIG_FILE = "config.yaml"
"""The resolved configuration (every default written out)."""

RUN_INFO = "run.json"
"""Fingerprint of the config, the defaults in force, versions and device."""

METRICS = "metrics.jsonl"
"""One JSON object per meta-step, appended line by line."""


class RunError(Exception):
    """A run directory that cannot be used as asked (missing files, corrupt metrics)."""


__all__ = ["CONFIG_FILE", "METRICS", "RUN_INFO", "RunError"]
