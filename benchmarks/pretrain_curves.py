"""Meta-training curves of one or more ``learned-dco train`` runs, as one PNG.

The meta-loss (mean clipped log training loss over an episode) is on very different levels
for different mixture members, so each point is shown relative to the *first* meta-loss seen
for the same (member, horizon) pair: below 0 means that member now trains to lower losses than
at the start of meta-training. A running mean over 20 meta-steps is drawn on top.

    python benchmarks/pretrain_curves.py NAME=RUN_DIR [...] --out curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def relative_curve(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(meta-step, meta-loss minus the first meta-loss of the same member and horizon)."""
    first, steps, rel = {}, [], []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not np.isfinite(r.get("meta_loss", np.nan)):
            continue
        key = (r.get("member"), r.get("horizon"))
        first.setdefault(key, r["meta_loss"])
        steps.append(r["step"])
        rel.append(r["meta_loss"] - first[key])
    return np.asarray(steps), np.asarray(rel)


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    fig, ax = plt.subplots(figsize=(7, 4))
    for spec in args.runs:
        name, _, run_dir = spec.partition("=")
        steps, rel = relative_curve(run_dir)
        if len(steps) == 0:
            continue
        line, = ax.plot(steps, rel, ".", alpha=0.3, ms=3)
        k = min(20, len(rel))
        smooth = np.convolve(rel, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color=line.get_color(), label=f"{name} ({len(steps)} meta-steps)")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-loss - first meta-loss of the same member")
    ax.set_title("meta-training (mean log training loss per episode)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
