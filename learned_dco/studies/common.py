"""One results schema for every study: the claims table, ``report.md`` and ``results.json``.

Every study writes into its output directory

* ``results.json``: ``{"study", "paper", "config", "versions", "device", "seconds",
  "claims": [{"id", "claim", "paper_value", "measured", "verdict", "evidence", "kind", "test"}], ...}``
  plus study-specific keys (curves, tables);
* ``report.md``: opens with the claims table, then the sanity checks, then the study's own
  sections and figures.

Each claim has a ``kind`` (:data:`~learned_dco.studies.stats.KINDS`):

* ``comparative`` (A beats B) and ``bound`` (a measured quantity against a stated bound):
  ``verdict`` is one of :data:`VERDICTS`, and a decided verdict carries its ``test`` -- the
  record of :mod:`learned_dco.studies.stats` (statistic, standard error and interval, paired
  units and the rule; an ``inconclusive`` one also the units that would decide it);
* ``sanity`` (holds by construction, or checks the machinery): ``verdict`` is ``holds`` or
  ``fails`` (:data:`SANITY_VERDICTS`); it never counts as a reproduction.

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
from learned_dco.studies.stats import KINDS

VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive", "not testable here")
SANITY_VERDICTS = ("holds", "fails")
#: Verdicts of claims that must carry their test record.
DECIDED = ("reproduced", "partly", "not reproduced", "inconclusive")
CLAIM_KEYS = ("id", "claim", "paper_value", "measured", "verdict", "evidence", "kind", "test")
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
      verdict: one of :data:`VERDICTS` (``sanity``: one of :data:`SANITY_VERDICTS`).
      evidence: where to look (figure file, table, ``results.json`` key).
      kind: ``comparative``, ``bound`` or ``sanity``.
      test: the statistical record behind the verdict (:mod:`learned_dco.studies.stats`);
        required for a comparative or bound claim with a decided verdict.
    """

    id: str
    claim: str
    paper_value: Any
    measured: Any
    verdict: str
    evidence: str
    kind: str | None = None
    test: dict[str, Any] | None = None

    def __post_init__(self):
        problem = _claim_problem(self.verdict, self.kind, self.test)
        if problem:
            raise ValueError(f"claim {self.id!r}: {problem}")

    def to_dict(self) -> dict[str, Any]:
        return {k: to_json(getattr(self, k)) for k in CLAIM_KEYS}


_TEST_KEYS = ("statistic", "rule", "verdict")


def _test_problem(test: Any, where: str) -> str | None:
    if not isinstance(test, dict) or "rule" not in test or "verdict" not in test:
        return f"{where} must be a dict with a 'rule' and a 'verdict'"
    if "parts" in test:
        if not isinstance(test["parts"], dict) or not test["parts"]:
            return f"{where}.parts must be a non-empty dict"
        for name, part in test["parts"].items():
            problem = _test_problem(part, f"{where}.parts[{name!r}]")
            if problem:
                return problem
        return None
    missing = [k for k in _TEST_KEYS if k not in test]
    if "bound" in test:
        missing += [k for k in ("value",) if k not in test]
    else:
        missing += [k for k in ("estimate", "se", "ci", "units") if k not in test]
        if test.get("verdict") == "inconclusive" and "n_to_decide" not in test:
            missing.append("n_to_decide")
    return f"{where} lacks {missing}" if missing else None


def _claim_problem(verdict: Any, kind: Any, test: Any) -> str | None:
    """What is wrong with a claim's verdict, kind and test record, or None."""
    if kind not in KINDS:
        return f"kind must be one of {KINDS}, got {kind!r}"
    if kind == "sanity":
        if verdict not in SANITY_VERDICTS:
            return f"a sanity claim's verdict must be one of {SANITY_VERDICTS}, got {verdict!r}"
        return None
    if verdict not in VERDICTS:
        return f"verdict must be one of {VERDICTS}, got {verdict!r}"
    if verdict in DECIDED:
        problem = _test_problem(test, "test")
        if problem:
            return f"a {kind} claim with verdict {verdict!r} needs its test record: {problem}"
        if test["verdict"] != verdict:
            return f"verdict {verdict!r} differs from its test's verdict {test['verdict']!r}"
    return None


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
        problem = _claim_problem(claim["verdict"], claim["kind"], claim["test"])
        if problem:
            raise ValueError(f"results.json: claims[{i}] ({claim['id']!r}) {problem}")
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


def describe_test(test: dict[str, Any] | None) -> str:
    """A claim's test record in a few words: estimate, interval, units (or value vs bound)."""
    if not test:
        return ""
    if "parts" in test:
        return "; ".join(f"{name}: {describe_test(part)}" for name, part in test["parts"].items())
    if "bound" in test:
        return f"{fmt(test['value'])} vs bound {fmt(test['bound'])}: {test['verdict']}"
    lo, hi = test["ci"]
    out = (f"{fmt(test['estimate'])} [{fmt(lo)}, {fmt(hi)}] ({test['level']:.0%} CI, n={test['units']}): "
           f"{test['verdict']}")
    if test.get("verdict") == "inconclusive":
        n = test.get("n_to_decide")
        out += f", ~{n} units would decide" if n else ", no sample size decides (mean 0)"
    return out


def claims_table(claims: list[dict[str, Any]]) -> str:
    """The claims table (comparative and bound claims), then the sanity checks apart."""
    cell = lambda v: fmt(v).replace("|", "\\|").replace("\n", " ")
    rows = ["| claim | kind | paper | measured | verdict | test (estimate [CI], units) | evidence |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {cell(c['claim'])} (`{c['id']}`) | {c['kind']} | {cell(c['paper_value'])} | {cell(c['measured'])} "
             f"| **{c['verdict']}** | {cell(describe_test(c['test']))} | {cell(c['evidence'])} |"
             for c in claims if c["kind"] != "sanity"]
    sanity = [c for c in claims if c["kind"] == "sanity"]
    if sanity:
        rows += ["", "Sanity checks (hold by construction or check the machinery; not counted as reproductions):", "",
                 "| check | measured | outcome | evidence |", "|---|---|---|---|"]
        rows += [f"| {cell(c['claim'])} (`{c['id']}`) | {cell(c['measured'])} | {c['verdict']} | {cell(c['evidence'])} |"
                 for c in sanity]
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
    counts = {v: sum(c.verdict == v for c in claims if c.kind != "sanity") for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    n_sanity = sum(c.kind == "sanity" for c in claims)
    if n_sanity:
        summary += f" (and {n_sanity} sanity check{'s' if n_sanity > 1 else ''}, listed apart)"
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
