"""Mutation score of the core modules: a reproducible, sampled mutmut run.

Usage (from the repository root; needs the ``mutation`` extra, ``pip install -e .[mutation]``)::

    python -m tools.mutation                        # generate, sample 120 mutants (seed 0), run, summarise
    python -m tools.mutation --sample 60 --seed 1 --jobs 2
    python -m tools.mutation --sample 0             # every mutant (about 2100: hours on 2 cores)
    python -m tools.mutation --only NAME [NAME...]  # re-run named mutants (e.g. after adding a test)
    python -m tools.mutation --summarise            # rewrite the summary from mutants/*.meta

What is mutated and which tests run is configured in pyproject.toml's ``[tool.mutmut]``
(qp.py, optimizers/dco.py, meta/estimators.py; their test modules). mutmut copies the tree into
``mutants/``, rewrites each function of those files into a trampoline that picks the original or
one mutant from an environment variable, records once which tests reach which function, and then
runs, for each mutant, only the tests that reach the mutated function (``-x``: the first failure
kills it). A mutant is *killed* when a test fails, *timeout* when the tests run past mutmut's CPU
limit (15 x their clean time; counted as killed, as mutmut does), *survived* when they all pass,
and *no tests* when no selected test reaches the function.

A full run does not fit in this project's CPU budget, so by default a uniform random sample
without replacement is drawn from each file (allocation proportional to the file's number of
mutants, ``random.Random(seed)``) and the kill rate is reported with a 95% Wilson interval:
the score of the whole population lies in that interval with 95% confidence.

Output: ``docs/mutation/summary.json`` and ``docs/mutation/summary.md`` (per-file and overall
counts, score, interval, the sampled names and every survivor with its diff).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

OUT = Path("docs/mutation")
MUTMUT = [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.exit(cli())"]
KILLED = ("killed", "timeout", "caught by type check")


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion k/n (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def generate() -> dict[str, list[str]]:
    """Write mutants/ (mutmut's copy of the tree with trampolines) and list mutant names per file."""
    import mutmut.__main__ as mm
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.trampoline import set_mutant_under_test
    from mutmut.utils.file_utils import copy_src_dir, setup_source_paths, walk_mutatable_files

    set_mutant_under_test("mutant_generation")
    os.makedirs("mutants", exist_ok=True)
    copy_src_dir()
    mm.copy_also_copy_files()
    setup_source_paths()
    mm.create_mutants(1)
    names = {}
    for path in sorted(walk_mutatable_files()):
        data = SourceFileMutationData(path=path)
        data.load()
        names[str(path)] = sorted(data.exit_code_by_key)
    return names


def sample(names: dict[str, list[str]], size: int, seed: int) -> dict[str, list[str]]:
    """Uniform sample without replacement within each file, sizes proportional to the file."""
    total = sum(len(v) for v in names.values())
    if size <= 0 or size >= total:
        return names
    rng = random.Random(seed)
    out = {}
    for path, keys in sorted(names.items()):
        k = max(1, round(size * len(keys) / total))
        out[path] = sorted(rng.sample(keys, k))
    return out


def run(mutants: list[str], jobs: int) -> int:
    cmd = [*MUTMUT, "run", "--max-children", str(jobs), *mutants]
    print("running:", " ".join(cmd[:6]), f"... ({len(mutants)} mutants)", flush=True)
    return subprocess.call(cmd)


def diff(name: str) -> str:
    res = subprocess.run([*MUTMUT, "show", name], capture_output=True, text=True)
    return "\n".join(res.stdout.splitlines()[1:]).strip()


def summarise(chosen: dict[str, list[str]], totals: dict[str, int], seed: int | None) -> dict:
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    files, survivors, pooled = {}, [], {"sampled": 0, "killed": 0, "survived": 0, "timeout": 0, "no_tests": 0, "not_checked": 0, "other": 0}
    for path, keys in sorted(chosen.items()):
        data = SourceFileMutationData(path=path)
        data.load()
        c = {"total": totals[path], "sampled": len(keys), "killed": 0, "survived": 0, "timeout": 0, "no_tests": 0, "not_checked": 0, "other": 0}
        for key in keys:
            status = status_by_exit_code[data.exit_code_by_key.get(key)]
            slot = {"killed": "killed", "caught by type check": "killed", "timeout": "timeout", "survived": "survived",
                    "no tests": "no_tests", "not checked": "not_checked"}.get(status, "other")
            c[slot] += 1
            if slot in ("survived", "no_tests", "other"):
                survivors.append({"name": key, "file": path, "status": status, "diff": diff(key)})
        checked = c["sampled"] - c["not_checked"]
        dead = c["killed"] + c["timeout"]
        c["score"] = dead / checked if checked else None
        c["wilson95"] = wilson(dead, checked)
        files[path] = c
        for k in pooled:
            pooled[k] += c[k]
    checked = pooled["sampled"] - pooled["not_checked"]
    dead = pooled["killed"] + pooled["timeout"]
    pooled["total"] = sum(totals.values())
    pooled["score"] = dead / checked if checked else None
    pooled["wilson95"] = wilson(dead, checked)
    return {"seed": seed, "files": files, "overall": pooled, "survivors": survivors,
            "sampled": {p: k for p, k in sorted(chosen.items())}}


def write(summary: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    lines = ["# Mutation score (generated by `python -m tools.mutation`)", "",
             f"Sample seed: {summary['seed']}. Score = (killed + timeout) / checked; interval: 95% Wilson.", "",
             "| file | mutants | sampled | killed | timeout | survived | no tests | not checked | score | 95% interval |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    rows = [*summary["files"].items(), ("**overall**", summary["overall"])]
    for path, c in rows:
        score = "-" if c["score"] is None else f"{100 * c['score']:.1f}%"
        lo, hi = c["wilson95"]
        lines.append(f"| {path} | {c['total']} | {c['sampled']} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                     f"{c['no_tests']} | {c['not_checked']} | {score} | {100 * lo:.1f}-{100 * hi:.1f}% |")
    lines += ["", f"## Survivors ({len(summary['survivors'])})", ""]
    for s in summary["survivors"]:
        lines += [f"### `{s['name']}` ({s['status']})", "", "```diff", s["diff"], "```", ""]
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=120, help="mutants to draw over all files (0: every mutant)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run just these mutants (globs allowed), then summarise")
    ap.add_argument("--summarise", action="store_true", help="only rewrite the summary from the last run")
    args = ap.parse_args(argv)

    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    names = generate()
    totals = {p: len(v) for p, v in names.items()}
    chosen_file = OUT / "sample.json"
    if args.summarise or args.only:
        chosen = json.loads(chosen_file.read_text())
    else:
        chosen = sample(names, args.sample, args.seed)
        OUT.mkdir(parents=True, exist_ok=True)
        chosen_file.write_text(json.dumps({"seed": args.seed, "sample": args.sample, "mutants": chosen}, indent=1, ensure_ascii=False) + "\n")
        chosen = json.loads(chosen_file.read_text())
    seed, chosen = chosen["seed"], chosen["mutants"]
    for path, c in sorted(totals.items()):
        print(f"{path}: {c} mutants, {len(chosen.get(path, []))} in the sample")
    if args.only:
        run(list(args.only), args.jobs)
    elif not args.summarise:
        run([k for keys in chosen.values() for k in keys], args.jobs)
    summary = summarise(chosen, totals, seed)
    write(summary)
    o = summary["overall"]
    lo, hi = o["wilson95"]
    print(f"overall: {o['killed'] + o['timeout']} killed of {o['sampled'] - o['not_checked']} checked "
          f"({o['total']} mutants in all): {100 * (o['score'] or 0):.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
