"""Alias of :mod:`learned_dco.app.runs` (``learned_dco.experiment.load_trained`` keeps working)."""

from learned_dco.app.runs import *  # noqa: F401,F403
from learned_dco.app.runs import Built, Trained, build, load_trained, saved_config, train  # noqa: F401
