"""Test configuration: gradient checks run in float64 where a test asks for it."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run one test with float64 enabled (central finite differences need it)."""
    with jax.enable_x64(True):
        yield
