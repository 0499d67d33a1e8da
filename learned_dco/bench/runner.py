r"""Running the benchmark: curves, tuning, long runs, timing, caching.

Per problem and row, one ``jax.jit`` program runs every seed at once (``vmap`` over seeds;
for a tuned baseline also over the learning-rate grid). A seed ``s`` fixes the initial
parameters (``fold_in(PRNGKey(s), 0)``) and the minibatch of step ``i``
(``fold_in(fold_in(PRNGKey(s), 1), i)``), so every row sees the same initial points and
batches on the same seed (the comparisons are paired), and a longer run's prefix is the
shorter run.

* Tuned baselines (:data:`~learned_dco.bench.baselines.TUNED`): the grid runs on the tuning
  seeds and the evaluation seeds; the rate with the lowest mean log final loss on the
  *tuning* seeds is picked and its *evaluation*-seed runs are the row.
* Untuned rows (baselines, candidates, untrained starting points): one run of
  ``long_factor x`` the budget per evaluation seed, the optimizer told only the budget; the
  first ``budget`` steps are the row, the rest feeds the divergence rule
  (:mod:`learned_dco.bench.divergence`).
* Timing (candidates): seconds per step of ``min(budget, 100)`` steps on one seed against
  Adam(1e-3) on the same problem, runs interleaved, median of the rounds.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_dco
from learned_dco.bench import baselines as B
from learned_dco.bench import cache as C
from learned_dco.bench.divergence import diverged, long_run_stats
from learned_dco.bench.problems import Problem
from learned_dco.io import to_json
from learned_dco.validation import ValidationError

BENCH_VERSION = 1
"""Version of what a cached row holds and how it is computed (part of the cache key)."""

FLOOR = 1e-6
"""Losses below ``FLOOR x`` the problem's mean starting loss count as equal (float32 resolution
of a loss that has fallen six orders of magnitude); used in ratios and comparisons."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Seeds, grid and sizes of one benchmark run (``quick()``: the ``--quick`` mode)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    tuning_seeds: tuple[int, ...] = (1000, 1001)
    grid: tuple[float, ...] = B.GRID
    long_factor: int = 10
    budget_scale: float = 1.0
    timing: bool = True
    timing_steps: int = 100
    timing_rounds: int = 5

    def __post_init__(self):
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ValidationError(f"seeds must be distinct and at least one, got {self.seeds}")
        if set(self.seeds) & set(self.tuning_seeds):
            raise ValidationError(f"tuning seeds {self.tuning_seeds} must differ from evaluation seeds {self.seeds}")
        if not self.tuning_seeds:
            raise ValidationError("at least one tuning seed is needed")
        if not (isinstance(self.long_factor, int) and self.long_factor >= 1):
            raise ValidationError(f"long_factor must be an int >= 1, got {self.long_factor!r}")

    @classmethod
    def quick(cls, **kw) -> "Settings":
        base = dict(tuning_seeds=(1000,), grid=B.GRID[::2], budget_scale=0.2, timing_rounds=3)
        return cls(**{**base, **kw})

    def budget(self, problem: Problem) -> Problem:
        if self.budget_scale == 1.0:
            return problem
        return problem.with_steps(max(20, int(round(problem.steps * self.budget_scale))))


def curve(problem: Problem, tx: optax.GradientTransformation, steps: int, seed, eval_params=None) -> jax.Array:
    """Training loss at steps ``0..steps`` of ``tx`` on ``problem`` from seed ``seed`` (one scan)."""
    key = jax.random.PRNGKey(seed)
    params = problem.init(jax.random.fold_in(key, 0))
    step_key = jax.random.fold_in(key, 1)
    measure = (lambda p, s: problem.train_loss(eval_params(s, p))) if eval_params else (lambda p, s: problem.train_loss(p))

    def body(carry, i):
        p, s = carry
        g = jax.grad(problem.step_loss)(p, jax.random.fold_in(step_key, i))
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), measure(p, s)

    state = tx.init(params)
    (_, _), losses = jax.lax.scan(body, (params, state), jnp.arange(steps))
    return jnp.concatenate([measure(params, state)[None], losses])


def run_grid(problem: Problem, make: Callable[[Any, int], optax.GradientTransformation], grid, seeds) -> np.ndarray:
    """Curves of ``make(lr, budget)`` for every rate and seed: (rates, seeds, budget + 1), one jit."""
    T = problem.steps
    one = lambda lr, seed: curve(problem, make(lr, T), T, seed)
    fn = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))
    return np.asarray(fn(jnp.asarray(grid, jnp.float32), jnp.asarray(seeds, jnp.uint32)), np.float64)


def run_seeds(problem: Problem, cand: B.Candidate, steps: int, seeds) -> np.ndarray:
    """Curves of ``cand.make(budget)`` for ``steps`` steps on every seed: (seeds, steps + 1), one jit."""
    tx = cand.make(problem.steps)
    fn = jax.jit(jax.vmap(lambda seed: curve(problem, tx, steps, seed, cand.eval_params)))
    return np.asarray(fn(jnp.asarray(seeds, jnp.uint32)), np.float64)


def _hit(curves: np.ndarray, ref_final: np.ndarray | None, floor: float) -> list[float | None]:
    """Per seed: first step where the curve reaches the reference's final loss (floored), as a
    fraction of the budget; ``None`` if never."""
    if ref_final is None:
        return [None] * len(curves)
    out = []
    T = curves.shape[1] - 1
    for c, r in zip(curves, ref_final):
        idx = np.nonzero(np.isfinite(c) & (c <= max(r, floor) * (1 + 1e-6)))[0]
        out.append(float(idx[0] / T) if idx.size else None)
    return out


def _row(kind: str, budget_curves: np.ndarray, floor: float, ref_final, long_curves: np.ndarray | None = None,
         **extra) -> dict:
    T = budget_curves.shape[1] - 1
    rows = {
        "kind": kind,
        "start": budget_curves[:, 0].tolist(),
        "final": budget_curves[:, -1].tolist(),
        "best": np.where(np.isnan(budget_curves), np.inf, budget_curves).min(1).tolist(),
        "hit": _hit(budget_curves, ref_final, floor),
        "curve": _summary_curve(budget_curves),
        **extra,
    }
    if long_curves is not None:
        rows["diverged"] = [diverged(c, T) for c in long_curves]
        rows["long"] = [long_run_stats(c, T)._asdict() for c in long_curves]
        rows["long_steps"] = int(long_curves.shape[1] - 1)
    else:
        rows["diverged"] = [diverged(c) for c in budget_curves]
        rows["long"] = None
    return rows


def _summary_curve(curves: np.ndarray, points: int = 41) -> dict:
    """Median over seeds at ~``points`` steps spaced evenly (for plots; JSON stays small)."""
    T = curves.shape[1] - 1
    steps = np.unique(np.linspace(0, T, points).round().astype(int))
    return {"steps": steps.tolist(), "median": np.median(curves[:, steps], 0).tolist()}


def tuned_row(problem: Problem, name: str, settings: Settings, floor: float, ref_final=None) -> dict:
    seeds = (*settings.tuning_seeds, *settings.seeds)
    curves = run_grid(problem, B.TUNED[name], settings.grid, seeds)
    nt = len(settings.tuning_seeds)
    fin = curves[:, :nt, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(np.isfinite(fin), np.log(np.maximum(fin, floor)), np.inf).mean(1)
    best = int(np.argmin(score))
    if ref_final is None and name == B.REFERENCE:
        ref_final = curves[best, nt:, -1]
    return _row("tuned", curves[best, nt:], floor, ref_final, lr=float(settings.grid[best]),
                lr_scores=score.tolist())


def untuned_row(problem: Problem, cand: B.Candidate, settings: Settings, floor: float, ref_final, kind: str) -> dict:
    T = problem.steps
    long = run_seeds(problem, cand, T * settings.long_factor, settings.seeds)
    return _row(kind, long[:, : T + 1], floor, ref_final, long_curves=long if settings.long_factor > 1 else None)


def step_overhead(problem: Problem, cands: Sequence[B.Candidate], settings: Settings) -> dict[str, float]:
    """Median seconds per step of each candidate / Adam(1e-3)'s on ``problem`` (interleaved)."""
    steps = min(problem.steps, settings.timing_steps)
    rows = [B.UNTUNED["adam_1e-3"], *cands]
    fns = {}
    for c in rows:
        tx = c.make(problem.steps)
        fns[c.name] = jax.jit(lambda seed, tx=tx, c=c: curve(problem, tx, steps, seed, c.eval_params))
    for fn in fns.values():
        fn(0).block_until_ready()
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(settings.timing_rounds):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn(0).block_until_ready()
            times[n].append(time.perf_counter() - t0)
    ref = statistics.median(times["adam_1e-3"])
    return {c.name: statistics.median(times[c.name]) / ref for c in cands}


def environment() -> dict:
    """Where the run happened: :func:`learned_dco.io.environment` (versions, backend, devices,
    CPU count, machine, ``XLA_FLAGS``) in one mapping, the benchmark's version, date and commit."""
    import datetime
    import subprocess
    from pathlib import Path

    from learned_dco.io import environment as probe

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {**probe(flat=True), **_versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit}


def candidate_finals(cand: B.Candidate, problems: Sequence[Problem], settings: Settings) -> dict[str, list[float]]:
    """Problem name -> the candidate's final loss per evaluation seed at the budget (no
    baselines, no long run): the numbers a pretrained card records for a regeneration check."""
    out = {}
    for prob in problems:
        prob = settings.budget(prob)
        out[prob.name] = run_seeds(prob, cand, prob.steps, settings.seeds)[:, -1].tolist()
    return out


def _versions() -> dict:
    return {"bench": BENCH_VERSION, "learned_dco": learned_dco.__version__, "jax": jax.__version__,
            "optax": optax.__version__}


def cache_key(problem: Problem, row: str, definition: str, settings: Settings) -> str:
    """The cache key of a baseline row (see :mod:`learned_dco.bench.cache`)."""
    parts = {"problem": problem.fingerprint, "row": row, "definition": definition, "seeds": list(settings.seeds),
             "versions": _versions(), "floor": FLOOR}
    if row in B.TUNED:
        parts.update(grid=list(settings.grid), tuning_seeds=list(settings.tuning_seeds))
    else:
        parts.update(long_factor=settings.long_factor)
    return C.key(parts)


def _starts(problem: Problem, seeds) -> np.ndarray:
    fn = jax.jit(jax.vmap(lambda s: problem.train_loss(problem.init(jax.random.fold_in(jax.random.PRNGKey(s), 0)))))
    return np.asarray(fn(jnp.asarray(seeds, jnp.uint32)), np.float64)


def run_problem(problem: Problem, candidates: Sequence[B.Candidate], settings: Settings, cache: C.Cache,
                progress: Callable[[str], None] | None = None, baseline_names: Sequence[str] | None = None) -> dict:
    """Every row on one problem: ``{"floor", "rows": {name: row}, "overhead": {...}}``."""
    say = progress or (lambda s: None)
    floor = FLOOR * float(np.mean(np.abs(_starts(problem, settings.seeds))))
    rows: dict[str, dict] = {}
    ref_final = None
    tuned = list(B.TUNED) if baseline_names is None else [n for n in B.TUNED if n in baseline_names]
    untuned = [B.UNTUNED[n] for n in B.UNTUNED if baseline_names is None or n in baseline_names]
    if B.REFERENCE not in tuned:
        raise ValidationError(f"the reference baseline {B.REFERENCE!r} must be run")
    for name in tuned:
        k = cache_key(problem, name, f"tuned {name}", settings)
        row = cache.get(problem.name, name, k)
        t0 = time.perf_counter()
        if row is None:
            row = tuned_row(problem, name, settings, floor, ref_final)
            cache.put(problem.name, name, k, row)
            say(f"  {name} (tuned, lr {row['lr']:.1e}) {time.perf_counter() - t0:.1f} s")
        rows[name] = row
        if name == B.REFERENCE:
            ref_final = np.asarray(row["final"], np.float64)
    extra = [c.start for c in candidates if c.start is not None]
    for cand in [*untuned, *extra, *candidates]:
        if cand.name in rows:
            continue
        cached = cand.fingerprint is not None
        k = cache_key(problem, cand.name, cand.fingerprint, settings) if cached else ""
        row = cache.get(problem.name, cand.name, k) if cached else None
        t0 = time.perf_counter()
        if row is None:
            kind = "candidate" if cand in candidates else ("start" if cand in extra else "untuned")
            row = untuned_row(problem, cand, settings, floor, ref_final, kind)
            if cached:
                cache.put(problem.name, cand.name, k, row)
            say(f"  {cand.name} {time.perf_counter() - t0:.1f} s")
        rows[cand.name] = row
    overhead = step_overhead(problem, [c for c in candidates], settings) if settings.timing and candidates else {}
    return {"floor": floor, "rows": rows, "overhead": overhead}


def run(candidates: Sequence[B.Candidate | str] = (), split: str = "dev", settings: Settings | None = None,
        cache_dir=..., progress: Callable[[str], None] | None = print, problems: Sequence[Problem] | None = None,
        baseline_names: Sequence[str] | None = None) -> dict:
    """Benchmark ``candidates`` (``Candidate`` or names for :func:`~learned_dco.bench.baselines.resolve`)
    on ``split`` (or the given ``problems``); returns the raw result that
    :func:`learned_dco.bench.report.summarise` turns into tables. ``cache_dir``: default
    :func:`~learned_dco.bench.cache.default_dir`, ``None`` for no cache."""
    from learned_dco.bench import problems as P

    settings = settings or Settings()
    cands = [B.resolve(c) if isinstance(c, str) else c for c in candidates]
    names = [c.name for c in cands]
    if len(set(names)) != len(names):
        raise ValidationError(f"optimizers named twice: {names}")
    probs = [settings.budget(p) for p in (problems if problems is not None else P.problem_set(split))]
    cache = C.Cache(C.default_dir() if cache_dir is ... else cache_dir)
    say = progress or (lambda s: None)
    t_start = time.perf_counter()
    per_problem = {}
    for i, prob in enumerate(probs):
        t0 = time.perf_counter()
        say(f"[{i + 1}/{len(probs)}] {prob.name} ({prob.descriptor.model}, {prob.steps} steps"
            f"{', batch %d' % prob.batch if prob.batch else ''}{', control' if prob.control else ''})")
        per_problem[prob.name] = run_problem(prob, cands, settings, cache, say, baseline_names)
        say(f"  done in {time.perf_counter() - t0:.1f} s")
    return {
        "split": split if problems is None else "custom",
        "settings": to_json(dataclasses.asdict(settings)),
        "candidates": names,
        "starts": [c.start.name for c in cands if c.start is not None],
        "problems": [{**p.describe(), "fingerprint": p.fingerprint} for p in probs],
        "results": per_problem,
        "versions": _versions(),
        "environment": environment(),
        "seconds": time.perf_counter() - t_start,
        "cache": {"dir": None if cache.directory is None else str(cache.directory), "hits": cache.hits,
                  "misses": cache.misses},
    }


__all__ = ["BENCH_VERSION", "FLOOR", "Settings", "cache_key", "candidate_finals", "curve", "run", "run_grid", "run_problem", "run_seeds",
           "environment", "step_overhead", "tuned_row", "untuned_row"]
