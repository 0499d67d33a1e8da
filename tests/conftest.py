"""Test configuration: gradient checks run in float64 where a test asks for it.

The suite is dominated by XLA compilation (hundreds of small programs, each run a few
times), so tests compile with XLA's backend optimisation level 0 (about 30% less CPU time
here) and, on the CPU, without XLA's new fusion emitters (``xla_cpu_use_fusion_emitters``:
the float64 meta-gradient of the fused Blackbox update compiles in 7.7 s instead of 17.9 s).
Results stay within the tests' tolerances: the tests compare against references computed in
the same process. Tests that start ``learned-dco`` processes pass the same ``XLA_FLAGS`` on.
Set ``XLA_FLAGS`` yourself to override.
"""

import os

from learned_dco.app.xla import QUICK_DEFAULTS  # importing the package starts no XLA backend

os.environ.setdefault("XLA_FLAGS", " ".join(QUICK_DEFAULTS))  # the flags of `reproduce --quick`

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def module_compilation_cache(tmp_path_factory):
    """A persistent XLA compilation cache for one test module (request it from an autouse
    module fixture): tests that rebuild the same program, as separate processes would,
    load it instead of compiling it again. Restores the previous settings afterwards."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    jax.config.update(names[0], str(tmp_path_factory.mktemp("xla-cache")))
    jax.config.update(names[1], 0.0)
    jax.config.update(names[2], 0)
    cc.reset_cache()
    yield
    for n, v in saved.items():
        jax.config.update(n, v)
    cc.reset_cache()


@pytest.fixture
def x64():
    """Run one test with float64 enabled (central finite differences need it)."""
    with jax.enable_x64(True):
        yield


# Heaviest test modules first (CPU seconds of a default-suite run on 2 cores, rounded;
# measured with --durations). pytest-xdist's ``--dist loadscope`` hands whole modules to the
# workers in collection order (pyproject passes ``--no-loadscope-reorder``, which would
# otherwise order them by number of tests), so scheduling the longest first keeps both
# workers busy to the end instead of leaving one long module running alone at the tail.
# The order only moves modules; tests within a module keep their order. Unlisted modules
# follow in their usual (alphabetical) order.
HEAVIEST_FIRST = (
    "test_study_dco.py",
    "test_studies.py",
    "test_star.py",
    "test_estimators.py",
    "test_faults.py",
    "test_cli.py",
    "test_l2o.py",
    "test_mirror.py",
    "test_tasks.py",
    "test_stepsize_l2l.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps order within a rank
