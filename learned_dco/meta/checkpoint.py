"""Checkpoints and meta-parameter files (flax msgpack; never pickle), crash-safe.

A checkpoint file is one msgpack mapping ``{"format": 2, "fingerprint": str | None,
"spec": [[leaf path, shape, dtype], ...], "state": <flax state dict>}`` written atomically
(:func:`learned_dco.io.atomic_write_bytes`). :func:`save_generation` keeps the previous
checkpoint as ``<name>.prev`` before writing the new one, and :func:`restore_latest` falls
back to it (with a warning) when the newest is missing or unreadable, e.g. truncated by a
full disk. Restoring needs a *template* of the same structure (the freshly initialised
state), which gives back NamedTuples, optax states and lists exactly as they were; every
leaf's shape and dtype is checked against the template, and the fingerprint (e.g. of the
config the state was trained under) against the caller's, and the first mismatch is named.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from learned_dco.io import atomic_write_bytes, atomic_write_json

CHECKPOINT = "checkpoint.msgpack"
META = "meta.msgpack"
FORMAT = 2


class CheckpointError(Exception):
    """An unreadable checkpoint, or one that does not belong to the state restoring it."""


def _keystr(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def spec(tree: Any) -> list[list]:
    """``[[leaf path, shape, dtype], ...]`` of a pytree of arrays."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [[_keystr(p), list(np.shape(x)), str(np.asarray(x).dtype)] for p, x in leaves]


def _host(tree: Any) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(tree))


def to_bytes(tree: Any, fingerprint: str | None = None) -> bytes:
    """The checkpoint encoding of ``tree`` (see the module docstring)."""
    host = _host(tree)
    return serialization.msgpack_serialize(
        {"format": FORMAT, "fingerprint": fingerprint, "spec": spec(host), "state": serialization.to_state_dict(host)}
    )


def save(path: str | os.PathLike, tree: Any, fingerprint: str | None = None) -> Path:
    """Serialise a pytree of arrays (fetched to host) atomically."""
    return atomic_write_bytes(path, to_bytes(tree, fingerprint))


def _decode(data: bytes, where: str) -> dict:
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated types for torn input
        raise CheckpointError(f"{where}: unreadable ({type(e).__name__}: {e}); the file is truncated or corrupt") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: not a checkpoint (top level is {type(raw).__name__})")
    if raw.get("format") == FORMAT and "state" in raw:
        return raw
    return {"format": 1, "fingerprint": None, "state": raw}  # a bare state dict (format 1)


def read_raw(path: str | os.PathLike) -> dict:
    """The decoded contents of checkpoint file ``path`` without a template (plain dicts and
    arrays, e.g. ``["state"]["meta"]``), for reading a run that is still going."""
    path = Path(path)
    return _decode(path.read_bytes(), str(path))


def restore(path: str | os.PathLike, template: Any, fingerprint: str | None = None) -> Any:
    """Read a pytree saved by :func:`save` into the structure of ``template``.

    Raises :class:`CheckpointError` if the file is unreadable, its fingerprint differs from
    ``fingerprint`` (when both are known), its structure differs from the template's, or a
    leaf's shape or dtype differs (naming the first such leaf).
    """
    path = Path(path)
    raw = _decode(path.read_bytes(), str(path))
    saved = raw.get("fingerprint")
    if fingerprint is not None and saved is not None and saved != fingerprint:
        raise CheckpointError(
            f"{path}: written under a different config (fingerprint {saved[:12]}..., this config "
            f"{fingerprint[:12]}...); it does not belong to this run"
        )
    template = _host(template)
    try:
        state = serialization.from_state_dict(template, raw["state"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: structure differs from this run's state ({e})") from None
    want = spec(template)
    got = spec(state)
    if len(want) != len(got):
        raise CheckpointError(f"{path}: holds {len(got)} arrays, this run's state has {len(want)}")
    for (name, shape, dtype), (_, shape2, dtype2) in zip(want, got):
        if shape != shape2:
            raise CheckpointError(f"{path}: {name}: shape {tuple(shape2)} in the checkpoint, {tuple(shape)} expected")
        if dtype != dtype2:
            raise CheckpointError(f"{path}: {name}: dtype {dtype2} in the checkpoint, {dtype} expected")
    return state


def previous(path: str | os.PathLike) -> Path:
    """Where the previous generation of ``path`` lives (``checkpoint.prev.msgpack``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_generation(path: str | os.PathLike, tree: Any, fingerprint: str | None = None) -> Path:
    """Keep the current checkpoint as :func:`previous`, then write the new one atomically.

    At every instant at least one complete checkpoint exists: the rename of the old file is
    atomic, and the new file appears only once fully written.
    """
    path = Path(path)
    data = to_bytes(tree, fingerprint)
    if path.exists():
        os.replace(path, previous(path))
    return atomic_write_bytes(path, data)


def restore_latest(path: str | os.PathLike, template: Any, fingerprint: str | None = None, warn=None) -> Any:
    """:func:`restore` the newest generation, or the previous one if the newest is missing
    or unreadable (calling ``warn(message)``, default :func:`warnings.warn`). A fingerprint,
    shape or dtype mismatch is not "unreadable": it raises at once."""
    path = Path(path)
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    prev = previous(path)
    if not path.exists() and not prev.exists():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    if path.exists():
        try:
            return restore(path, template, fingerprint)
        except CheckpointError as e:
            if "unreadable" not in str(e) or not prev.exists():
                raise
            warn(f"{e}; falling back to the previous checkpoint {prev.name}")
    else:
        warn(f"{path.name} is missing (interrupted while replacing it); using the previous checkpoint {prev.name}")
    return restore(prev, template, fingerprint)


def save_meta(path: str | os.PathLike, meta: Any, info: dict | None = None) -> Path:
    """Save trained meta-parameters (plus a JSON side file describing them)."""
    out = atomic_write_bytes(path, serialization.to_bytes(_host(meta)))
    if info is not None:
        atomic_write_json(Path(path).with_suffix(".json"), json.loads(json.dumps(info, default=str)), indent=2)
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
