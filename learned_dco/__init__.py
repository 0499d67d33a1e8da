"""learned_dco: learned optimizers in JAX.

The update rules are pure builders returning ``optax.GradientTransformation``s
(``dcog``, ``dcogd``, ``dcom``); learned optimizers pair a meta-parameter ``init`` with an
``opt_fn`` builder (``DCOG``, ``DCOGD``, ``DCOM``).
"""

from learned_dco.learned import LearnedOptimizer

__version__ = "0.1.0"

__all__ = ["LearnedOptimizer", "__version__"]
