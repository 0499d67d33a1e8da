"""Verdict rules of the studies: paired comparisons with a confidence interval, and how they combine.

A *comparative* claim says A beats B. Each paired unit ``i`` (one held-out task under one
seed, evaluated by both A and B) gives a difference ``d_i = score_A,i - score_B,i`` on a
scale where lower is better (a log loss, a divergence indicator). With ``n`` units, mean
``m`` and sample standard deviation ``s``, the two-sided ``level`` interval of the mean
difference is Student's

    m -/+ t_{(1+level)/2, n-1} * s / sqrt(n).

The rule:

* ``reproduced``: the interval lies below 0 (A better, the margin excludes zero);
* ``not reproduced``: the interval lies above 0 (it excludes the claim: B better);
* ``inconclusive``: the interval contains 0. The record then gives the number of units at
  which the same mean and spread would decide, ``n* = ceil((z s / m)^2)`` with ``z`` the normal
  quantile (a planning figure, not a promise), or ``None`` when ``m = 0`` (no sample decides).

A claim over several parts (families, or several baselines) holds when every part holds, and
:func:`combine` turns the parts' verdicts into one: all reproduced -> reproduced; a part not
reproduced -> ``partly`` if another part is reproduced, else not reproduced (one decided
failure refutes the conjunction); otherwise (parts undecided) -> inconclusive.

A *bound* claim compares a measured quantity with a stated bound (:func:`bound_test`); a
*sanity* claim holds by construction or checks the machinery and is never counted as a
reproduction (the reports list it separately).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

KINDS = ("comparative", "bound", "sanity")
LEVEL = 0.95


def _t_quantile(p: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, df))


def _z_quantile(p: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(p))


def paired_test(a: Sequence[float], b: Sequence[float], *, statistic: str, unit: str, level: float = LEVEL) -> dict[str, Any]:
    """Paired comparison of ``a`` (claimed better) against ``b``: lower is better.

    Args:
      a, b: per-unit scores of the same units in the same order, finite (map a diverged
        run to a finite penalty before calling, and say which in ``statistic``).
      statistic: what ``a - b`` is, in words (``"log10 final loss, learned - Adam"``).
      unit: what one paired unit is (``"held-out task x seed (32 x 1)"``).
      level: two-sided confidence level of the interval.

    Returns:
      ``{"statistic", "estimate", "se", "ci", "level", "units", "unit", "rule", "verdict",
      "n_to_decide"}`` (``n_to_decide`` only when inconclusive).
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_test: a and b must pair the same units, got {a.size} and {b.size} values")
    if a.size < 2:
        raise ValueError(f"paired_test: needs at least 2 paired units, got {a.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired_test: scores must be finite; map diverged runs to a finite penalty first")
    if not 0 < level < 1:
        raise ValueError(f"paired_test: level must be in (0, 1), got {level}")
    d = a - b
    n = d.size
    m = float(d.mean())
    s = float(d.std(ddof=1))
    se = s / math.sqrt(n)
    half = _t_quantile((1 + level) / 2, n - 1) * se
    lo, hi = m - half, m + half
    verdict = "reproduced" if hi < 0 else ("not reproduced" if lo > 0 else "inconclusive")
    out = {"statistic": statistic, "estimate": m, "se": se, "ci": [lo, hi], "level": level, "units": n,
           "unit": unit, "rule": f"paired mean difference (A - B, lower is better): reproduced if the {level:.0%} "
                                 "t-interval lies below 0, not reproduced if above 0, else inconclusive",
           "verdict": verdict}
    if verdict == "inconclusive":
        out["n_to_decide"] = needed_units(m, s, level)
    return out


def needed_units(mean: float, sd: float, level: float = LEVEL) -> int | None:
    """Units at which a mean difference ``mean`` with spread ``sd`` puts the interval off zero."""
    if mean == 0 or not math.isfinite(mean):
        return None
    if sd == 0:
        return 2
    return max(2, math.ceil((_z_quantile((1 + level) / 2) * sd / abs(mean)) ** 2))


def combine(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One comparative record from several parts' records (see the module docstring)."""
    if not parts:
        raise ValueError("combine: no parts")
    verdicts = [p["verdict"] for p in parts.values()]
    if all(v == "reproduced" for v in verdicts):
        verdict = "reproduced"
    elif "not reproduced" in verdicts:
        verdict = "partly" if "reproduced" in verdicts or "partly" in verdicts else "not reproduced"
    elif "partly" in verdicts:
        verdict = "partly"
    else:
        verdict = "inconclusive"
    return {"rule": "every part reproduced -> reproduced; a part not reproduced -> partly if another part is "
                    "reproduced, else not reproduced; otherwise (parts undecided) -> inconclusive",
            "verdict": verdict, "parts": parts}


def bound_test(value: float, bound: float, *, statistic: str, holds_if: str = "<=") -> dict[str, Any]:
    """A measured quantity against a stated bound: reproduced when ``value holds_if bound``."""
    ops = {"<=": lambda x, y: x <= y, "<": lambda x, y: x < y, ">=": lambda x, y: x >= y, ">": lambda x, y: x > y}
    if holds_if not in ops:
        raise ValueError(f"bound_test: holds_if must be one of {sorted(ops)}, got {holds_if!r}")
    ok = bool(not math.isnan(value) and ops[holds_if](value, bound))
    return {"statistic": statistic, "value": float(value), "bound": float(bound),
            "rule": f"reproduced if value {holds_if} bound, else not reproduced",
            "verdict": "reproduced" if ok else "not reproduced"}


def capped(x: Sequence[float], cap: float) -> np.ndarray:
    """``x`` with non-finite entries (diverged runs) and entries above ``cap`` set to ``cap``."""
    x = np.asarray(x, np.float64)
    return np.where(np.isfinite(x), np.minimum(x, cap), cap)
