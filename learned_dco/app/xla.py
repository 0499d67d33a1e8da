"""XLA compiler flags the command line sets before JAX starts its backend.

``learned-dco reproduce --quick`` (and ``python -m learned_dco.studies --quick``) compiles
many small programs and runs each only a few times, so compilation is most of its time on a
CPU. Before the first JAX computation it adds :data:`QUICK_DEFAULTS` to ``XLA_FLAGS``:

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
The flags exist from jaxlib 0.8.0 (the minimum) on; XLA aborts on an unknown flag.
"""

from __future__ import annotations

import os
from typing import MutableMapping, Sequence

QUICK_DEFAULTS: tuple[str, ...] = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
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
