"""A lean import: what needs neither a QP nor a figure imports neither jaxopt nor matplotlib.

jaxopt is archived; it is imported by the QP backends on their first solve
(``learned_dco.qp._jaxopt``), so importing the package, loading the pretrained optimizer,
the task families and meta-training an optimizer without a QP step (STAR, LearnedProdigy)
never touch it. matplotlib is the ``plots`` extra: without it a figure is one line naming
the extra, never a traceback. Each check runs in a fresh interpreter, so what an earlier
test imported cannot hide an import.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LIBRARY = """
import sys, warnings

def lean(stage):
    assert "jaxopt" not in sys.modules, stage + " imported jaxopt"
    assert "matplotlib" not in sys.modules, stage + " imported matplotlib"

import learned_dco as ldco
lean("import learned_dco")

import jax, jax.numpy as jnp, numpy as np
tx = ldco.pretrained.load("learned_prodigy", num_steps=10)
params = {"w": jnp.ones(3)}
updates, _ = tx.update({"w": jnp.full(3, 0.5)}, tx.init(params), params)
assert np.all(np.isfinite(np.asarray(updates["w"])))
lean("pretrained.load and one update")

from learned_dco import meta, tasks
family = tasks.Quadratic(dim=4)
trainer = meta.MetaTrainer(ldco.STAR(), family, meta.FullUnroll(horizon=2, num_tasks=2))
state = trainer.init(jax.random.PRNGKey(0))
state, metrics = trainer.step(state)
assert np.isfinite(float(metrics.meta_loss))
lean("meta-training STAR")

# The first QP solve brings jaxopt in, without its import-time deprecation notice, and the
# default backend still solves: diag(d) x = -c on a box has the closed form clip(-c / d).
from learned_dco import qp
d, c = jnp.array([2.0, 4.0, 1.0]), jnp.array([1.0, -8.0, 3.0])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sol = qp.solve_qp(qp.Diagonal(d), c, lo=-1.0, hi=1.5)
assert "jaxopt" in sys.modules, "solve_qp did not go through jaxopt"
notices = [str(w.message) for w in caught if "JAXopt" in str(w.message)]
assert not notices, notices
np.testing.assert_allclose(np.asarray(sol.x), np.clip(-c / d, -1.0, 1.5), rtol=1e-6)
print("ok")
"""


def _python(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.mark.integration
def test_library_without_a_qp_imports_no_jaxopt():
    run = _python(LIBRARY)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


CLI = """
import json, sys
from learned_dco.app.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "jaxopt": "jaxopt" in sys.modules, "matplotlib": "matplotlib" in sys.modules}))
"""


@pytest.mark.integration
def test_cli_train_of_a_non_qp_recipe_imports_no_jaxopt(tmp_path):
    """``learned-dco train pretrain_learned_prodigy`` (the shipped recipe, by name), shrunk
    to one meta-step on two-step episodes."""
    sets = ["train.num_steps=1", "train.checkpoint_every=0", "estimator.num_tasks=2", "estimator.horizon=2",
            "estimator.truncation=2", "task.horizons=[2]"]
    argv = ["train", "pretrain_learned_prodigy", "--out", str(tmp_path / "run"), "--no-progress", "--no-compile-cache"]
    for s in sets:
        argv += ["--set", s]
    run = _python(CLI, *argv, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "jaxopt": False, "matplotlib": False}, run.stderr[-3000:]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
