"""Update rules (pure builders) and learned optimizers (init / opt_fn pairs)."""

from learned_dco.optimizers.dco import DCOG, DCOGD, DCOM, DCOMState, DCOState, dcog, dcogd, dcom
from learned_dco.optimizers.l2o import L2OState, LSTMOptimizer, lstm_optimizer
from learned_dco.optimizers.mirror import MetaMD, MirrorState, metamd
from learned_dco.optimizers.star import (
    STAR,
    AdafacState,
    Blackbox,
    Hyperparam,
    adafac_mlp,
    blackbox_weight_mask,
    star_meta_optimizer,
)
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
}

__all__ = [
    "DCOG",
    "DCOGD",
    "DCOM",
    "STAR",
    "AdafacState",
    "Blackbox",
    "DCOMState",
    "DCOState",
    "Hyperparam",
    "L2OState",
    "LEARNED_OPTIMIZERS",
    "LSTMOptimizer",
    "LearnedStepSize",
    "MetaMD",
    "MirrorState",
    "adafac_mlp",
    "blackbox_weight_mask",
    "dcog",
    "dcogd",
    "dcom",
    "lstm_optimizer",
    "metamd",
    "star_meta_optimizer",
    "step_size_gd",
]
