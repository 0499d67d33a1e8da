"""One results schema for every study: the claims table, ``report.md`` and ``results.json``.

Every study writes into its output directory

* ``results.json``: ``{"study", "paper", "config", "versions", "device", "seconds",
  "claims": [{"id", "claim", "paper_value", "measured", "verdict", "evidence"}], ...}``
  plus study-specific keys (curves, tables); ``verdict`` is one of :data:`VERDICTS`;
* ``report.md``: opens with the claims table, then the study's own sections and figures.

:func:`validate_results` checks that schema (the shared test runs it on every study) and
:func:`write_study` is the one writer (atomic, with :func:`learned_dco.io.atomic_write_json`;
non-finite numbers as ``"inf"``, ``"-inf"``, ``"nan"``; ``versions`` and ``device`` from
:func:`learned_dco.io.environment`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from learned_dco.io import atomic_write_json, atomic_write_text, environment, to_json

VERDICTS = ("reproduced", "partly", "not reproduced", "not testable here")
CLAIM_KEYS = ("id", "claim", "paper_value", "measured", "verdict", "evidence")
TOP_KEYS = {"study": str, "paper": str, "config": dict, "versions": dict, "device": dict,
            "seconds": (int, float), "claims": list}


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of a paper and what we measured.

    Attributes:
      id: short stable identifier (``"ls_beats_baseline_reset"``).
      claim: the paper's statement, in a few words.
      paper_value: what the paper reports (a number, or words where it gives none).
      measured: what this run measured (a number or a short phrase with numbers).
      verdict: one of :data:`VERDICTS`.
      evidence: where to look (figure file, table, ``results.json`` key).
    """

    id: str
    claim: str
    paper_value: Any
    measured: Any
    verdict: str
    evidence: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim {self.id!r}: verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: to_json(getattr(self, k)) for k in CLAIM_KEYS}


def validate_results(results: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem if ``results`` breaks the schema."""
    if not isinstance(results, dict):
        raise ValueError(f"results must be a dict, got {type(results).__name__}")
    for key, kind in TOP_KEYS.items():
        if key not in results:
            raise ValueError(f"results.json: missing key {key!r}")
        if not isinstance(results[key], kind):
            raise ValueError(f"results.json: {key!r} has type {type(results[key]).__name__}")
    if not results["claims"]:
        raise ValueError("results.json: 'claims' is empty")
    ids = set()
    for i, claim in enumerate(results["claims"]):
        if not isinstance(claim, dict) or set(claim) != set(CLAIM_KEYS):
            raise ValueError(f"results.json: claims[{i}] must have exactly the keys {CLAIM_KEYS}, "
                             f"got {sorted(claim) if isinstance(claim, dict) else claim!r}")
        if claim["verdict"] not in VERDICTS:
            raise ValueError(f"results.json: claims[{i}] ({claim['id']!r}) verdict {claim['verdict']!r} "
                             f"not in {VERDICTS}")
        for key in ("id", "claim", "evidence"):
            if not isinstance(claim[key], str) or not claim[key]:
                raise ValueError(f"results.json: claims[{i}].{key} must be a non-empty string")
        if claim["id"] in ids:
            raise ValueError(f"results.json: duplicate claim id {claim['id']!r}")
        ids.add(claim["id"])
    json.dumps(results, allow_nan=False)  # strict JSON (no NaN/inf literals)


def fmt(x: Any) -> str:
    """Numbers to 4 significant digits, everything else as is."""
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else ("diverged" if math.isnan(x) else repr(x))
    return str(x)


def claims_table(claims: list[dict[str, Any]]) -> str:
    cell = lambda v: fmt(v).replace("|", "\\|").replace("\n", " ")
    rows = ["| claim | paper | measured | verdict | evidence |", "|---|---|---|---|---|"]
    rows += [f"| {cell(c['claim'])} (`{c['id']}`) | {cell(c['paper_value'])} | {cell(c['measured'])} "
             f"| **{c['verdict']}** | {cell(c['evidence'])} |" for c in claims]
    return "\n".join(rows)


def write_study(out_dir: str | os.PathLike, *, study: str, paper: str, config: dict[str, Any],
                claims: list[Claim], seconds: float, body: str = "", extra: dict[str, Any] | None = None,
                title: str | None = None) -> dict[str, Any]:
    """Write ``results.json`` and ``report.md`` (claims table first, then ``body``) to
    ``out_dir``; returns the validated results dict."""
    clash = set(extra or {}) & (set(TOP_KEYS) | {"study", "paper"})
    if clash:
        raise ValueError(f"write_study: extra keys {sorted(clash)} would overwrite the schema's own keys")
    out = Path(out_dir)
    if _primary():
        out.mkdir(parents=True, exist_ok=True)
    results = {"study": study, "paper": paper, "config": to_json(config), **environment(),
               "seconds": float(seconds), "claims": [c.to_dict() for c in claims], **to_json(extra or {})}
    validate_results(results)
    if not _primary():  # several processes (jax.distributed): process 0 alone writes
        return results
    atomic_write_json(out / "results.json", results)
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    head = [f"# {title or study}", "", f"Paper: {paper}. Mode: {'quick' if config.get('quick') else 'full'}, "
            f"seed {config.get('seed')}, {seconds:.0f} s on {results['device']['backend']}. Claims: {summary}.", "",
            claims_table(results["claims"]), ""]
    atomic_write_text(out / "report.md", "\n".join(head) + "\n" + body.rstrip() + "\n")
    return results


@dataclasses.dataclass(frozen=True)
class Study:
    """A registered study: ``run(out_dir, *, quick, seed) -> results dict``; the module is
    imported on first use so ``--list`` stays instant."""

    name: str
    paper: str
    description: str
    module: str  # importable module holding ``run``

    def run(self, out_dir, *, quick: bool = False, seed: int = 0) -> dict[str, Any]:
        """Run the study. With several processes (``jax.distributed``) every process runs
        it -- the sweeps and evaluations shard their task batches over all processes'
        devices -- but only process 0 writes into ``out_dir`` and prints: the others write
        their figures into a scratch directory that is deleted and print nothing."""
        import contextlib
        import importlib
        import tempfile

        run = importlib.import_module(self.module).run
        if _primary():
            return run(Path(out_dir), quick=quick, seed=seed)
        with tempfile.TemporaryDirectory(prefix="learned-dco-study-") as scratch, \
                open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            return run(Path(scratch), quick=quick, seed=seed)


def _primary() -> bool:
    """Whether this process writes the outputs (process 0, or the only process)."""
    from learned_dco.meta import distributed

    return distributed.is_primary()


def _pyplot():
    """``matplotlib.pyplot`` (Agg), or a one-line error naming the ``plots`` extra."""
    from learned_dco import extras

    return extras.pyplot()
