"""The meta-training recipes of the transferable designs (learned_dco/configs/pretrain_*.yaml):
each, shrunk to a tiny size, resumes after an interruption to the same bytes as an
uninterrupted run (meta-parameters, checkpoint and the metrics' values)."""

import json
from pathlib import Path

import pytest
import yaml

from learned_dco.app import cli
from learned_dco.bench.structure import CONFIG_DIR

RECIPES = ["pretrain_prodigy_controller", "pretrain_prodigy_param_mlp", "pretrain_dcom_controller"]


def _tiny(name: str, folder: Path) -> Path:
    """The shipped recipe with its optimizer, estimator kind and meta-loss kept, and every size cut."""
    cfg = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    cfg["task"]["members"] = cfg["task"]["members"][:2]
    cfg["task"]["horizons"] = [5]
    cfg["estimator"].update(horizon=5, truncation=5, num_tasks=2)
    cfg["train"].update(num_steps=4, checkpoint_every=1)
    cfg["eval"].update(num_tasks=2, num_steps=5)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _artifacts(run: Path):
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return ((run / "meta.msgpack").read_bytes(), (run / "checkpoint.msgpack").read_bytes(),
            [(r["step"], r["meta_loss"], r["grad_norm"], r["member"]) for r in lines])


@pytest.mark.slow  # three tiny meta-training runs per recipe: ~1 min each on a quiet 2-core CPU, compile-bound
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_resumes_to_the_same_bytes(name, tmp_path):
    config = _tiny(name, tmp_path)
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli.main(["train", str(config), "--out", str(full), "--no-progress"]) == 0
    assert cli.main(["train", str(config), "--out", str(cut), "--set", "train.num_steps=2", "--no-progress"]) == 0
    assert cli.main(["train", "--resume", str(cut), "--set", "train.num_steps=4", "--no-progress"]) == 0
    a, b = _artifacts(full), _artifacts(cut)
    assert len(a[2]) == 4 and a == b
