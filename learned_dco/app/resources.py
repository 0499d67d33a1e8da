r"""Resources: refuse run sizes this machine cannot hold, before anything is allocated.

:func:`check_construction_size` runs while a task section is parsed (families with
``num_samples`` and ``dim`` build a data matrix when constructed);
:func:`estimate_memory` and :func:`check_memory` read a parsed run config's values (task
shapes from ``jax.eval_shape``, nothing allocated) and raise :class:`ResourceError`
giving the estimate.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax

from learned_dco.app.coercion import ConfigError

__all__ = [
    "ResourceError", "host_memory", "available_memory", "fmt_bytes", "check_construction_size", "estimate_memory",
    "check_memory",
]


class ResourceError(ConfigError):
    """A config whose sizes exceed what this machine can hold (the message gives the estimate)."""


def host_memory() -> int:
    """Physical memory of this host in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 2**62


def available_memory() -> tuple[int, str]:
    """``(bytes, where)``: the first device's memory limit, or the host's physical memory."""
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # not every backend implements it
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{dev.platform} device memory"
    return host_memory(), "host memory"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_construction_size(cls: type, options: Mapping[str, Any], path: str, fraction: float = 0.8) -> None:
    """Families with ``num_samples`` and ``dim`` fields build a float64 design matrix of
    that size when constructed (e.g. the shifted least-squares family's fixed ``X``):
    refuse it before NumPy tries. (Other sizes are checked by :func:`check_memory`.)"""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.init}
    sizes = {**defaults, **options}
    n, d = sizes.get("num_samples"), sizes.get("dim")
    if not (isinstance(n, int) and isinstance(d, int)):
        return
    need, limit = 8 * n * d, host_memory()
    if need > fraction * limit:
        raise ResourceError(
            f"{path}.num_samples: {n} samples x {d} dimensions is a {fmt_bytes(need)} data matrix, more than "
            f"{fraction:.0%} of the {fmt_bytes(limit)} of host memory; reduce {path}.num_samples or {path}.dim"
        )


def _bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def estimate_memory(cfg) -> dict[str, int]:
    """A lower-bound estimate in bytes of the arrays a run of ``cfg`` (a parsed
    :class:`~learned_dco.app.config.RunConfig`) holds at once.

    Shapes come from ``jax.eval_shape`` (nothing is allocated): one task ``T`` and its
    parameters ``P``. Terms: the fixed training pool (``num_train_tasks x T``); a meta-step's
    batch (``num_tasks x (T + P x (steps + 2))``: reverse mode keeps the parameters of every
    unrolled step, ``steps`` = the truncation or the horizon); the evaluation's held-out and
    tuning tasks (``2 x eval.num_tasks x T``).

    A task mixture is estimated for its worst member (largest total) at its largest
    horizon (the horizon replaces the estimator's truncation/horizon); ``member`` is then
    that member's index.
    """
    family, est = cfg.task.value, cfg.estimator.value
    mixture = cfg.task.is_mixture
    key = jax.random.PRNGKey(0)
    n = int(getattr(est, "num_tasks", 1))
    if mixture:
        steps = max(family.horizons)
    else:
        steps = int(getattr(est, "truncation", None) or getattr(est, "horizon", 1) or 1)
    worst = None
    for i, member in enumerate(family.members if mixture else (family,)):
        where = f"task.members[{i}]" if mixture else "task"
        try:
            task = jax.eval_shape(member.sample, key)
            params = jax.eval_shape(member.init_params, key, task)
        except (ValueError, TypeError, OverflowError, MemoryError) as e:
            raise ConfigError(f"{where}: cannot build a task of this size: {e}") from None
        t, p = _bytes(task), _bytes(params)
        out = {
            "task": t,
            "params": p,
            "pool": (cfg.train.num_train_tasks or 0) * t,
            "meta_step": n * (t + p * (steps + 2)),
            "eval": 2 * cfg.eval.num_tasks * t,
        }
        if mixture:
            out["member"] = i
        if worst is None or _total(out) > _total(worst):
            worst = out
    return worst


def _total(est: Mapping[str, int]) -> int:
    return est["pool"] + est["meta_step"] + est["eval"]


def check_memory(cfg, limit: int | None = None, *, fraction: float = 0.8) -> dict[str, int]:
    """Raise :class:`ResourceError` if :func:`estimate_memory` exceeds ``fraction`` of the
    available memory (``limit`` bytes, default :func:`available_memory`); return the estimate."""
    est = estimate_memory(cfg)
    where = "given limit"
    if limit is None:
        limit, where = available_memory()
    total = _total(est)
    if total > fraction * limit:
        worst = max(("pool", "meta_step", "eval"), key=est.get)
        blame = {
            "pool": f"train.num_train_tasks={cfg.train.num_train_tasks} x one task",
            "meta_step": "estimator.num_tasks x (one task + parameters per unrolled step)",
            "eval": f"2 x eval.num_tasks={cfg.eval.num_tasks} x one task",
        }[worst]
        member = (
            f"; worst member task.members[{est['member']}] ({cfg.task.members[est['member']].name}) "
            f"at horizon {max(cfg.task.value.horizons)}"
            if "member" in est else ""
        )
        raise ResourceError(
            f"task: this config needs about {fmt_bytes(total)}{member} (one task {fmt_bytes(est['task'])}, "
            f"its parameters {fmt_bytes(est['params'])}; largest term {worst}: {blame} = {fmt_bytes(est[worst])}), "
            f"more than {fraction:.0%} of the {fmt_bytes(limit)} of {where}; reduce the task's sizes "
            f"(e.g. task.num_samples) or the number of tasks"
        )
    return est
