"""The one atomic file writer, the one JSON writer and the one environment probe of the project.

Atomic write: the bytes go to a temporary file in the destination's directory, are flushed
and ``fsync``-ed, and the temporary file is moved over the destination with
:func:`os.replace` (atomic on POSIX within one file system). A crash at any moment
therefore leaves either the complete old file or the complete new one, never a torn
mixture; a failed write removes its temporary file.

JSON: every JSON file the project writes goes through :func:`to_json` (by way of
:func:`dumps` or :func:`atomic_write_json`), which makes plain JSON data of mappings,
sequences, NumPy arrays and scalars and JAX arrays, with one rule for the numbers JSON has no
spelling for: a non-finite float is written as the string ``"inf"``, ``"-inf"`` or ``"nan"``
(:data:`NON_FINITE`). The files stay strict JSON, which side a divergence went is kept, and
``float()`` reads each string back; :func:`json_number` also reads the ``null`` that earlier
files wrote for a non-finite number.

``environment()`` records what a result was computed with: package versions, Python, the
JAX backend and its devices, the host and ``XLA_FLAGS``. Run directories, evaluation and
study results, the held-out benchmark and ``benchmarks/`` record it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Mapping

__all__ = ["NON_FINITE", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "dumps", "environment",
           "json_number", "remove_temporaries", "to_json"]

NON_FINITE = ("inf", "-inf", "nan")
"""How :func:`to_json` spells ``float("inf")``, ``-inf`` and ``nan``."""


_TMP = ".tmp-"  # temporary files are ".<name>.tmp-<pid>" next to their destination


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + ``os.replace``).

    Creates missing parent directories. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data: mappings as objects with string keys, tuples, lists and
    arrays as lists, NumPy and JAX scalars as Python numbers, a non-finite float as one of
    :data:`NON_FINITE`; everything else unchanged (``json`` refuses what it cannot write)."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # NumPy / JAX arrays and scalars
        return to_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def json_number(value: Any) -> float:
    """A number as :func:`to_json` wrote it, read back as a float: a number, one of
    :data:`NON_FINITE`, or ``null`` (older files' spelling of a non-finite number: ``nan``)."""
    if value is None:
        return math.nan
    if isinstance(value, str) and value not in NON_FINITE:
        raise ValueError(f"not a JSON number: {value!r} (expected a number, null or one of {NON_FINITE})")
    return float(value)


def dumps(value: Any, *, indent: int | None = 1, sort_keys: bool = False) -> str:
    """Strict JSON text (no ``NaN``/``Infinity`` literals) of :func:`to_json` of ``value``."""
    return json.dumps(to_json(value), indent=indent, sort_keys=sort_keys, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """:func:`atomic_write_text` of :func:`dumps` of ``value`` (the project's one JSON writer)."""
    return atomic_write_text(path, dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers killed mid-write (``kill -9``, power loss) left
    in ``directory``; returns them. Call it only where no other writer is active (e.g. when a
    run is resumed)."""
    removed = []
    for p in Path(directory).glob(f".*{_TMP}*"):
        if p.is_file() and p.name.rpartition(_TMP)[2].isdigit():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def environment(*, flat: bool = False) -> dict[str, Any]:
    """Versions and device of this process: ``{"versions": {...}, "device": {...}}``.

    ``versions`` holds learned_dco, jax, jaxlib, optax, flax, jaxopt, chex, numpy and Python;
    ``device`` the JAX backend, the device kind, count and names, the host's CPU count,
    platform, machine and processor, and ``XLA_FLAGS``. ``flat=True`` merges the two into one
    mapping (the benchmarks' layout). Imports JAX (initialising its backend).
    """
    from importlib import metadata

    import jax

    versions: dict[str, Any] = {"python": sys.version.split()[0]}
    for dist in ("learned-dco", "jax", "jaxlib", "optax", "flax", "jaxopt", "chex", "numpy"):
        try:
            versions[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist.replace("-", "_")] = None
    try:
        import learned_dco

        versions["learned_dco"] = getattr(learned_dco, "__version__", versions["learned_dco"])
    except ImportError:  # pragma: no cover
        pass
    devices = jax.devices()
    device = {
        "backend": jax.default_backend(),
        "kind": devices[0].device_kind if devices else None,
        "count": len(devices),
        "devices": [str(d) for d in devices],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    return {**versions, **device} if flat else {"versions": versions, "device": device}
