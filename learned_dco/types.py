"""Type aliases shared across the package (documentation only; nothing is enforced)."""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
Params = PyTree
MetaParams = PyTree
Task = PyTree
Batch = PyTree

__all__ = ["Array", "Batch", "MetaParams", "PRNGKey", "Params", "PyTree", "Task"]
