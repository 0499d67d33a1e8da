"""Atomic checkpoints and meta-parameter files (flax msgpack; never pickle).

A checkpoint is one msgpack file written to a temporary name in the same directory and
moved into place with ``os.replace``, so a crash mid-write leaves the previous checkpoint
intact. Restoring needs a *template* of the same structure (the freshly initialised state),
which gives back NamedTuples, optax states and lists exactly as they were.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

CHECKPOINT = "checkpoint.msgpack"
META = "meta.msgpack"


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save(path: str | os.PathLike, tree: Any) -> Path:
    """Serialise a pytree of arrays (fetched to host) atomically."""
    host = jax.tree.map(np.asarray, jax.device_get(tree))
    return atomic_write(path, serialization.to_bytes(host))


def restore(path: str | os.PathLike, template: Any) -> Any:
    """Read a pytree saved by :func:`save` into the structure of ``template``."""
    data = Path(path).read_bytes()
    return serialization.from_bytes(template, data)


def save_meta(path: str | os.PathLike, meta: Any, info: dict | None = None) -> Path:
    """Save trained meta-parameters (plus a JSON side file describing them)."""
    out = save(path, meta)
    if info is not None:
        atomic_write(Path(path).with_suffix(".json"), json.dumps(info, indent=2, default=str).encode())
    return out


def load_meta(path: str | os.PathLike, template: Any | None = None) -> Any:
    """Load meta-parameters saved by :func:`save_meta`.

    With ``template`` (e.g. ``lopt.init(key, params)`` for the same model) the exact
    structure comes back, ready for ``lopt.opt_fn``; without it, nested dicts of arrays.
    """
    data = Path(path).read_bytes()
    if template is not None:
        return serialization.from_bytes(template, data)
    return serialization.msgpack_restore(data)
