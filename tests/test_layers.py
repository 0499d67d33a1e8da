"""The import floors of docs/ARCHITECTURE.md, checked on the static import graph.

Every ``import`` and ``from ... import`` statement of every module is read with :mod:`ast`,
wherever it stands (module level, inside a function, under ``if TYPE_CHECKING``), together
with ``importlib.import_module("learned_dco....")`` calls whose argument is a plain string.
A module of the package sits on one floor (:data:`FLOORS`); it may import modules of its own
part and of lower floors only, so nothing below ``app`` can reach the application wing and no
two parts on one floor depend on each other. Benchmarks and examples use the public API
(:func:`public_api_problem`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "learned_dco"

FLOORS: dict[str, int] = {
    "types": 0, "validation": 0, "extras": 0, "deprecation": 0,
    "learned": 1, "qp_ipm": 1, "qp_simplex": 1, "analysis": 1,
    "qp": 2,
    "optimizers": 3, "tasks": 3,
    "": 4,  # the package face, learned_dco/__init__.py
    "io": 5,
    "meta": 6, "pretrained": 6,
    "bench": 7,
    "studies": 8,
    "app": 9, "stepsize_l2l": 9,
}
"""Part of the package (its first name under ``learned_dco``) -> floor; imports point down."""

PUBLIC_APP = ("learned_dco.app.cli", "learned_dco.app.runs", "learned_dco.app.cards")
"""The application wing's entry points that programs outside the package may use: the
``learned-dco`` command (``cli.main``), reading a run directory (``runs.load_trained``) and
shipping a finished run as a pretrained card (``cards.ship_run``)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, me: str | None = None) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` for every import in ``path`` (the module ``me``, by default
    the one its place in the tree makes it): ``name`` is the imported name for
    ``from module import name`` (``None`` otherwise); a name that is itself a module of the
    tree is reported as that module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path) if me is None else me
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full, None) if is_module(full) else (node.lineno, base, alias.name))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value, None))
    return found


def part(module: str) -> str:
    """``learned_dco.meta.trainer`` -> ``meta``; ``learned_dco`` -> ``""``."""
    return module.split(".")[1] if module.count(".") else ""


def floor_problem(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (both package modules), or ``None``."""
    mine, theirs = part(importer), part(imported)
    if mine == theirs:
        return None
    for p in (mine, theirs):
        if p not in FLOORS:
            return f"{PACKAGE}.{p} has no floor in FLOORS (add it there and to docs/ARCHITECTURE.md)"
    if FLOORS[theirs] >= FLOORS[mine]:
        where = "the same floor" if FLOORS[theirs] == FLOORS[mine] else "a higher floor"
        return f"{mine or 'the package face'} (floor {FLOORS[mine]}) imports {theirs or 'the package face'} on {where}"
    return None


def public_api_problem(imported: str, name: str | None) -> str | None:
    """Why a benchmark or example may not import ``name`` from ``imported``, or ``None``.

    The public API: every module of the package below the application wing whose dotted
    path has no part starting with ``_``, every name in it not starting with ``_``, and of
    the application wing only :data:`PUBLIC_APP`."""
    if any(p.startswith("_") for p in imported.split(".")[1:]):
        return f"private module {imported}"
    if name is not None and name.startswith("_"):
        return f"private name {imported}.{name}"
    if part(imported) == "app" and not any(imported == m or imported.startswith(m + ".") for m in PUBLIC_APP):
        return f"{imported} is inside the application wing (public there: {', '.join(PUBLIC_APP)})"
    return None


def private_attributes(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` for every attribute path that starts at a name bound to a module
    of the package (``import learned_dco as ldco``, ``from learned_dco import bench``) and
    passes through a name starting with ``_`` (``bench.baselines._helper``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
            modules |= {a.asname or a.name for a in node.names if is_module(f"{node.module}.{a.name}")}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                found.append((node.lineno, ".".join([base.id, *chain])))
    return sorted(found)


def package_files() -> list[Path]:
    return sorted((ROOT / PACKAGE).rglob("*.py"))


def violations(files, check) -> list[str]:
    out = []
    for path in files:
        me = module_name(path)
        for line, imported, name in imports(path):
            if imported == PACKAGE or imported.startswith(PACKAGE + "."):
                why = check(me, imported, name)
                if why:
                    out.append(f"{path.relative_to(ROOT)}:{line}: {why}")
    return out


def test_every_package_module_imports_only_downwards():
    bad = violations(package_files(), lambda me, imported, _: floor_problem(me, imported))
    assert not bad, "\n".join(bad)


def test_benchmarks_and_examples_use_the_public_api():
    files = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "examples").glob("*.py"))
    bad = violations(files, lambda _, imported, name: public_api_problem(imported, name))
    bad += [f"{p.relative_to(ROOT)}:{line}: private name {name}" for p in files for line, name in private_attributes(p)]
    assert not bad, "\n".join(bad)


def test_every_part_of_the_package_has_a_floor():
    parts = {part(module_name(p)) for p in package_files()}
    assert parts <= set(FLOORS), sorted(parts - set(FLOORS))


@pytest.mark.parametrize("source, problem", [
    ("from learned_dco.app import runs\n", "imports app on a higher floor"),
    ("def f():\n    from learned_dco.app.runs import load_trained\n", "imports app on a higher floor"),
    ("import importlib\nimportlib.import_module('learned_dco.studies')\n", "imports studies on a higher floor"),
    ("from ..tasks import base\n", "imports tasks on the same floor"),
])
def test_the_walk_sees_every_form_of_import(tmp_path, source, problem):
    """An upward import written at module level, inside a function, through importlib or as
    a relative import is found (in a module read as if it were under optimizers/)."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    me = f"{PACKAGE}.optimizers.planted"
    bad = [why for _, imported, _ in imports(planted, me) if imported.startswith(PACKAGE)
           for why in [floor_problem(me, imported)] if why]
    assert len(bad) == 1 and problem in bad[0], bad


def test_a_private_attribute_reached_through_a_module_is_found(tmp_path):
    path = tmp_path / "bench_x.py"
    path.write_text("import learned_dco as ldco\nfrom learned_dco import bench\nx = ldco.meta.MetaTrainer\n"
                    "y = bench.baselines._with(1)\nz = ldco._private\nw = other._fine\n")
    assert private_attributes(path) == [(4, "bench.baselines._with"), (5, "ldco._private")]


def test_the_public_api_rule():
    assert public_api_problem("learned_dco.meta", "MetaTrainer") is None
    assert public_api_problem("learned_dco.app.cli", "main") is None
    assert public_api_problem("learned_dco.app.xla", "flag_name")
    assert public_api_problem("learned_dco.studies.metamd", "_step_fns")
    assert public_api_problem("learned_dco.optimizers._private", None)


# --- docs/ARCHITECTURE.md matches the tree -------------------------------------------------

ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


def doc_floors(text: str) -> dict[str, int]:
    """Part -> floor as the diagram (the first code block) draws it: ``floor N  names  path``
    lines, a continuation line keeping the floor above it; ``(face)`` is the package face."""
    block = text.split("```")[1]
    floors, floor = {}, None
    for line in block.splitlines()[1:]:
        if line.startswith("floor"):
            floor = int(line.split()[1])
        column = line[9:].split(f"{PACKAGE}/")[0].split("  ")[0]
        for name in re.findall(r"\(face\)|[a-z][a-z_0-9]*", column):
            floors["" if name == "(face)" else name] = floor
    return floors


def doc_modules(text: str) -> set[str]:
    """The files the *Modules* section names: each bullet opens with a folder of the package
    (`` `learned_dco/tasks/`: ``) and names its files (`` `base.py` ``)."""
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    named = set()
    for bullet in re.split(r"\n\* ", section)[1:]:
        folder = re.match(r"`([\w/]+/)`:", bullet)
        if folder:
            named |= {folder.group(1) + f for f in re.findall(r"`([\w]+\.py)`", bullet)}
            named.add(folder.group(1) + "__init__.py")  # a subpackage's face goes with its bullet
    return named


def test_the_diagram_draws_the_floors_the_test_keeps():
    assert doc_floors(ARCHITECTURE.read_text(encoding="utf-8")) == FLOORS


def test_every_module_the_architecture_names_exists_and_every_module_is_named():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = doc_modules(text)
    paths = set(re.findall(rf"`?({PACKAGE}/[\w/]*(?:\.py|/))", text))
    missing = sorted(p for p in named | paths if not (ROOT / p).exists())
    assert not missing, f"docs/ARCHITECTURE.md names what the tree does not have: {missing}"
    unnamed = sorted(str(p.relative_to(ROOT)) for p in package_files() if str(p.relative_to(ROOT)) not in named)
    assert not unnamed, f"modules of the package that docs/ARCHITECTURE.md does not name: {unnamed}"


def test_the_architecture_checks_see_a_missing_and_an_unnamed_module():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert "learned_dco/meta/inner.py" in doc_modules(text)
    assert "learned_dco/meta/inner.py" not in doc_modules(text.replace("`inner.py` (the one", "(the one"))
    broken = text.replace("floor 2  qp ", "floor 3  qp ")
    assert doc_floors(broken)["qp"] == 3 != FLOORS["qp"]


HISTORY = re.compile("|".join([r"[Ii]ssue ?#?[0-9]+", "moved" + " here", "kept for" + " existing", "still" + " reach"]))
"""What a comment or string says of the code's past (the git log holds that) instead of the code."""


def test_the_code_tells_no_history():
    files = [p for d in ("learned_dco", "tests", "benchmarks", "tools", "examples") for p in sorted((ROOT / d).rglob("*.py"))]
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if HISTORY.search(line)]
    assert not found, "\n".join(found)
