r"""Ship a meta-trained optimizer, or refresh a shipped card's benchmark numbers.

Ship: reads a finished ``learned-dco train`` run directory (its resolved config is the card's
recipe, its metrics the wall time) and writes ``NAME.msgpack`` + ``NAME.json`` into
``learned_dco/pretrained/weights``. Refresh (``--update-card``): keeps the shipped weights and
recipe and rewrites only the card's ``heldout`` section.

The ``heldout`` section records the ``learned-dco bench`` results (docs/bench.md): the
``test`` split's single run (commit, date, hardware, the aggregate rows of the optimizer,
its untrained start and the reference baselines, the optimizer's per-problem rows), the
``dev`` run, and ``quick``: the optimizer's final losses on three dev problems at the quick
budgets, which ``tests/test_pretrained_shipped.py`` regenerates (a stale card, or weights
changed without rerunning, fail).

Run::

    learned-dco bench learned_prodigy --split test --out docs/bench/test   # once
    learned-dco bench learned_prodigy --split dev --out docs/bench/dev
    python -m benchmarks.ship_pretrained --update-card --name learned_prodigy \
        --test docs/bench/test/bench.json --dev docs/bench/dev/bench.json
    python -m benchmarks.ship_pretrained runs/pretrain_learned_prodigy --name learned_prodigy \
        --config learned_dco/configs/pretrain_learned_prodigy.yaml --test ... --dev ... --cpu-hours 0.8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import learned_dco as ldco
from learned_dco import bench
from learned_dco.bench import problems as P
from learned_dco.bench import report
from learned_dco.bench import runner

QUICK_PROBLEMS = ("diabetes_mlp_relu", "deep_linear_4", "rosenbrock_2d")
"""Dev problems whose quick-budget final losses a card records for regeneration."""

KEY_ROWS = ("adam", "adam_cosine", "prodigy", "prodigy_linear_decay")

PAIRED_AGAINST = ("prodigy", "prodigy_linear_decay", "dog", "dadapt_adamw", "schedule_free_adamw", "adam_cosine")
"""Rows a shipped optimizer is compared with, paired over problems (besides its untrained start)."""


def quick_finals(candidate: bench.Candidate) -> dict:
    settings = bench.Settings.quick()
    probs = [P.by_name(n) for n in QUICK_PROBLEMS]
    return {"problems": list(QUICK_PROBLEMS), "budget_scale": settings.budget_scale, "seeds": list(settings.seeds),
            "final": runner.candidate_finals(candidate, probs, settings)}


def test_quick_finals(candidate: bench.Candidate) -> dict:
    """The candidate's final losses on every test problem at the quick budgets
    (``learned-dco bench NAME --split test --quick``'s candidate rows): the card's regeneration
    record for the test split."""
    settings = bench.Settings.quick()
    probs = bench.problem_set("test")
    return {"problems": [p.name for p in probs], "budget_scale": settings.budget_scale, "seeds": list(settings.seeds),
            "final": runner.candidate_finals(candidate, probs, settings)}


def split_section(summary: dict, label: str, files: str) -> dict:
    """One split's record for the card: environment, the aggregate rows of ``label``, its
    untrained start and the reference baselines, and ``label``'s per-problem rows."""
    keep = {label, f"{label} (untrained)", *KEY_ROWS}
    return {
        "split": summary["split"],
        "files": files,
        "environment": summary.get("environment"),
        "seconds": summary.get("seconds"),
        "settings": summary.get("settings"),
        "aggregate": [r for r in summary["aggregate"] if r["optimizer"] in keep],
        "per_problem": [r for r in summary["per_problem"] if r["optimizer"] == label],
        "paired": paired_rows(summary, label),
    }


def paired_rows(summary: dict, label: str) -> list[dict]:
    """``label`` against its untrained start and :data:`PAIRED_AGAINST`, paired over the split's
    held-out problems (:func:`learned_dco.bench.report.paired`), for the rows the run holds."""
    rows = next(iter(summary["results"].values()))["rows"]
    others = [o for o in (f"{label} (untrained)", *PAIRED_AGAINST) if o in rows]
    return [report.paired(summary, label, o) for o in others] if label in rows else []


def card_heldout(label: str, candidate: bench.Candidate, test: str | None, dev: str | None) -> dict:
    out = {"benchmark": "learned-dco bench (learned_dco.bench, docs/bench.md)",
           "note": "test is run once per shipped optimizer; nothing is chosen on it"}
    for name, path in (("test", test), ("dev", dev)):
        if path:
            out[name] = split_section(json.loads(Path(path).read_text()), label, str(Path(path).parent))
    out["quick"] = quick_finals(candidate)
    if test:
        out["test_quick"] = test_quick_finals(candidate)
    return out


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", help="a finished `learned-dco train` run (not with --update-card)")
    ap.add_argument("--name", required=True, help="the shipped name (ldco.pretrained.load(NAME))")
    ap.add_argument("--update-card", action="store_true", help="keep the shipped weights, rewrite the heldout section")
    ap.add_argument("--config", help="the recipe's config file (learned_dco/configs/pretrain_<name>.yaml)")
    ap.add_argument("--test", help="bench.json of the test-split run")
    ap.add_argument("--dev", help="bench.json of a dev-split run")
    ap.add_argument("--cpu-hours", type=float, default=None, help="measured CPU time of the meta-training run")
    ap.add_argument("--note", default=None, help="free text for the card (how the run was measured)")
    ap.add_argument("--root", default=None, help="where to write (default: the package's weights/)")
    args = ap.parse_args(argv)
    if args.update_card:
        lopt, meta = ldco.pretrained.load_lopt(args.name, root=args.root)
        card = ldco.pretrained.card(args.name, root=args.root)
        heldout = card_heldout(args.name, bench.resolve(args.name), args.test, args.dev)
        path = ldco.pretrained.save(args.name, lopt, meta, root=args.root or ldco.pretrained.WEIGHTS_DIR,
                                    options=card.get("options"), recipe=card.get("recipe"), heldout=heldout)
    else:
        if not args.run_dir or not args.config:
            ap.error("shipping needs RUN_DIR and --config (or pass --update-card)")
        from learned_dco.app.runs import load_trained
        from learned_dco.app.cards import ship_run

        trained = load_trained(args.run_dir)
        cand = bench.Candidate(args.name, lambda steps: bench.baselines.with_steps(trained.lopt, steps).opt_fn(trained.meta))
        extra = {k: v for k, v in {"cpu_hours": args.cpu_hours, "note": args.note}.items() if v is not None}
        path = ship_run(args.run_dir, args.name, root=args.root, config=args.config,
                        heldout=card_heldout(args.name, cand, args.test, args.dev), extra=extra)
    print(f"wrote {path} and {path.with_suffix('.msgpack')}")
    return path


if __name__ == "__main__":
    main()
