"""The package carries what the docs promise: the wheel holds the pretrained weights, the
digits data, the shipped run configs and the licence, and works unpacked away from the
source tree; shipped configs are addressed by name; figures are an extra
(``learned-dco[plots]``) whose absence is one line, never a traceback."""

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from learned_dco.app import cli, shipped

ROOT = Path(__file__).resolve().parents[1]
SOURCE_CONFIGS = sorted((ROOT / "learned_dco" / "configs").glob("*.yaml"))


def _main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- the wheel ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built by setuptools' PEP 517 backend from a clean copy of the source (no
    build/ or egg-info left from earlier builds can leak in, the checkout stays untouched)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "learned_dco", src / "learned_dco", ignore=shutil.ignore_patterns("__pycache__"))
    out = base / "dist"
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    run = subprocess.run([sys.executable, "-c", build, str(out)], cwd=src, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out / run.stdout.strip().splitlines()[-1]


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        read = z.read
        for path in ("learned_dco/pretrained/weights/learned_prodigy.json",
                     "learned_dco/pretrained/weights/learned_prodigy.msgpack",
                     "learned_dco/tasks/data/digits.npz"):
            assert read(path) == (ROOT / path).read_bytes(), path
        assert len(SOURCE_CONFIGS) >= 8
        for cfg in SOURCE_CONFIGS:
            assert read(f"learned_dco/configs/{cfg.name}") == cfg.read_bytes(), cfg.name
        # every module of the source tree, so no subpackage is left out by the package finder
        modules = {str(p.relative_to(ROOT)) for p in (ROOT / "learned_dco").rglob("*.py")}
        assert modules <= names, sorted(modules - names)[:5]
        dist_info = "learned_dco-0.1.0.dist-info"
        licence = read(f"{dist_info}/licenses/LICENSE")
        assert licence == (ROOT / "LICENSE").read_bytes()
        assert b"Apache License" in licence and b"Version 2.0, January 2004" in licence
        assert b"END OF TERMS AND CONDITIONS" in licence  # the full text, not a stub
        meta = email.message_from_bytes(read(f"{dist_info}/METADATA"))
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = meta.get_all("Classifier")
    assert {"Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.13"} <= set(classifiers)
    assert "plots" in meta.get_all("Provides-Extra")
    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if r.startswith("matplotlib")], core  # figures are an extra
    assert any(r.startswith("matplotlib") and 'extra == "plots"' in r for r in requires), requires


UNPACKED = """
import sys
from pathlib import Path
import learned_dco, learned_dco.tasks.digits as digits
from learned_dco.app import config, shipped

where = Path(sys.argv[1]).resolve()
assert Path(learned_dco.__file__).resolve().is_relative_to(where), learned_dco.__file__
assert shipped.config_dir().resolve().is_relative_to(where)
print(",".join(shipped.shipped()))
cfg = config.load_config(shipped.resolve("pretrain_learned_prodigy"))
assert cfg.optimizer.name == "learned_prodigy"
x, y = digits.load_digits()
assert x.shape[0] == y.shape[0] == 1797
tx = learned_dco.pretrained.load("learned_prodigy", num_steps=10)
"""


@pytest.mark.integration
def test_unpacked_wheel_works_without_the_checkout(wheel, tmp_path):
    """A wheel is a zip of the installed files: unpacked onto ``sys.path`` in a directory
    away from the checkout, the configs resolve by name and the data and weights load."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run([sys.executable, "-c", UNPACKED, str(site)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-1].split(",") == [p.stem for p in SOURCE_CONFIGS]


# --- shipped configs by name ----------------------------------------------------------------


def _first_comment(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), f"{path.name}: the first line is not its description"
    return first[2:].strip()


def test_configs_command_lists_every_shipped_config(capsys):
    code, out, err = _main(["configs"], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()[: len(SOURCE_CONFIGS)]}
    assert rows == {p.stem: _first_comment(p) for p in SOURCE_CONFIGS}
    assert all(0 < len(d) <= 100 for d in rows.values())
    assert {"quick_demo", "pretrain_learned_prodigy"} <= set(rows)


def test_configs_show_prints_the_file(capsys):
    code, out, _ = _main(["configs", "--show", "quick_demo"], capsys)
    assert code == 0 and out == (ROOT / "learned_dco/configs/quick_demo.yaml").read_text()


def test_a_name_resolves_to_the_shipped_file_and_a_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    want = (ROOT / "learned_dco" / "configs" / "quick_demo.yaml").resolve()
    assert shipped.resolve("quick_demo").resolve() == want
    assert shipped.resolve("quick_demo.yaml").resolve() == want
    assert shipped.resolve(str(want)) == want  # a path works as before
    (tmp_path / "quick_demo.yaml").write_text("seed: 1\n")
    assert shipped.resolve("quick_demo.yaml") == Path("quick_demo.yaml")  # an existing file wins


def test_unknown_names_and_old_paths_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(["train", "quick_dem", "--no-compile-cache"], capsys)
    assert code == cli.EXIT_FILE and len(err.strip().splitlines()) == 1
    assert "quick_dem: neither a file nor a shipped config" in err and "quick_demo" in err
    code, _, err = _main(["train", "configs/quick_demo.yaml", "--no-compile-cache"], capsys)
    assert code == cli.EXIT_FILE and "no such config file" in err and "'quick_demo'" in err
    code, _, err = _main(["configs", "--show", "nope"], capsys)
    assert code == cli.EXIT_FILE and "nope: no shipped config" in err and len(err.strip().splitlines()) == 1


# --- figures are an extra ------------------------------------------------------------------

WITHOUT_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None  # as if not installed: `import matplotlib` raises ImportError
import learned_dco, learned_dco.app.cli, learned_dco.app.report, learned_dco.studies
import learned_dco.studies.dco, learned_dco.studies.dco.report, learned_dco.studies.star_nqm
from learned_dco import extras
try:
    extras.pyplot()
except extras.MissingExtra as e:
    print(e)
else:
    raise AssertionError("pyplot() without matplotlib")
"""


def test_without_matplotlib_the_package_imports_and_a_figure_is_one_line():
    run = subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "figures need matplotlib, which is not installed: pip install 'learned-dco[plots]'"


def test_reproduce_without_matplotlib_stops_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    code, _, err = _main(["reproduce", "dco", "--quick", "--out", tmp_path / "out", "--no-compile-cache"], capsys)
    assert code == cli.EXIT_MISSING_EXTRA == 9
    assert err.strip().splitlines() == [
        "learned-dco reproduce: error: figures need matplotlib, which is not installed: pip install 'learned-dco[plots]'"]
    assert not (tmp_path / "out").exists()  # stopped before the study ran
