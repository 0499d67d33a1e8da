r"""``learned-dco bench``: a held-out benchmark for optimizers with a dev/test split, seeds,
confidence intervals and tuning-free baselines.

Example::

    from learned_dco import bench
    result = bench.run(["learned_prodigy"], split="dev")     # raw runs (baselines cached on disk)
    summary = bench.summarise(result)                        # aggregates with bootstrap intervals
    print(bench.aggregate_table(summary))
    bench.write(summary, "results/bench")                    # bench.json, bench.md, bench_profile.png

Modules: :mod:`~learned_dco.bench.problems` (problems, splits, descriptors),
:mod:`~learned_dco.bench.structure` (overlap with the meta-training mixtures),
:mod:`~learned_dco.bench.baselines` (rows), :mod:`~learned_dco.bench.stats` (t-intervals,
paired outcomes, IQM, bootstrap), :mod:`~learned_dco.bench.divergence` (the divergence
rule), :mod:`~learned_dco.bench.cache` (baseline cache), :mod:`~learned_dco.bench.runner`
(running), :mod:`~learned_dco.bench.report` (tables, profile, files). See docs/bench.md.
"""

from learned_dco.bench import report
from learned_dco.bench.baselines import GRID, TUNED, UNTUNED, Candidate, resolve
from learned_dco.bench.divergence import diverged, long_run_stats
from learned_dco.bench.problems import SPLITS, Descriptor, Problem, problem_set
from learned_dco.bench.report import aggregate, aggregate_table, markdown, per_problem, summarise, write
from learned_dco.bench.runner import Settings, run
from learned_dco.bench.structure import overlaps, shipped_recipes

__all__ = ["Candidate", "Descriptor", "GRID", "Problem", "SPLITS", "Settings", "TUNED", "UNTUNED", "aggregate",
           "aggregate_table", "diverged", "long_run_stats", "markdown", "overlaps", "per_problem", "problem_set", "resolve",
           "run", "shipped_recipes", "summarise", "write"]
