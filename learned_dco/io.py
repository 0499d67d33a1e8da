"""The one atomic file writer and the one environment capture of the project.

Atomic write: the bytes go to a temporary file in the destination's directory, are flushed
and ``fsync``-ed, and the temporary file is moved over the destination with
:func:`os.replace` (atomic on POSIX within one file system). A crash at any moment
therefore leaves either the complete old file or the complete new one, never a torn
mixture; a failed write removes its temporary file.

``environment()`` records what a result was computed with: package versions, Python, the
JAX backend and its devices. Every ``results.json``/checkpoint side file uses it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "remove_temporaries", "environment"]


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


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, allow_nan: bool = False) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(obj)``.

    Non-finite floats are refused by default (``allow_nan=False``: JSON has no NaN); convert
    them to ``null`` first or pass ``allow_nan=True`` deliberately.
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n")


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


def environment() -> dict[str, Any]:
    """Versions and device of this process: ``{"versions": {...}, "device": {...}}``.

    ``versions`` holds learned_dco, jax, jaxlib, optax, flax, jaxopt, numpy and Python;
    ``device`` the JAX backend, the device kind and count, and the host platform. Imports
    JAX (initialising its backend).
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
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    return {"versions": versions, "device": device}
