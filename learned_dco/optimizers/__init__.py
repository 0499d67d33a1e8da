"""Update rules (pure builders) and learned optimizers (init / opt_fn pairs)."""

from learned_dco.optimizers.dco import DCOG, DCOGD, DCOM, DCOMState, DCOState, dcog, dcogd, dcom

# Name -> learned-optimizer class; configs and the CLI look optimizers up here, and the
# contract test (tests/test_contract.py) runs every entry.
LEARNED_OPTIMIZERS = {
    "dcog": DCOG,
    "dcogd": DCOGD,
    "dcom": DCOM,
}

__all__ = ["DCOG", "DCOGD", "DCOM", "DCOMState", "DCOState", "LEARNED_OPTIMIZERS", "dcog", "dcogd", "dcom"]
