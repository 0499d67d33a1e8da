"""The scripts in examples/ run to completion and print evidence that they worked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "pretrained_nnx.py": "loss decreased",
    "meta_train_flax.py": "\nimproved",
    "constrained_dco.py": "loss decreased, iterates feasible",
}


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.integration
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert EXPECTED[script] in proc.stdout, proc.stdout


def test_readme_opens_with_the_pretrained_example():
    """The README's first code block is examples/pretrained_nnx.py's user code."""
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "ldco.pretrained.load(\"learned_prodigy\"" in first_block and "nnx.Optimizer" in first_block
    assert readme.index("```python") < readme.index("## Two commands")
