"""Test configuration: gradient checks run in float64 where a test asks for it.

The suite is dominated by XLA compilation (hundreds of small programs, each run a few
times), so tests compile with XLA's backend optimisation level 0: about 30% less CPU time
here, and results within the tests' tolerances (the tests compare against references
computed in the same process). Set ``XLA_FLAGS`` yourself to override.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run one test with float64 enabled (central finite differences need it)."""
    with jax.enable_x64(True):
        yield
