"""Timing helpers shared by the benchmarks: interleaved repeats, medians, JSON output.

Machines here are shared and noisy, so every figure is reported as a ratio against a
reference measured in the same run, with candidate and reference runs interleaved.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable

import jax

from learned_dco import io

RESULTS = Path(__file__).resolve().parent / "results"


def block(x):
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def interleaved_samples(
    fns: dict[str, Callable[[], object]], repeats: int = 20, number: int = 1, budget_s: float = 20.0
) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument function, one sample per round, runs interleaved.

    Each function is called once first (compilation), then up to ``repeats`` rounds (at
    least 3, fewer when a round is slow enough to overrun ``budget_s``) run every function
    ``number`` times in turn, so slow phases of a shared machine hit all alike.
    """
    for fn in fns.values():
        block(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start_all = time.perf_counter()
    for i in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                out = fn()
            block(out)
            samples[name].append((time.perf_counter() - start) / number)
        if i >= 2 and (time.perf_counter() - start_all) * (i + 2) / (i + 1) > budget_s:
            break
    return samples


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int = 20, number: int = 1, budget_s: float = 20.0
) -> dict[str, float]:
    """Median seconds per call of each zero-argument function (:func:`interleaved_samples`)."""
    samples = interleaved_samples(fns, repeats, number, budget_s)
    return {name: statistics.median(times) for name, times in samples.items()}


def unroll_steps(tx, loss, theta, task, steps: int):
    """``steps`` iterations of ``theta + tx.update(grad loss(theta, task), state, theta)`` in
    one ``lax.scan`` (the QP-step benchmarks' inner loop on a bare loss); returns theta."""
    state = tx.init(theta)

    def body(carry, _):
        theta, state = carry
        u, state = tx.update(jax.grad(loss)(theta, task), state, theta)
        return (theta + u, state), None

    return jax.lax.scan(body, (theta, state), length=steps)[0][0]


def environment() -> dict[str, object]:
    """Versions, backend, devices, CPU count, machine and ``XLA_FLAGS`` in one mapping."""
    return io.environment(flat=True)


def write_json(name: str, data: dict, out_dir: str | os.PathLike | None = None) -> Path:
    """``{"benchmark": name, "environment": ..., **data}`` as ``out_dir/name.json`` (default
    ``benchmarks/results``), written atomically with the project's JSON rule."""
    out = Path(out_dir) if out_dir else RESULTS
    return io.atomic_write_json(out / f"{name}.json", {"benchmark": name, "environment": environment(), **data},
                                indent=2)


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain markdown table."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
