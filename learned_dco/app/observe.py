"""Watching a run: TensorBoard event files and PNG plots of ``metrics.jsonl``.

* :func:`tensorboard_writer` opens ``RUN_DIR/tensorboard/`` (TensorBoard event files, one
  scalar per metric and meta-step, tag ``meta/<name>``) with tensorboardX, the optional
  extra ``learned-dco[tensorboard]``; ``tensorboard --logdir RUN_DIR`` shows it.
* :func:`plot_run` draws the meta-training curves of a run directory (meta-loss, inner
  training loss, meta-gradient norm per meta-step, and the held-out evaluation curves of
  ``learned-dco eval`` when ``eval/results.json`` exists) into one PNG with matplotlib, the
  optional extra ``learned-dco[plots]``.

Both libraries are imported only when asked for; without them the command fails with one
line naming the extra to install.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from learned_dco.app.rundir import METRICS, RunError
from learned_dco.io import json_number

TENSORBOARD_DIR = "tensorboard"
PLOT_FILE = "meta_training.png"
SKIP_KEYS = ("step",)  # the x axis, not a curve


def _tensorboardx():
    from learned_dco import extras

    return extras.require("tensorboardX", "tensorboard", "event files (--tensorboard)")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of one ``metrics.jsonl`` record (booleans as 0/1), without ``step``."""
    out = {}
    for name, value in record.items():
        if name in SKIP_KEYS or isinstance(value, (str, list, dict)) or value is None:
            continue
        out[name] = float(value)
    return out


def require_tensorboard() -> None:
    """Fail at once (one line naming the extra) when tensorboardX is not installed."""
    _tensorboardx()


class TensorBoard:
    """An open event-file writer: :meth:`write` one record per meta-step, then :meth:`close`."""

    def __init__(self, logdir: str | Path):
        tbx = _tensorboardx()
        self.logdir = Path(logdir)
        self._writer = tbx.SummaryWriter(logdir=str(self.logdir))

    def write(self, step: int, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self._writer.add_scalar(f"meta/{name}", value, global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def tensorboard_writer(run_dir: str | Path) -> TensorBoard:
    """A :class:`TensorBoard` writing into ``run_dir/tensorboard``."""
    return TensorBoard(Path(run_dir) / TENSORBOARD_DIR)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line, left by a crash, is dropped)."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: missing; is this a run directory written by `learned-dco train`?")
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise RunError(f"{path}:{i + 1}: not a JSON object") from None
    if not records:
        raise RunError(f"{path}: no meta-steps recorded yet")
    return records


def _series(records: Iterable[dict], name: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


CURVES = (("meta_loss", "meta-loss"), ("train_loss", "inner training loss"), ("grad_norm", "meta-gradient norm"))


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the meta-training curves of ``run_dir`` as a PNG (default ``run_dir/meta_training.png``)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / METRICS)
    from learned_dco import extras

    plt = extras.pyplot()

    evaluation = run_dir / "eval" / "results.json"
    panels = [(k, t) for k, t in CURVES if _series(records, k)[0]]
    extra = sorted({k for r in records for k in r if k.startswith(("eval", "val"))})
    panels += [(k, k) for k in extra if _series(records, k)[0]]
    n = len(panels) + evaluation.exists()
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        xs, ys = _series(records, key)
        ax.plot(xs, ys, lw=1.2)
        if ys and min(ys) > 0:
            ax.set_yscale("log")
        ax.set(title=title, xlabel="meta-step")
        ax.grid(alpha=0.3)
    if evaluation.exists():
        ax = axes[0][-1]
        results = json.loads(evaluation.read_text())
        steps = results.get("steps") or []
        for name, curve in results.get("curves", {}).items():
            mean = curve.get("mean") if isinstance(curve, dict) else None
            if mean:
                mean = [json_number(v) for v in mean]  # "inf"/"nan" (or an older file's null) -> float
                ax.plot(steps[: len(mean)] if steps else range(len(mean)), mean, lw=1.2, label=name)
        ax.set(title="held-out evaluation (mean val loss)", xlabel="inner step", yscale="log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name, fontsize=9)
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / PLOT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["TENSORBOARD_DIR", "PLOT_FILE", "TensorBoard", "tensorboard_writer", "read_metrics", "scalars", "plot_run"]
