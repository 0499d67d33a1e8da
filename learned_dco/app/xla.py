"""XLA compiler flags the command line sets before JAX starts its backend.

``learned-dco reproduce --quick`` compiles many small programs and runs each only a few
times, so compilation is most of its time on a CPU. Before the first JAX computation it adds :data:`QUICK_DEFAULTS` to ``XLA_FLAGS``:

* ``--xla_backend_optimization_level=0``: halves the DCO study's quick run on 2 cores with
  the same numbers;
* ``--xla_cpu_use_fusion_emitters=false``: XLA:CPU's newer fusion emitters spend more time
  compiling these programs than they save (``benchmarks/xla_flags.py``, docs/cli.md).

``train`` and ``eval`` keep XLA's defaults: on PES meta-training of the MLP learned
optimizers the emitters pay for themselves (same benchmark), while on DCOM they do not, so
no single setting is right for every config; set ``XLA_FLAGS`` yourself to choose.

A flag the user's ``XLA_FLAGS`` already names is left as the user set it. XLA reads
``XLA_FLAGS`` once, when the first backend starts: set later in a process that has already
computed, the flags have no effect (harmless: the run then uses whatever was in force).
XLA aborts on an unknown flag: ``--xla_backend_optimization_level`` exists in every supported
jaxlib; ``--xla_cpu_use_fusion_emitters`` exists in jaxlib 0.8.0-0.10.2 and is gone in 0.12.1
(the releases for Python >= 3.12), so it is added only below jaxlib 0.11 (:func:`quick_defaults`).
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import MutableMapping, Sequence

FUSION_EMITTERS_UNTIL = (0, 11)
"""The first jaxlib release (major, minor) given no ``--xla_cpu_use_fusion_emitters``."""


def jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's version as integers (``"0.10.2"`` -> ``(0, 10, 2)``), read from
    its metadata without importing it; ``()`` when it cannot be read."""
    try:
        text = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return ()
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def quick_defaults(jaxlib: tuple[int, ...] | None = None) -> tuple[str, ...]:
    """The ``reproduce --quick`` flags that the XLA of ``jaxlib`` (default: the installed
    one) knows."""
    version = jaxlib_version() if jaxlib is None else jaxlib
    flags = ("--xla_backend_optimization_level=0",)
    if version and version < FUSION_EMITTERS_UNTIL:
        flags += ("--xla_cpu_use_fusion_emitters=false",)
    return flags


QUICK_DEFAULTS: tuple[str, ...] = quick_defaults()
"""Flags ``reproduce --quick`` adds unless ``XLA_FLAGS`` names them."""


def flag_name(flag: str) -> str:
    """``"--xla_foo=1"`` -> ``"xla_foo"``."""
    return flag.lstrip("-").split("=", 1)[0]


def with_defaults(flags: str, defaults: Sequence[str]) -> str:
    """``flags`` (an ``XLA_FLAGS`` string) with each of ``defaults`` appended unless a flag
    of the same name is already there; the user's flags come first, unchanged."""
    present = {flag_name(f) for f in flags.split()}
    added = [f for f in defaults if flag_name(f) not in present]
    return " ".join([flags.strip(), *added]).strip()


def apply_defaults(defaults: Sequence[str] = QUICK_DEFAULTS, environ: MutableMapping[str, str] | None = None) -> str:
    """Set ``XLA_FLAGS`` in ``environ`` (default ``os.environ``) to :func:`with_defaults`;
    return the new value. Must run before the first JAX computation to take effect."""
    environ = os.environ if environ is None else environ
    value = with_defaults(environ.get("XLA_FLAGS", ""), defaults)
    if value or "XLA_FLAGS" in environ:
        environ["XLA_FLAGS"] = value
    return value
