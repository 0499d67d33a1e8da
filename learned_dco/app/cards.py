"""Ship a finished ``learned-dco train`` run as a pretrained optimizer card.

:func:`ship_run` writes the run's final meta-parameters with :func:`learned_dco.pretrained.save`
and records how they were made (:func:`run_recipe`: the resolved config's sections, the
meta-steps taken, the wall time, versions and hardware) as the card's ``recipe``. Loading a
card needs only :mod:`learned_dco.pretrained`; this module reads run directories, so it
belongs to the application wing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from learned_dco import pretrained
from learned_dco.app.runs import load_trained


def run_recipe(run_dir: str | Path, config: str | None = None) -> dict[str, Any]:
    """The meta-training recipe of a finished ``learned-dco train`` run directory: the
    resolved config's sections, the meta-steps taken, the wall time (sum of the per-step
    seconds in ``metrics.jsonl``, compilation included), versions and hardware."""
    run_dir = Path(run_dir)
    trained = load_trained(run_dir)
    cfg = trained.config.resolved().to_dict()
    seconds, steps = 0.0, 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line (crash mid-append)
        seconds += float(record.get("seconds", 0.0))
        steps += 1
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    return {
        "config": config,
        "seed": cfg["seed"],
        "optimizer": cfg["optimizer"],
        "task": cfg["task"],
        "estimator": cfg["estimator"],
        "meta_optimizer": cfg["meta_optimizer"],
        "meta_steps": trained.meta_step,
        "wall_seconds": round(seconds, 1),
        "metrics_lines": steps,
        "versions": info.get("versions"),
        "hardware": info.get("device"),
    }


def ship_run(
    run_dir: str | Path,
    name: str,
    *,
    root: str | Path | None = None,
    config: str | None = None,
    heldout: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Ship the meta-parameters of ``learned-dco train`` run ``run_dir`` as ``name`` into
    ``root`` (default: the package's ``weights/``), with :func:`run_recipe` as the card's
    recipe (plus ``extra``, e.g. the measured CPU time) and ``heldout`` as its held-out
    numbers; returns the card's path. A horizon-aware optimizer (a ``num_steps`` field) gets
    the ``load(name, num_steps=...)`` option."""
    trained = load_trained(run_dir)
    fields = {f.name for f in dataclasses.fields(trained.lopt)}
    options = {"num_steps": "num_steps"} if "num_steps" in fields else {}
    recipe = dict(run_recipe(run_dir, config), **(extra or {}))
    return pretrained.save(name, trained.lopt, trained.meta, root=pretrained.WEIGHTS_DIR if root is None else root,
                           options=options, recipe=recipe, heldout=heldout)


__all__ = ["run_recipe", "ship_run"]
