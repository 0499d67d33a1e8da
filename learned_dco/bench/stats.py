r"""Statistics of the benchmark: t-intervals over seeds, paired comparisons with ties, the
interquartile mean and a two-level bootstrap over problems and seeds.

* :func:`t_interval`: mean of :math:`n` seeds with the 95% Student-t interval
  :math:`\bar x \pm t_{0.975, n-1}\, s/\sqrt n`.
* :func:`outcome`: a candidate against a reference on the same seeds (paired). With
  :math:`d_s = \log a_s - \log b_s` (losses floored, see :func:`floored`), the candidate is
  ``better`` when the t-interval of :math:`\bar d` lies below 0 and :math:`\bar d < -m`,
  ``worse`` when it lies above 0 and :math:`\bar d > m`, and a ``tie`` otherwise
  (:math:`m` = :data:`MARGIN`, 0.1% in ratio: differences below float32 run-to-run noise of
  the same computation compiled twice are ties, never wins).
* :func:`iqm`: the interquartile mean (``scipy.stats.trim_mean(v, 0.25)``), non-finite values
  counted as :math:`+\infty` (a diverged run is the worst, not ignored).
* :func:`bootstrap`: percentile intervals of a statistic of a (problems x seeds) table,
  resampling problems with replacement and, within each drawn problem, its seeds with
  replacement (the stratified bootstrap of Agarwal et al. 2021, "Deep RL at the edge of
  the statistical precipice", with seeds as runs). For values with no problem effect it
  counts the seed variance twice (variance of a mean :math:`\sigma^2 (2 - 1/S)/(PS)` instead
  of :math:`\sigma^2/(PS)`): the intervals err on the wide side.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

MARGIN = 1e-3
"""Equivalence margin on the mean log-ratio: ``|mean d| <= MARGIN`` is always a tie."""

LEVEL = 0.95

BETTER, TIE, WORSE = -1, 0, 1
OUTCOME_NAMES = {BETTER: "better", TIE: "tie", WORSE: "worse"}


def t_quantile(df: int | np.ndarray, level: float = LEVEL) -> np.ndarray:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return stats.t.ppf(0.5 + level / 2, df)


def t_interval(x, level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the values ``x`` (one per seed); ``lo, hi = mean`` for zero spread,
    ``(-inf, inf)`` for a single value; ``(inf, inf, inf)`` if any value is ``+inf``/NaN."""
    x = np.asarray(x, np.float64)
    if x.size == 0:
        raise ValueError("t_interval of no values")
    if not np.all(np.isfinite(x)):
        return (np.inf, np.inf, np.inf)
    m = float(x.mean())
    if x.size == 1:
        return (m, -np.inf, np.inf)
    half = float(t_quantile(x.size - 1, level) * x.std(ddof=1) / np.sqrt(x.size))
    return (m, m - half, m + half)


def floored(values, floor: float) -> np.ndarray:
    """``max(values, floor)``, non-finite as ``+inf``: losses below ``floor`` are all equal."""
    v = np.asarray(values, np.float64)
    return np.where(np.isfinite(v), np.maximum(v, floor), np.inf)


def log_ratio(a, b, floor: float) -> np.ndarray:
    """``log(max(a, floor)) - log(max(b, floor))`` elementwise; ``+inf`` where only ``a`` is
    non-finite, ``-inf`` where only ``b`` is, ``0`` where both are."""
    fa, fb = floored(a, floor), floored(b, floor)
    with np.errstate(invalid="ignore"):
        d = np.log(fa) - np.log(fb)
    return np.where(np.isinf(fa) & np.isinf(fb), 0.0, d)


def outcomes(d: np.ndarray, level: float = LEVEL, margin: float = MARGIN) -> np.ndarray:
    """Paired outcome codes (:data:`BETTER`, :data:`TIE`, :data:`WORSE`) over the last axis of
    log-ratios ``d`` (..., seeds); vectorised for the bootstrap."""
    d = np.asarray(d, np.float64)
    n = d.shape[-1]
    inf_pos, inf_neg = np.any(d == np.inf, -1), np.any(d == -np.inf, -1)
    finite = np.where(np.isfinite(d), d, 0.0)
    m = finite.mean(-1)
    if n > 1:
        half = t_quantile(n - 1, level) * finite.std(-1, ddof=1) / np.sqrt(n)
    else:
        half = np.full(m.shape, np.inf)
    better = (m + half < 0) & (m < -margin)
    worse = (m - half > 0) & (m > margin)
    code = np.where(better, BETTER, np.where(worse, WORSE, TIE))
    code = np.where(inf_pos & ~inf_neg, WORSE, np.where(inf_neg & ~inf_pos, BETTER, code))
    return code


def outcome(a, b, floor: float, level: float = LEVEL, margin: float = MARGIN) -> str:
    """``"better"``, ``"tie"`` or ``"worse"``: candidate losses ``a`` against reference ``b`` on
    the same seeds (see the module docstring)."""
    return OUTCOME_NAMES[int(outcomes(log_ratio(a, b, floor), level, margin))]


def iqm(values, axis: int | None = None):
    """Interquartile mean: drop ``floor(n/4)`` values at each end, average the rest.
    Non-finite values count as ``+inf``; ``None`` for no values (``axis=None``)."""
    v = np.asarray([np.inf if x is None else x for x in np.ravel(values)] if axis is None else values, np.float64)
    v = np.where(np.isfinite(v), v, np.inf)
    if axis is None:
        if v.size == 0:
            return None
        v = np.sort(v)
        cut = v.size // 4
        return float(v[cut: v.size - cut].mean())
    v = np.sort(v, axis=axis)
    n = v.shape[axis]
    cut = n // 4
    return np.take(v, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def bootstrap(statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray], tables: Mapping[str, np.ndarray],
              reps: int = 2000, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """``(point, lo, hi)`` of ``statistic`` over (problems x seeds) ``tables``.

    ``statistic`` maps tables of shape (B, P, S) to B values; the point estimate is it on the
    original tables (B = 1), the interval the ``level`` percentile interval over ``reps``
    resamples (problems with replacement, then seeds with replacement within each problem;
    all tables resampled with the same indices, so paired columns stay paired).
    """
    first = next(iter(tables.values()))
    P, S = first.shape
    point = float(np.asarray(statistic({k: np.asarray(v)[None] for k, v in tables.items()}))[0])
    if P == 0:
        return (point, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    pi = rng.integers(0, P, size=(reps, P))
    si = rng.integers(0, S, size=(reps, P, S))
    values = np.asarray(statistic({k: np.asarray(v)[pi[..., None], si] for k, v in tables.items()}), np.float64)
    finite = np.where(np.isnan(values), np.inf, values)
    lo = np.percentile(finite, 50 * (1 - level), method="lower")
    hi = np.percentile(finite, 50 * (1 + level), method="higher")
    return (point, float(lo), float(hi))


__all__ = ["BETTER", "LEVEL", "MARGIN", "OUTCOME_NAMES", "TIE", "WORSE", "bootstrap", "floored", "iqm", "log_ratio",
           "outcome", "outcomes", "t_interval", "t_quantile"]
