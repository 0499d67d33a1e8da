r"""Ship a meta-trained optimizer: weights + card into ``learned_dco/pretrained/weights``.

Reads a finished ``learned-dco train`` run directory (its resolved config is the card's
recipe, its metrics the wall time) and a full held-out result (``python -m
benchmarks.heldout --run LABEL=DIR ...``, its ``heldout.json``), runs the held-out quick
mode for the shipped weights (the numbers ``tests/test_pretrained_shipped.py``
regenerates, so a stale card fails), and writes ``NAME.msgpack`` + ``NAME.json``. The card
keeps the summary table of every design in the held-out result (untrained and untuned
rows included) and the shipped optimizer's per-problem rows.

Run::

    python -m benchmarks.ship_pretrained runs/pretrain_learned_prodigy --name learned_prodigy \
        --config learned_dco/configs/pretrain_learned_prodigy.yaml --heldout benchmarks/results/heldout.json \
        --label run:learned_prodigy --cpu-hours 0.8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import learned_dco as ldco
from benchmarks import heldout as H


def card_heldout(full: dict, label: str, quick_rows: list[dict]) -> dict:
    """The card's ``heldout`` section from a full held-out result and the quick rows."""
    mine = [r for r in full["rows"] if r["optimizer"] == label]
    if not mine:
        raise SystemExit(f"{label!r} is not a row of the held-out result (rows: {sorted({r['optimizer'] for r in full['rows']})})")
    return {
        "benchmark": "benchmarks/heldout.py",
        "full": {
            "mode": full.get("mode"),
            "steps": full["steps"],
            "long_factor": full["long_factor"],
            "long_steps": full.get("long_steps"),
            "label": label,
            "summary": full["summary"],  # every design, untrained and untuned rows included
            "rows": mine,
            "environment": full.get("environment"),
        },
        "quick": {**H.QUICK, "rows": quick_rows},
    }


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--name", required=True, help="the shipped name (ldco.pretrained.load(NAME))")
    ap.add_argument("--config", required=True, help="the recipe's config file (learned_dco/configs/pretrain_<name>.yaml)")
    ap.add_argument("--heldout", required=True, help="heldout.json of a full held-out run that includes this run")
    ap.add_argument("--label", required=True, help="this run's row label in that result (e.g. run:NAME)")
    ap.add_argument("--cpu-hours", type=float, default=None, help="measured CPU time of the meta-training run")
    ap.add_argument("--note", default=None, help="free text for the card (how the run was measured)")
    ap.add_argument("--root", default=None, help="where to write (default: the package's weights/)")
    args = ap.parse_args(argv)
    full = json.loads(Path(args.heldout).read_text())
    quick = H.quick_rows({args.label: H.run_candidate(args.run_dir)})
    extra = {k: v for k, v in {"cpu_hours": args.cpu_hours, "note": args.note}.items() if v is not None}
    path = ldco.pretrained.from_run(args.run_dir, args.name, root=args.root, config=args.config,
                                    heldout=card_heldout(full, args.label, quick), extra=extra)
    print(f"wrote {path} and {path.with_suffix('.msgpack')}")
    return path


if __name__ == "__main__":
    main()
