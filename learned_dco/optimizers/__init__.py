"""Update rules (pure builders) and learned optimizers (init / opt_fn pairs)."""

from types import ModuleType as _ModuleType
from typing import Any as _Any

from learned_dco import deprecation as _deprecation
from learned_dco.validation import ValidationError as _ValidationError

from learned_dco.optimizers.controller import ControllerState, ProdigyController, prodigy_controller
from learned_dco.optimizers.dco_controller import DCOController, DCOControllerState, dcom_controller
from learned_dco.optimizers.dco import DCOG, DCOGD, DCOM, DCOMState, DCOState, dcog_transform, dcogd_transform, dcom_transform
from learned_dco.optimizers.general import (
    GeneralDCOState,
    LearnedDCO,
    StepQP,
    constrained_dcom,
    general_dco,
    shifted_constraints,
)
from learned_dco.optimizers.lstm import L2OState, LSTMOptimizer, lstm_optimizer
from learned_dco.optimizers.mirror import MetaMD, MirrorState, metamd_transform
from learned_dco.optimizers.star import (
    STAR,
    AdafacState,
    Blackbox,
    Hyperparam,
    adafac_mlp,
    blackbox_weight_mask,
    star_meta_optimizer,
)
from learned_dco.optimizers.param_mlp import ParamMLPState, ProdigyParamMLP, prodigy_param_mlp
from learned_dco.optimizers.scheduled import LearnedProdigy, ScheduledAdam, knot_schedule
from learned_dco.optimizers.stepsize import LearnedStepSize, step_size_gd

# Name -> learned-optimizer class; configs and the CLI look optimizers up here, and the
# contract test (tests/test_contract.py) runs every entry.
LEARNED_OPTIMIZERS = {
    "dcog": DCOG,
    "dcogd": DCOGD,
    "dcom": DCOM,
    "step_size": LearnedStepSize,
    "blackbox": Blackbox,
    "hyperparam": Hyperparam,
    "star": STAR,
    "metamd": MetaMD,
    "l2o": LSTMOptimizer,
    "scheduled_adam": ScheduledAdam,
    "learned_prodigy": LearnedProdigy,
    "prodigy_controller": ProdigyController,
    "prodigy_param_mlp": ProdigyParamMLP,
    "dcom_controller": DCOController,
}


def make_optimizer(name: str, **options: _Any):
    """``LEARNED_OPTIMIZERS[name](**options)``, with a ``ValidationError`` listing the names if unknown."""
    try:
        cls = LEARNED_OPTIMIZERS[name]
    except KeyError:
        raise _ValidationError(f"unknown learned optimizer {name!r}; known: {sorted(LEARNED_OPTIMIZERS)}") from None
    return cls(**options)


def _qp(name: str):
    from learned_dco import qp

    return lambda: getattr(qp, name)


_RENAMED = {
    "SimplexExact": ("learned_dco.qp.SimplexExact", _qp("SimplexExact")),
    "cheapest_solver": ("learned_dco.qp.cheapest_solver", _qp("cheapest_solver")),
    **{old: (f"learned_dco.optimizers.{old}_transform", lambda old=old: globals()[f"{old}_transform"])
       for old in ("dcog", "dcogd", "dcom", "metamd")},
}
"""Names of the previous release (deprecated; removed in the next): old name -> (the name to
use, its value)."""


def __getattr__(name: str) -> _Any:
    return _deprecation.resolve(__name__, name, _RENAMED)


# The public names of this subpackage: everything imported above plus the registry
# (derived, so it cannot drift from the imports).
__all__ = sorted(
    name for name, value in dict(globals()).items() if not name.startswith("_") and not isinstance(value, _ModuleType)
)
