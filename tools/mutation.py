"""Mutation score of the core modules: a reproducible, sampled mutmut run.

Usage (from the repository root; needs the ``mutation`` extra, ``pip install -e .[mutation]``)::

    python -m tools.mutation                        # generate, sample 120 mutants (seed 0), run, summarise
    python -m tools.mutation --sample 60 --seed 1 --jobs 2
    python -m tools.mutation --sample 0             # every mutant (about 2100: hours on 2 cores)
    python -m tools.mutation --only NAME [NAME...]  # re-run named mutants (e.g. after adding a test)
    python -m tools.mutation --finish --jobs 2      # run the sampled mutants the last run left without a verdict
    python -m tools.mutation --confirm              # each kill test: fails with its mutant, passes without
    python -m tools.mutation --summarise            # rewrite the summary from mutants/*.meta
    python -m tools.mutation --sample 110 --seed 1 --out docs/mutation/seed1   # a second, independent sample

``--finish`` completes an interrupted measurement of the same sample: it runs the sampled mutants
whose recorded verdict is "not checked" or "timeout" (a timeout of a CPU-starved run says nothing
about the tests) and merges their verdicts into the summary as part of the same measurement.

``--confirm`` checks the tests written for survivors (``KILLS`` in tests/test_mutation_kills.py maps
each test to the mutants it is meant to kill): in mutmut's copy of the tree, each test is run once
with no mutant (it must pass) and once with each of its mutants switched on through
``MUTANT_UNDER_TEST``, the variable mutmut's trampolines read (it must fail). The tests are those
of this checkout, the library is mutmut's copy (``mutants/`` first on ``sys.path``). This is the check
mutmut itself performs, without its stats pass. Results: ``docs/mutation/confirm.json``.

``--only`` keeps the first measurement in the summary ("measured") and records the new
verdicts of the re-run mutants (e.g. after a test was added for them) next to it. Changing
``[tool.mutmut]``'s test selection makes mutmut forget every verdict in mutants/ (not the
summary), so re-run only with ``--only`` after such a change.

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
import fnmatch
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
    """The mutant as a unified diff against the source (what ``mutmut show NAME`` prints)."""
    from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant

    return get_diff_for_mutant(name, path=find_mutant(name).path).strip()


def statuses(names: list[str]) -> dict[str, str]:
    """mutmut's verdict for each named mutant, from mutants/*.meta."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.file_utils import walk_mutatable_files

    out = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        out.update({n: status_by_exit_code[data.exit_code_by_key[n]] for n in names if n in data.exit_code_by_key})
    return out


SLOT = {"killed": "killed", "caught by type check": "killed", "timeout": "timeout", "survived": "survived",
        "no tests": "no_tests", "not checked": "not_checked"}


def count(chosen: dict[str, list[str]], totals: dict[str, int], results: dict[str, str]) -> tuple[dict, dict]:
    """Per-file and pooled counts, score (killed + timeout over checked) and Wilson interval."""
    files, pooled = {}, None
    for path, keys in sorted(chosen.items()):
        c = {"total": totals[path], "sampled": len(keys), "killed": 0, "survived": 0, "timeout": 0,
             "no_tests": 0, "not_checked": 0, "other": 0}
        for key in keys:
            c[SLOT.get(results.get(key, "not checked"), "other")] += 1
        files[path] = c
        pooled = dict(c) if pooled is None else {k: pooled[k] + c[k] for k in c}
    for c in [*files.values(), pooled]:
        checked = c["sampled"] - c["not_checked"]
        dead = c["killed"] + c["timeout"]
        c["score"] = dead / checked if checked else None
        c["wilson95"] = wilson(dead, checked)
    return files, pooled


def confirmed_kills(path: Path | None = None) -> set[str]:
    """Mutants that a kill test was seen to kill (``--confirm``: passes clean, fails with the mutant)."""
    path = OUT / "confirm.json" if path is None else path
    if not path.exists():
        return set()
    return {m for t in json.loads(path.read_text()).values() if t["clean"]["rc"] == 0
            for m, r in t["mutants"].items() if r["rc"] == 1}


def summarise(chosen, totals, seed, results, previous=None, rerun=()) -> dict:
    files, overall = count(chosen, totals, results)
    survivors = [{"name": k, "file": p, "status": results.get(k, "not checked"), "diff": diff(k)}
                 for p, keys in sorted(chosen.items()) for k in keys
                 if SLOT.get(results.get(k, "not checked"), "other") in ("survived", "no_tests", "other")]
    summary = {"seed": seed, "files": files, "overall": overall, "survivors": survivors, "results": results}
    kills = confirmed_kills()
    newly = sorted(k for k, v in results.items() if k in kills and SLOT.get(v, "other") not in ("killed", "not_checked"))
    if newly:  # the same sample with the confirmed kill tests counted (docs/mutation/confirm.json)
        after = {**results, **{k: "killed" for k in newly}}
        a_files, a_overall = count(chosen, totals, after)
        summary["after_kill_tests"] = {"files": a_files, "overall": a_overall, "killed_by_kill_tests": newly}
    if previous and previous.get("overall"):  # a re-run of named mutants: keep the first measurement alongside
        summary["measured"] = previous.get("measured") or {"files": previous["files"], "overall": previous["overall"],
                                                           "results": previous["results"]}
        summary["rerun"] = sorted(set(previous.get("rerun", [])) | set(rerun))
    return summary


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
    if "measured" in summary:
        m = summary["measured"]["overall"]
        lo, hi = m["wilson95"]
        lines += ["", f"The table counts the {len(summary['rerun'])} mutant(s) re-run after tests were added "
                  f"(`--only`) with their new verdict. First measurement, before those tests: "
                  f"{m['killed'] + m['timeout']} killed of {m['sampled'] - m['not_checked']}, "
                  f"{100 * (m['score'] or 0):.1f}% (95% interval {100 * lo:.1f}-{100 * hi:.1f}%).", "",
                  "Re-run: " + ", ".join(f"`{n}` ({summary['results'][n]})" for n in summary["rerun"])]
    for r in _as_list(summary.get("recheck")):
        b = r["before"]
        lo, hi = b["wilson95"]
        left = " or ".join(f"'{s}'" for s in r.get("statuses", ["no tests"]))
        lines += ["", f"The {len(r['mutants'])} mutant(s) that mutmut's test selection left as {left} were "
                  f"run against {', '.join(f'`{t}`' for t in r['targets'])} (`--recheck`; these pass without a "
                  f"mutant, {r['clean']['wall_s']} s), and the table counts their verdicts. Before that: "
                  f"{b['killed'] + b['timeout']} killed of {b['sampled'] - b['not_checked']}, "
                  f"{100 * (b['score'] or 0):.1f}% (95% interval {100 * lo:.1f}-{100 * hi:.1f}%)."]
    if "after_kill_tests" in summary:
        a = summary["after_kill_tests"]
        lines += ["", "With the kill tests of tests/test_mutation_kills.py (each seen failing with its mutant and "
                  "passing without, `--confirm`, docs/mutation/confirm.json), the same sample scores:", "",
                  "| file | killed | timeout | survived | no tests | not checked | score | 95% interval |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for path, c in [*a["files"].items(), ("**overall**", a["overall"])]:
            score = "-" if c["score"] is None else f"{100 * c['score']:.1f}%"
            lo, hi = c["wilson95"]
            lines.append(f"| {path} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no_tests']} | "
                         f"{c['not_checked']} | {score} | {100 * lo:.1f}-{100 * hi:.1f}% |")
        lines += ["", "Killed by the kill tests: " + ", ".join(f"`{n}`" for n in a["killed_by_kill_tests"])]
    lines += ["", f"## Survivors of the measurement ({len(summary['survivors'])})", ""]
    for s in summary["survivors"]:
        lines += [f"### `{s['name']}` ({s['status']})", "", "```diff", s["diff"], "```", ""]
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")


def _pytest_against_mutants(targets: list[str], mutant: str | None) -> dict:
    """Run pytest on ``targets`` with mutmut's copy of the library (mutants/) and ``mutant`` switched on.

    mutants/ goes first on sys.path (``python -m`` would put the checkout first) and the import is
    checked; ``mutant=None`` runs the unmutated code. Returns pytest's exit code, wall time, its last
    line and the first line of the first failure.
    """
    import time

    lib = str(Path("mutants").resolve())
    code = ("import sys; sys.path.insert(0, %r); import learned_dco, pytest; "
            "assert learned_dco.__file__.startswith(%r), learned_dco.__file__; sys.exit(pytest.main(sys.argv[1:]))" % (lib, lib))
    env = {k: v for k, v in os.environ.items() if k not in ("MUTANT_UNDER_TEST", "PYTHONPATH")}
    cmd = [sys.executable, "-c", code, *targets, "-x", "-q", "-n", "0", "-p", "no:cacheprovider",
           "-m", "slow or not slow", "--no-header"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=dict(env, MUTANT_UNDER_TEST=mutant) if mutant else env, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    why = next((ln for ln in lines if ln.startswith("E ")), "")
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "result": (lines[-1:] or [proc.stderr.strip()[-200:]])[0], "error": why[:300]}


def _as_list(recheck) -> list[dict]:
    """The summary's rechecks in order (older summaries hold one as a dict)."""
    return [] if recheck is None else [recheck] if isinstance(recheck, dict) else list(recheck)


def recheck(results: dict[str, str], names: list[str], targets: list[str],
            statuses: tuple[str, ...] = ("no tests",)) -> dict:
    """Run the sampled mutants whose status is in ``statuses`` (mutmut's 'no tests', and with
    ``--recheck-survivors`` also 'survived') against the test files ``targets``.

    mutmut marks a mutant 'no tests' when no test of its selection called the mutated function
    while it collected coverage, and 'survived' when no test of the selection failed, so test
    files outside ``[tool.mutmut]``'s selection (which keeps mutmut's runs short) never get a
    say. This runs ``targets`` with each such mutant switched on (after checking that they pass
    without it): exit code 1 is a kill, 0 a survivor; any other code (a collection error, a
    crash) is recorded and leaves the mutant's status as it was.
    """
    clean = _pytest_against_mutants(targets, None)
    if clean["rc"] != 0:
        raise SystemExit(f"the recheck tests fail without a mutant: {clean['result']} {clean['error']}")
    out = {"targets": targets, "statuses": list(statuses), "clean": clean, "mutants": {}}
    for name in names:
        if results.get(name) not in statuses:
            continue
        r = out["mutants"][name] = _pytest_against_mutants(targets, name)
        verdict = {0: "survived", 1: "killed"}.get(r["rc"], f"rc={r['rc']}")
        print(f"{verdict:9s} {name} ({r['wall_s']} s)", flush=True)
    return out


def confirm(tests_file: str = "tests/test_mutation_kills.py", only=()) -> dict:
    """Run each kill test with no mutant and with each of its mutants (mutmut's mechanism).

    A test is confirmed for a mutant when pytest exits 0 without the mutant and 1 (a test
    failed) with it. ``only``: run just these tests (the others keep their recorded result).
    Needs mutants/ (written by :func:`generate`).
    """
    kills = _kills_map(Path(tests_file))
    unknown = sorted(set(only) - set(kills))
    if unknown:
        raise SystemExit(f"not in KILLS of {tests_file}: {', '.join(unknown)}")

    def pytest(test, mutant):
        return _pytest_against_mutants([f"{tests_file}::{test}"], mutant)

    path = OUT / "confirm.json"
    old = json.loads(path.read_text()) if only and path.exists() else {}
    out = {t: old[t] for t in kills if t in old and t not in only}
    for test, mutants in kills.items():
        if only and test not in only:
            continue
        clean = pytest(test, None)
        runs = {m: pytest(test, m) for m in mutants}
        ok = clean["rc"] == 0 and all(r["rc"] == 1 for r in runs.values())
        out[test] = {"clean": clean, "mutants": runs, "confirmed": ok}
        print(f"{'OK  ' if ok else 'FAIL'} {test}: clean rc={clean['rc']} ({clean['wall_s']} s); "
              + ", ".join(f"{m.rsplit('.', 1)[-1]} rc={r['rc']}" for m, r in runs.items()), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({t: out[t] for t in kills if t in out}, indent=1, ensure_ascii=False) + "\n")
    return out


def _kills_map(path: Path) -> dict[str, list[str]]:
    """The literal ``KILLS = {test: [mutant, ...]}`` of a test module, read without importing it."""
    import ast

    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "KILLS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{path}: no KILLS = {{test: [mutants]}} mapping")


def main(argv=None) -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=120, help="mutants to draw over all files (0: every mutant)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run just these mutants (globs allowed), then summarise")
    ap.add_argument("--finish", action="store_true",
                    help="run the sampled mutants recorded as 'not checked' or 'timeout', merge into the summary")
    ap.add_argument("--confirm", nargs="*", metavar="TEST",
                    help="run each kill test (KILLS in tests/test_mutation_kills.py; or just the TESTs named) "
                         "with and without its mutants")
    ap.add_argument("--recheck", nargs="+", metavar="TESTFILE",
                    help="run the sampled mutants recorded as 'no tests' against these test files, merge into the summary")
    ap.add_argument("--recheck-survivors", action="store_true",
                    help="with --recheck: run the survivors against those files too")
    ap.add_argument("--summarise", action="store_true", help="only rewrite the summary from the last run")
    ap.add_argument("--out", default=str(OUT),
                    help="folder of this measurement's sample.json, summary.{json,md} and confirm.json")
    args = ap.parse_args(argv)
    OUT = Path(args.out)

    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    if args.confirm is not None:  # uses mutants/ as it is (a --finish or --only run may be using it too)
        if not Path("mutants").is_dir():
            generate()
        results = confirm(only=args.confirm)
        return 0 if all(r["confirmed"] for r in results.values()) else 1
    names = generate()
    totals = {p: len(v) for p, v in names.items()}
    chosen_file = OUT / "sample.json"
    if args.summarise or args.only or args.finish or args.recheck:
        chosen = json.loads(chosen_file.read_text())
    else:
        chosen = sample(names, args.sample, args.seed)
        OUT.mkdir(parents=True, exist_ok=True)
        chosen_file.write_text(json.dumps({"seed": args.seed, "sample": args.sample, "mutants": chosen}, indent=1, ensure_ascii=False) + "\n")
        chosen = json.loads(chosen_file.read_text())
    seed, chosen = chosen["seed"], chosen["mutants"]
    for path, c in sorted(totals.items()):
        print(f"{path}: {c} mutants, {len(chosen.get(path, []))} in the sample")
    names_in_sample = [k for keys in chosen.values() for k in keys]
    previous = json.loads((OUT / "summary.json").read_text()) if (args.only or args.summarise or args.finish or args.recheck) and (OUT / "summary.json").exists() else None
    if args.recheck:
        old = (previous or {}).get("results", {})
        checked = recheck(old, names_in_sample, args.recheck,
                          ("no tests", "survived") if args.recheck_survivors else ("no tests",))
        new = {n: {0: "survived", 1: "killed"}[r["rc"]] for n, r in checked["mutants"].items() if r["rc"] in (0, 1)}
        summary = summarise(chosen, totals, seed, {**old, **new})
        summary["recheck"] = [*_as_list(previous.get("recheck")), {**checked, "before": previous["overall"]}]
    elif args.finish:
        old = (previous or {}).get("results", {})
        todo = [n for n in names_in_sample if old.get(n, "not checked") in ("not checked", "timeout")]
        if todo:
            run(todo, args.jobs)
        results = {**old, **{n: s for n, s in statuses(todo).items() if s != "not checked"}}
        summary = summarise(chosen, totals, seed, results)
    elif args.only:
        run(list(args.only), args.jobs)
        rerun = [n for n in names_in_sample if any(fnmatch.fnmatchcase(n, p) for p in args.only)]
        results = {**(previous or {}).get("results", {}), **statuses(rerun)}
        summary = summarise(chosen, totals, seed, results, previous, rerun)
    else:
        if not args.summarise:
            run(names_in_sample, args.jobs)
        summary = summarise(chosen, totals, seed, statuses(names_in_sample))
    write(summary)
    o = summary["overall"]
    lo, hi = o["wilson95"]
    print(f"overall: {o['killed'] + o['timeout']} killed of {o['sampled'] - o['not_checked']} checked "
          f"({o['total']} mutants in all): {100 * (o['score'] or 0):.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
