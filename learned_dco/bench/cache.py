"""The on-disk cache of baseline rows (tuned and untuned), so benchmarking a new optimizer
does not re-tune.

One JSON file per (problem, row) under the cache directory (``LEARNED_DCO_BENCH_CACHE``, else
``$XDG_CACHE_HOME/learned_dco/bench``, else ``~/.cache/learned_dco/bench``), named by a
SHA-256 key over the problem's fingerprint (data, model, loss, budget, batch: see
:attr:`learned_dco.bench.problems.Problem.fingerprint`), the row's definition, the learning
rate grid, the tuning and evaluation seeds, the long-run factor and the versions of this
library, JAX and optax. Any change to one of them is a different key: a stale entry is never
read. Plain JSON (never pickle); non-finite floats are stored as the strings ``"inf"``,
``"-inf"``, ``"nan"``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from learned_dco.io import NON_FINITE, atomic_write_json

CACHE_ENV = "LEARNED_DCO_BENCH_CACHE"


def default_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "learned_dco" / "bench"


def key(parts: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def decode(value: Any) -> Any:
    """The numbers of a value written with :func:`learned_dco.io.to_json`: its non-finite
    strings read back as floats."""
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, str) and value in NON_FINITE:
        return float(value)
    return value


class Cache:
    """``get(problem, row, key)`` / ``put(problem, row, key, value)``; ``directory=None`` disables it."""

    def __init__(self, directory: str | Path | None):
        self.directory = None if directory is None else Path(directory)
        self.hits = 0
        self.misses = 0

    def _path(self, problem: str, row: str, k: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in row)
        return self.directory / problem / f"{safe}-{k[:20]}.json"

    def get(self, problem: str, row: str, k: str) -> dict | None:
        if self.directory is None:
            return None
        path = self._path(problem, row, k)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        if data.get("key") != k:
            self.misses += 1
            return None
        self.hits += 1
        return decode(data["value"])

    def put(self, problem: str, row: str, k: str, value: Mapping[str, Any]) -> None:
        if self.directory is None:
            return
        path = self._path(problem, row, k)
        atomic_write_json(path, {"key": k, "value": dict(value)}, indent=None)


__all__ = ["CACHE_ENV", "Cache", "decode", "default_dir", "key"]
