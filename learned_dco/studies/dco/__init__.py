"""The DCO paper study: Figures 1-3 under both readings of Algorithm 1, Theorem 1, the QP backend.

* :mod:`~learned_dco.studies.dco.study` -- ``run`` (the entry point ``learned-dco reproduce dco``
  calls), the claims and their verdict rules;
* :mod:`~learned_dco.studies.dco.experiments` -- the experiments, baselines and Algorithm 1
  under both protocols;
* :mod:`~learned_dco.studies.dco.theorem1` -- the Theorem 1 check;
* :mod:`~learned_dco.studies.dco.report` -- figures and report sections;
* :mod:`~learned_dco.studies.dco.oracle` -- oracle step sizes (``python -m learned_dco.studies.dco.oracle``).
"""

from learned_dco.studies.dco.study import *  # noqa: F403
from learned_dco.studies.dco.study import __all__  # noqa: F401
