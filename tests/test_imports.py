"""Importing the package computes nothing: no XLA backend is initialised at import time.

``jax.distributed.initialize`` must run before the first JAX computation, and the CLI
imports the library before it initialises the multi-process runtime; one module-level
``jnp.array`` anywhere in the package would break multi-process meta-training.
"""

import subprocess
import sys

CHECK = """
import jax._src.xla_bridge as xb
import learned_dco, learned_dco.app.cli, learned_dco.app.runs, learned_dco.meta, learned_dco.tasks
import learned_dco.studies, learned_dco.pretrained, learned_dco.analysis
assert not xb._backends, "importing learned_dco initialised an XLA backend"
"""


def test_import_initialises_no_backend():
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
