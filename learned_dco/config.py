"""Alias of :mod:`learned_dco.app.config` (``learned_dco.config.load_config`` keeps working)."""

from learned_dco.app.config import *  # noqa: F401,F403
from learned_dco.app.config import ConfigError, RunConfig, from_dict, load_config  # noqa: F401
