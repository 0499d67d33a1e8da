"""Task families from the papers (see ``learned_dco.tasks.base`` for the protocol).

==========================  ==========================  ===========================================
name (``FAMILIES`` key)     class                       source
==========================  ==========================  ===========================================
``least_squares``           ``LeastSquares``            DCO Sec. VI-B
``shifted_least_squares``   ``ShiftedLeastSquares``     DCO Sec. V (Theorem 1)
``beverton_holt``           ``BevertonHolt``            DCO Sec. VI-C
``smooth_interpolation``    ``SmoothInterpolation``     DCO Sec. VI-D
``noisy_quadratic``         ``NoisyQuadratic``          STAR Sec. 4 / App. B.1 (2-D ``H``)
``spectral_noisy_quadratic`` ``SpectralNoisyQuadratic`` STAR Sec. 4 (``d``-dim, chosen spectrum)
``lasso``                   ``Lasso``                   M-L2O LASSO
``quadratic``               ``Quadratic``               M-L2O / Andrychowicz et al. 2016
``rosenbrock``              ``Rosenbrock``              M-L2O Rosenbrock
``digits_mlp``              ``DigitsMLP``               STAR App. B.2 MLP (on UCI digits)
``digits_convnet``          ``DigitsConvNet``           STAR App. B.2 ConvNet (on UCI digits)
``softmax_regression``      ``SoftmaxRegression``       mixture (digits / synthetic)
``logistic_regression``     ``LogisticRegression``      mixture (digits / synthetic)
``mlp_classifier``          ``MLPClassifier``           mixture (digits / synthetic)
``nonneg_least_squares``    ``NonnegLeastSquares``      DCO eq. 5 (theta >= 0)
``simplex_least_squares``   ``SimplexLeastSquares``     DCO eq. 5 (probability simplex)
``box_lqr``                 ``BoxLQR``                  DCO eq. 5 (LQR, input limits)
==========================  ==========================  ===========================================

The constrained families also expose ``constraints(task) -> qp.Constraints`` (the feasible
set a DCO step's QP carries), ``project`` and ``violation``.

``make_family(name, **fields)`` builds one from a config (e.g. a YAML mapping).

``Mixture`` (with ``CompiledPerFamily``) draws one member family and inner horizon per
meta-step, for meta-training over families of different parameter shapes; ``random_mlps``
makes MLP members with random widths, depths and activations.

``from_flax(model, loss_fn, data)`` (a ``FlaxTask``) makes a family of the user's own flax
model, loss and data: tasks are random train/validation splits and random initialisations.

Also exported (not in ``FAMILIES``): ``MatrixLeastSquares``, multi-output least squares
with a shared rotated ill-conditioned feature covariance (Kronecker curvature), built for
MetaMD's benchmark.

Example::

    import jax
    from learned_dco import tasks

    family = tasks.make_family("beverton_holt", noise_var=0.1)
    batch_of_tasks = tasks.sample_tasks(family, jax.random.PRNGKey(0), 100)
    params = jax.vmap(family.init_params)(jax.random.split(jax.random.PRNGKey(1), 100), batch_of_tasks)
    losses = jax.vmap(family.val_loss)(params, batch_of_tasks)   # (100,)
"""

from __future__ import annotations

from typing import Any

from learned_dco.tasks.classification import (
    ClassificationTask,
    LogisticRegression,
    MLPClassifier,
    SoftmaxRegression,
    random_mlps,
)
from learned_dco.tasks.constrained import (
    BoxLQR,
    LQRTask,
    NonnegLeastSquares,
    RegressionTask,
    SimplexLeastSquares,
    project_simplex,
)
from learned_dco.tasks.base import TaskFamily, TaskFamilyBase, TaskInfo, sample_tasks
from learned_dco.tasks.flax_task import FlaxTask, FlaxTaskData, from_flax
from learned_dco.tasks.digits import DigitsConvNet, DigitsMLP, DigitsTask, load_digits
from learned_dco.tasks.interpolation import SmoothInterpolation, SmoothInterpolationTask
from learned_dco.tasks.lasso import Lasso, LassoTask, lasso_solve
from learned_dco.tasks.matrix_least_squares import MatrixLeastSquares, MatrixLeastSquaresTask
from learned_dco.tasks.least_squares import (
    LeastSquares,
    LeastSquaresTask,
    ShiftedLeastSquares,
    ShiftedLeastSquaresTask,
)
from learned_dco.tasks.population import BevertonHolt, BevertonHoltTask
from learned_dco.tasks.quadratic import (
    STAR_HESSIAN,
    NoisyQuadratic,
    NoisyQuadraticTask,
    Quadratic,
    QuadraticTask,
    SpectralNoisyQuadratic,
)
from learned_dco.tasks.mixture import CompiledPerFamily, Mixture
from learned_dco.tasks.rosenbrock import Rosenbrock, RosenbrockTask
from learned_dco.validation import ValidationError

FAMILIES: dict[str, type[TaskFamilyBase]] = {
    "least_squares": LeastSquares,
    "shifted_least_squares": ShiftedLeastSquares,
    "beverton_holt": BevertonHolt,
    "smooth_interpolation": SmoothInterpolation,
    "noisy_quadratic": NoisyQuadratic,
    "spectral_noisy_quadratic": SpectralNoisyQuadratic,
    "lasso": Lasso,
    "quadratic": Quadratic,
    "rosenbrock": Rosenbrock,
    "digits_mlp": DigitsMLP,
    "digits_convnet": DigitsConvNet,
    "softmax_regression": SoftmaxRegression,
    "logistic_regression": LogisticRegression,
    "mlp_classifier": MLPClassifier,
    "nonneg_least_squares": NonnegLeastSquares,
    "simplex_least_squares": SimplexLeastSquares,
    "box_lqr": BoxLQR,
}
"""Task-family classes by config name."""


def make_family(name: str, **fields: Any) -> TaskFamilyBase:
    """``FAMILIES[name](**fields)``, with a ``ValueError`` listing the names if unknown."""
    try:
        cls = FAMILIES[name]
    except KeyError:
        raise ValidationError(f"unknown task family {name!r}; known: {sorted(FAMILIES)}") from None
    return cls(**fields)


__all__ = [
    "FlaxTask",
    "FlaxTaskData",
    "from_flax",
    "BoxLQR",
    "LQRTask",
    "NonnegLeastSquares",
    "RegressionTask",
    "SimplexLeastSquares",
    "project_simplex",
    "random_mlps",
    "SoftmaxRegression",
    "Mixture",
    "MLPClassifier",
    "LogisticRegression",
    "CompiledPerFamily",
    "ClassificationTask",
    "FAMILIES",
    "STAR_HESSIAN",
    "BevertonHolt",
    "BevertonHoltTask",
    "DigitsConvNet",
    "DigitsMLP",
    "DigitsTask",
    "Lasso",
    "LassoTask",
    "LeastSquares",
    "LeastSquaresTask",
    "MatrixLeastSquares",
    "MatrixLeastSquaresTask",
    "NoisyQuadratic",
    "NoisyQuadraticTask",
    "Quadratic",
    "QuadraticTask",
    "Rosenbrock",
    "RosenbrockTask",
    "ShiftedLeastSquares",
    "ShiftedLeastSquaresTask",
    "SmoothInterpolation",
    "SmoothInterpolationTask",
    "SpectralNoisyQuadratic",
    "TaskFamily",
    "TaskFamily",
    "TaskFamilyBase",
    "TaskInfo",
    "lasso_solve",
    "load_digits",
    "make_family",
    "sample_tasks",
]
