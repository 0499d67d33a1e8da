r"""The divergence rule.

A run of an optimizer told a budget of :math:`T` steps is recorded for :math:`10T` steps
(the *long run*; its first :math:`T` steps are the budget run). With training losses
:math:`L_0` (start), :math:`L_T` (at the budget) and :math:`M = \max_{t > T} L_t`, the run
*diverged* if

1. any recorded loss is not finite, or
2. :math:`L_T > L_0` (the budget run ends above its start), or
3. :math:`M - L_T > 0.1\,(L_0 - L_T)`: after the budget the run climbs back by more than 10% of
   the progress it had made by the budget.

Rule 3 is relative to the progress, not to :math:`L_T`: a rise from :math:`10^{-14}` to
:math:`10^{-13}` after a start at 1 is not divergence, a rise to 16% of the starting loss is,
even if the run later recovers (the climb is what a user who runs a little longer sees).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

GIVE_BACK = 0.1
"""Fraction of the progress by the budget that a post-budget climb may give back."""


class LongRun(NamedTuple):
    """What the long run keeps: its maximum after the budget, final loss, and the step of
    that maximum (``None`` when there is no long run)."""

    max_after: float | None
    final: float | None
    argmax: int | None


def long_run_stats(losses: np.ndarray, budget: int) -> LongRun:
    """:class:`LongRun` of a curve ``losses[0..N]`` whose budget is ``budget`` steps."""
    c = np.asarray(losses, np.float64)
    if c.size <= budget + 1:
        return LongRun(None, None, None)
    after = c[budget + 1:]
    safe = np.where(np.isnan(after), np.inf, after)
    i = int(np.argmax(safe))
    return LongRun(float(after[i]), float(c[-1]), budget + 1 + i)


def diverged(losses: np.ndarray, budget: int | None = None) -> bool:
    """The rule above for a curve ``losses[0..N]``; ``budget`` defaults to ``N`` (a budget run
    alone: rules 1 and 2 only)."""
    c = np.asarray(losses, np.float64)
    budget = c.size - 1 if budget is None else int(budget)
    if not 0 < budget < c.size:
        raise ValueError(f"budget must be in 1..{c.size - 1}, got {budget}")
    if not np.all(np.isfinite(c)):
        return True
    start, at_budget = c[0], c[budget]
    if at_budget > start:
        return True
    if c.size > budget + 1:
        return bool(c[budget + 1:].max() - at_budget > GIVE_BACK * (start - at_budget))
    return False


__all__ = ["GIVE_BACK", "LongRun", "diverged", "long_run_stats"]
