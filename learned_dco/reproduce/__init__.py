"""Deprecated alias kept for ``learned-dco reproduce`` until the CLI calls
:data:`learned_dco.studies.STUDIES`: ``reproduce(...)`` runs the DCO study."""

from __future__ import annotations

from learned_dco.studies.dco import Experiment, paper_experiments, run_experiment, run_theorem1
from learned_dco.studies.dco import run as _run


def reproduce(quick: bool = False, out="results/reproduce", seed: int = 0, log=print, experiments=None):
    """:func:`learned_dco.studies.dco.run` under its old name."""
    return _run(out, quick=quick, seed=seed, log=log, experiments=experiments)


__all__ = ["Experiment", "paper_experiments", "reproduce", "run_experiment", "run_theorem1"]
