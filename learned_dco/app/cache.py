"""The persistent compilation cache on disk: its size limit, its size, clearing it.

The CLI keeps two kinds of entries in one directory (:func:`learned_dco.app.cli.compile_cache_dir`):

* XLA's compiled programs, written by JAX (files ``<key>-cache``, with ``<key>-atime``
  access stamps when a size limit is set); JAX evicts the least recently used ones once
  they exceed ``jax_compilation_cache_max_size``;
* the stored meta-steps of :mod:`learned_dco.app.stepcache` (``learned_dco-steps/*.jaxexport``),
  pruned here, least recently used first.

The limit (:data:`DEFAULT_MAX_SIZE`; ``--compile-cache-max-size`` or
``$LEARNED_DCO_CACHE_MAX_SIZE``, e.g. ``500M``, ``2G``, ``unlimited``) is split between them:
:data:`XLA_SHARE` of it for XLA's entries, the rest for the stored steps, so the directory
stays under the limit in all.

:func:`clear` removes only these entries, never other files a user keeps in the directory.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

MAX_SIZE_ENV = "LEARNED_DCO_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 2 * 1024**3
"""2 GiB: a few hundred configs' programs on a CPU (entries are ~0.1-5 MB)."""
XLA_SHARE = 0.8
UNLIMITED = -1
STEPS_SUBDIR = "learned_dco-steps"  # app.stepcache.SUBDIR (not imported: that module imports jax)
_ENTRY_SUFFIXES = ("-cache", "-atime")

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_size(text: str | int, where: str = "cache size") -> int:
    """Bytes from ``"123"``, ``"500M"``, ``"2G"``, ``"1.5GiB"`` (powers of 1024) or
    ``"unlimited"``/``"-1"`` (:data:`UNLIMITED`); ``ValueError`` naming ``where`` otherwise."""
    s = str(text).strip().lower()
    if s in ("unlimited", "none", "-1"):
        return UNLIMITED
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", s)
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"{where}: expected a size such as 500M, 2G or unlimited, got {text!r}")
    size = int(float(m.group(1)) * _UNITS[m.group(2)])
    if size <= 0:
        raise ValueError(f"{where}: must be > 0 (turn the cache off with --no-compile-cache), got {text!r}")
    return size


def max_size(flag: str | None = None) -> int:
    """The limit in force: ``flag`` (the command-line value), else ``$LEARNED_DCO_CACHE_MAX_SIZE``,
    else :data:`DEFAULT_MAX_SIZE`."""
    if flag is not None:
        return parse_size(flag, "--compile-cache-max-size")
    if os.environ.get(MAX_SIZE_ENV, "").strip():
        return parse_size(os.environ[MAX_SIZE_ENV], MAX_SIZE_ENV)
    return DEFAULT_MAX_SIZE


def split(limit: int) -> tuple[int, int]:
    """``(XLA's budget, the stored steps' budget)`` of a limit (both :data:`UNLIMITED` for it)."""
    if limit == UNLIMITED:
        return UNLIMITED, UNLIMITED
    xla = max(1, int(limit * XLA_SHARE))
    return xla, max(1, limit - xla)


def steps_budget(xla_limit: int) -> int:
    """The stored steps' budget given XLA's (``jax_compilation_cache_max_size``), the inverse of
    :func:`split`: the steps read their share from the one setting JAX holds."""
    if xla_limit is None or xla_limit < 0:
        return UNLIMITED
    return max(1, round(xla_limit * (1 - XLA_SHARE) / XLA_SHARE))


def entries(directory: str | Path) -> list[Path]:
    """The cache's files in ``directory``: XLA's entries and the stored meta-steps."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_file() and p.name.endswith(_ENTRY_SUFFIXES)]
    steps = directory / STEPS_SUBDIR
    if steps.is_dir():
        found += [p for p in steps.rglob("*") if p.is_file()]
    return found


def size(directory: str | Path) -> tuple[int, int]:
    """``(number of entries, bytes)`` of the cache in ``directory`` (XLA's access stamps count
    in the bytes, not as entries)."""
    files = entries(directory)
    return sum(not p.name.endswith("-atime") for p in files), sum(p.stat().st_size for p in files)


def clear(directory: str | Path) -> tuple[int, int]:
    """Delete the cache's entries in ``directory``; returns ``(entries, bytes)`` removed."""
    directory = Path(directory)
    count, total = size(directory)
    for p in entries(directory):
        if p.parent == directory:
            p.unlink(missing_ok=True)
    shutil.rmtree(directory / STEPS_SUBDIR, ignore_errors=True)
    return count, total


def prune(directory: str | Path, limit: int) -> list[Path]:
    """Delete the least recently used files of ``directory`` (by modification time, which a
    reader refreshes) until they total at most ``limit`` bytes; returns what was deleted."""
    if limit == UNLIMITED:
        return []
    directory = Path(directory)
    if not directory.is_dir():
        return []
    files = sorted((p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    removed = []
    for p in files:
        if total <= limit:
            break
        total -= p.stat().st_size
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def stamp_unstamped(directory: str | Path) -> int:
    """Give every XLA entry (``<key>-cache``) that has no ``<key>-atime`` an access stamp of 0
    (oldest: evicted first); returns how many. Entries written while the cache had no size
    limit carry no stamp, and JAX's size-limited cache fails every later write on such a
    directory (its eviction reads every entry's stamp) with a FileNotFoundError warning."""
    directory = Path(directory)
    count = 0
    for entry in directory.glob("*-cache"):
        stamp = directory / (entry.name[: -len("-cache")] + "-atime")
        if entry.is_file() and not stamp.exists():
            try:
                stamp.write_bytes((0).to_bytes(8, "little"))  # JAX's format: ns since the epoch, little-endian
                count += 1
            except OSError:
                pass  # another process is rewriting the directory: its own stamps will do
    return count


def human(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    if n == UNLIMITED:
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
