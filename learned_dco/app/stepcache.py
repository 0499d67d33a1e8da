"""The meta-step exported once and reloaded by later runs of the same config (compile once).

XLA's persistent compilation cache (on by default for the CLI, :func:`learned_dco.app.cli.compile_cache_dir`)
removes the *compilation* of a repeated run's first meta-step, but not its tracing and
lowering. For a meta-step that differentiates through a scan of QP solves those cost
0.6-0.9 s on a CPU, most of a warm first step. So the CLI also stores the meta-step's lowered program
(``jax.export``, StableHLO in a versioned serialisation) beside the XLA cache. A second run of
the same config loads it instead of tracing, and its compilation then comes from the XLA
cache.

The stored program is a function of the flat list of the state's and the task pool's
arrays. The pytree structure is rebuilt from the live state, which has the same structure
by construction. It is keyed by a SHA-256 digest of everything that shapes the traced program:

* the config's fingerprint;
* the source of every module of the installed ``learned_dco``;
* the versions of jax, jaxlib, optax and jaxopt;
* the backend, the device kind and ``jax_enable_x64``;
* ``XLA_FLAGS``;
* the structure, shapes and dtypes of the arguments.

A changed library or config therefore gets a new entry and never an old program.
Results are bit-identical to the jitted step (``tests/test_stepcache.py``).

Used only where it is safe and simple: one process, one device, one task family (a mixture
compiles one step per member and horizon and keeps the plain path). Anything unexpected
(an unreadable entry, a different output structure) falls back to the plain jitted step.
``jax.export`` needs the ``flatbuffers`` package (a dependency of this project).

The stored steps share the cache's size limit (:mod:`learned_dco.app.cache`): after each
write the least recently used ones are deleted beyond their budget.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Callable

import jax

from learned_dco import io
from learned_dco.app import cache
from learned_dco.meta.trainer import Metrics

SUBDIR = cache.STEPS_SUBDIR
_PACKAGE = Path(__file__).resolve().parents[1]


def source_digest() -> str:
    """SHA-256 over the path and bytes of every ``.py`` file of the installed package."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def entry_key(fingerprint: str, leaves: list, treedef) -> str:
    """The digest naming a stored step (module docstring)."""
    device = jax.devices()[0]
    material = {
        "fingerprint": fingerprint,
        "source": source_digest(),
        "versions": {n: _version(n) for n in ("jax", "jaxlib", "optax", "jaxopt")},
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "tree": str(treedef),
        "avals": [(tuple(x.shape), str(x.dtype)) for x in leaves],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def usable(trainer) -> bool:
    """One process, one device, no task mixture."""
    return (trainer.mixture is None and jax.process_count() == 1
            and trainer.mesh.devices.size == 1)


def cached_step(trainer, fingerprint: str, directory: str | os.PathLike) -> Callable:
    """``trainer.step`` through a stored program: on its first call it loads the
    stored program from ``directory`` when a matching entry exists, else exports and stores
    it (so a first meta-step's time includes this work). Falls back to ``trainer.step``."""
    if not usable(trainer):
        return trainer.step
    resolved = []

    def step(s):
        if not resolved:  # the states of one run all have the first one's structure and shapes
            resolved.append(_resolve(trainer, s, fingerprint, directory))
        return resolved[0](s)

    return step


def _resolve(trainer, state, fingerprint: str, directory: str | os.PathLike) -> Callable:
    leaves, treedef = jax.tree.flatten((state, trainer.pool))
    path = Path(directory) / SUBDIR / f"{entry_key(fingerprint, leaves, treedef)}.jaxexport"
    state_tree = jax.tree.structure(state)
    out_tree = jax.tree.structure((state, Metrics(*range(len(Metrics._fields)))))
    exported = None
    if path.exists():
        try:
            exported = jax.export.deserialize(bytearray(path.read_bytes()))
            os.utime(path)  # recently used: pruned last
        except Exception:  # noqa: BLE001 -- a torn or foreign entry: export afresh
            exported = None
    if exported is None:
        seen = {}

        def flat(*xs):
            out = trainer._meta_step(*jax.tree.unflatten(treedef, xs))
            seen["tree"] = jax.tree.structure(out)
            return jax.tree.leaves(out)

        try:
            exported = jax.export.export(jax.jit(flat))(*[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves])
        except Exception:  # noqa: BLE001 -- e.g. a primitive jax.export cannot serialise
            return trainer.step
        if seen.get("tree") != out_tree:
            return trainer.step
        io.atomic_write_bytes(path, bytes(exported.serialize()))
        cache.prune(path.parent, cache.steps_budget(jax.config.jax_compilation_cache_max_size))
    call = jax.jit(exported.call)
    num_state = state_tree.num_leaves

    def step(s):
        out = call(*jax.tree.leaves((s, trainer.pool)))
        return jax.tree.unflatten(state_tree, out[:num_state]), Metrics(*out[num_state:])

    return step
