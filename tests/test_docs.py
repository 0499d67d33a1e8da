"""The documentation: docs/tasks.md lists every registered task family, and the API
reference build (tools/build_docs.py, run by CI) turns pdoc's warnings into errors."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from learned_dco import tasks

ROOT = Path(__file__).resolve().parents[1]


def documented_families(text: str) -> set[str]:
    """The ``name``s in the first column of docs/tasks.md's family table."""
    names = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 2:
            names |= set(re.findall(r"`([a-z0-9_]+)`", cells[0]))
    return names


def test_tasks_md_lists_every_registered_family():
    listed = documented_families((ROOT / "docs" / "tasks.md").read_text())
    assert listed == set(tasks.FAMILIES), (
        f"missing from docs/tasks.md: {sorted(set(tasks.FAMILIES) - listed)}; "
        f"not registered: {sorted(listed - set(tasks.FAMILIES))}"
    )


def test_family_table_parser_sees_a_missing_family():
    text = (ROOT / "docs" / "tasks.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `box_lqr`"))
    assert "box_lqr" not in documented_families(text.replace(row + "\n", ""))


@pytest.fixture
def build_docs():
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _probe(tmp_path, monkeypatch, source: str) -> str:
    (tmp_path / "docs_probe.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("docs_probe", None)
    return "docs_probe"


def test_build_reports_an_unresolvable_annotation(build_docs, tmp_path, monkeypatch):
    pytest.importorskip("pdoc")
    name = _probe(tmp_path, monkeypatch, '"""Probe."""\nfrom __future__ import annotations\n\n'
                  'def f(x: Undefined) -> int:\n    """Doc."""\n    return 0\n')
    problems = build_docs.build(tmp_path / "site", [name])
    assert any("Undefined" in p for p in problems), problems


def test_build_resolves_namedtuple_fields(build_docs, tmp_path, monkeypatch):
    pytest.importorskip("pdoc")
    name = _probe(tmp_path, monkeypatch, '"""Probe."""\nfrom __future__ import annotations\n'
                  'from typing import NamedTuple\nArray = list\n\n'
                  'class T(NamedTuple):\n    """Doc."""\n    a: Array\n')
    assert build_docs.build(tmp_path / "site", [name]) == []
    assert (tmp_path / "site" / "docs_probe.html").exists()
