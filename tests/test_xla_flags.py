"""The XLA flags ``reproduce --quick`` adds (learned_dco/app/xla.py): added when absent, the
user's own value kept when ``XLA_FLAGS`` names the flag, in force in XLA itself when a fresh
process runs a quick study, and absent from runs that are not quick."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from learned_dco.app import xla

ROOT = Path(__file__).resolve().parents[1]
QUICK = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


@pytest.mark.parametrize("user, expected", [
    ("", QUICK),
    ("--xla_force_host_platform_device_count=2", "--xla_force_host_platform_device_count=2 " + QUICK),
    ("--xla_cpu_use_fusion_emitters=true", "--xla_cpu_use_fusion_emitters=true --xla_backend_optimization_level=0"),
    ("  --xla_cpu_use_fusion_emitters  --xla_backend_optimization_level=1 ",
     "--xla_cpu_use_fusion_emitters  --xla_backend_optimization_level=1"),
    ("--xla_cpu_use_fusion_emitters_extra=1", "--xla_cpu_use_fusion_emitters_extra=1 " + QUICK),
])
def test_defaults_are_added_only_where_the_user_named_nothing(user, expected):
    assert xla.with_defaults(user, xla.quick_defaults((0, 10, 2))) == expected


def test_apply_sets_the_environment_only_when_there_is_something_to_set():
    env = {}
    assert xla.apply_defaults(environ=env) == env["XLA_FLAGS"] == " ".join(xla.QUICK_DEFAULTS)
    xla.apply_defaults((), environ=(empty := {}))
    assert empty == {}


def test_quick_flags_name_only_what_the_installed_xla_knows():
    """XLA aborts the process on an unknown flag; the fusion-emitter switch is gone from the
    jaxlib releases for Python >= 3.12. A fresh process with the quick flags starts XLA."""
    level, emitters = "--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"
    assert xla.quick_defaults((0, 8, 0)) == xla.quick_defaults((0, 10, 2)) == (level, emitters)
    assert xla.quick_defaults((0, 11, 0)) == xla.quick_defaults((0, 12, 1)) == (level,)
    assert xla.quick_defaults(()) == (level,)  # unknown jaxlib: only what every release knows
    env = dict(os.environ, XLA_FLAGS=" ".join(xla.QUICK_DEFAULTS), JAX_PLATFORMS="cpu")
    code = "import jax; print(float(jax.numpy.ones(3).sum()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "3.0", out.stderr[-2000:]


# A fresh process registers a study that only reports the flags XLA compiles with, then runs
# it through the CLI: XLA parses XLA_FLAGS when its first backend starts, inside the study.
PROBE = """
import sys
import jax
from jax._src.lib import xla_client as xc
from learned_dco.app import cli
from learned_dco.studies import STUDIES
from learned_dco.studies.common import Study


def run(out, *, quick, seed):
    jax.numpy.zeros(1).block_until_ready()
    compile_options = xc.CompileOptions()  # held: its debug options are a view into it
    build = compile_options.executable_build_options
    options = str(build.debug_options).splitlines()
    names = ("xla_backend_optimization_level:", "xla_cpu_use_fusion_emitters:")
    print("FLAGS", sorted(ln.strip() for ln in options if ln.strip().startswith(names)))
    return {}


STUDIES["probe"] = Study("probe", "p", "d", "__main__")
sys.exit(cli.main(["reproduce", "probe", "--out", sys.argv[1], *sys.argv[2:]]))
"""


@pytest.mark.parametrize("user, quick, level, emitters", [
    (None, True, 0, "false"),
    ("--xla_cpu_use_fusion_emitters=true", True, 0, "true"),
    (None, False, 3, "true"),  # not quick: XLA's own defaults
])
@pytest.mark.integration
def test_a_fresh_quick_run_compiles_with_the_flags(tmp_path, user, quick, level, emitters):
    known = "--xla_cpu_use_fusion_emitters=false" in xla.QUICK_DEFAULTS  # this jaxlib has the switch
    if user is not None and not known:
        pytest.skip("this jaxlib's XLA has no fusion-emitter flag to set")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", LEARNED_DCO_COMPILE_CACHE="0")
    if user is not None:
        env["XLA_FLAGS"] = user
    cmd = [sys.executable, str(script), str(tmp_path / "out")] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("FLAGS")][-1]
    want = [f"xla_backend_optimization_level: {level}"] + ([f"xla_cpu_use_fusion_emitters: {emitters}"] if known else [])
    assert line == f"FLAGS {want}", line
