"""Deprecated alias of :mod:`learned_dco.studies.stepsize_l2l` (the step-size L2L study's model).

Importing it warns once; it will be removed in the next release.
"""

import warnings

from learned_dco.studies.stepsize_l2l import *  # noqa: F401,F403

warnings.warn("learned_dco.stepsize_l2l moved to learned_dco.studies.stepsize_l2l; the old name will be removed "
              "in the next release", DeprecationWarning, stacklevel=2)
