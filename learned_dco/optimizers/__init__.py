"""Update rules (pure builders) and learned optimizers (init / opt_fn pairs)."""

from learned_dco.optimizers.dco import DCOG, DCOGD, DCOM, DCOMState, DCOState, dcog, dcogd, dcom
from learned_dco.optimizers.mirror import MetaMD, MirrorState, metamd
from learned_dco.optimizers.stepsize import LearnedStepSize, step_size_gd

# Name -> learned-optimizer class; configs and the CLI look optimizers up here, and the
# contract test (tests/test_contract.py) runs every entry.
LEARNED_OPTIMIZERS = {
    "dcog": DCOG,
    "dcogd": DCOGD,
    "dcom": DCOM,
    "step_size": LearnedStepSize,
    "metamd": MetaMD,
}

__all__ = ["DCOG", "DCOGD", "DCOM", "DCOMState", "DCOState", "LEARNED_OPTIMIZERS", "LearnedStepSize", "MetaMD", "MirrorState", "dcog", "dcogd", "dcom", "metamd", "step_size_gd"]
