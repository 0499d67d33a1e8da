"""Types shared across the package: array/pytree aliases and the structural Protocols.

The aliases document intent only. The Protocols are structural (``typing.Protocol``): a
class satisfies one by having the methods, with no inheritance, so user code can bring its
own optimizer, task family or curvature operator. The three Protocols of the package are

* :class:`learned_dco.learned.LearnedOptimizer` (``init`` / ``opt_fn``),
* :class:`learned_dco.tasks.base.TaskFamily` (``sample`` / ``init_params`` / ``loss`` ...),
* :class:`QPOperator` below (the curvature of a DCO step, which solves itself).

``QPOperator`` lives here rather than in ``qp`` so that annotations anywhere (optimizers,
analysis) can name it without importing the solver backends.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
Params = PyTree
MetaParams = PyTree
Task = PyTree
Batch = PyTree


@runtime_checkable
class QPOperator(Protocol):
    r"""A symmetric positive-definite linear operator :math:`Q` on pytrees that knows how to
    solve itself, the curvature of the QP :math:`\min_x \tfrac12 x^\top Q x + c^\top x`.

    ``solve`` must be exact (it is used in the forward pass and in the implicit-function
    backward pass); ``separable`` is ``True`` when :math:`Q` is diagonal, so that a box
    constraint has the closed form :math:`\Pi_{[l,u]}(-Q^{-1} c)`. Implementations:
    ``qp.Diagonal``, ``qp.ScaledIdentity``, ``qp.Dense``, ``qp.Kronecker``,
    ``qp.BlockDiagonal``.
    """

    @property
    def separable(self) -> bool:
        """Whether :math:`Q` is diagonal."""
        ...

    def matvec(self, x: PyTree) -> PyTree:
        """:math:`Q x`."""
        ...

    def solve(self, b: PyTree) -> PyTree:
        """:math:`Q^{-1} b`, exactly."""
        ...

    def to_dense(self, x: PyTree) -> Array:
        """:math:`Q` as a dense ``(p, p)`` matrix for ravelled ``x`` (tests, small problems)."""
        ...


__all__ = ["Array", "Batch", "MetaParams", "PRNGKey", "Params", "PyTree", "QPOperator", "Task"]
