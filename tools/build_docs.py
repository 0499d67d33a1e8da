"""Build the API reference from the docstrings with pdoc, warnings as errors.

    pip install -e ".[docs]"
    python tools/build_docs.py [--out site]        # then open site/index.html

pdoc reports problems as Python warnings while it renders: a type annotation it cannot
resolve, a docstring it cannot parse, a submodule that fails to import, a cross-reference
to a name that does not exist. This script records every warning raised during the build
and exits 1 listing them (CI runs it, .ci/run), so the reference never ships with a broken
page. Warnings that third-party packages raise on import (listed in ``IGNORED``) are not
ours to fix and are left out.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "learned_dco",  # with its public subpackages: analysis, meta, pretrained, qp, tasks
    "learned_dco.optimizers",
    "learned_dco.learned",
    "learned_dco.app",
    "learned_dco.studies",
    "learned_dco.studies.stepsize_l2l",
    "learned_dco.io",
    "learned_dco.types",
    "learned_dco.validation",
]
IGNORED = ("JAXopt is no longer maintained",)


def namedtuple_constructors_in_their_modules(roots: list[str]) -> int:
    """Give each ``typing.NamedTuple`` of the package a constructor that names its module.

    Python builds a NamedTuple's ``__new__`` in a throwaway namespace (``__module__`` is
    ``namedtuple_<Name>``), so pdoc cannot find the globals to resolve the postponed
    annotations of its fields (github.com/mitmproxy/pdoc/issues/765) and warns for every field typed with a name
    of the module (``Array``, ``PyTree``). Pointing ``__new__.__module__`` at the class's
    module lets pdoc resolve them there; it changes nothing else, in this process only.
    ``roots`` are module names; a package's submodules are included. Returns the number of
    classes changed."""
    import importlib
    import pkgutil

    changed = 0
    names = []
    for root in roots:
        package = importlib.import_module(root)
        names.append(root)
        if hasattr(package, "__path__"):
            names += [m.name for m in pkgutil.walk_packages(package.__path__, root + ".")]
    for name in dict.fromkeys(names):
        module = importlib.import_module(name)
        for obj in vars(module).values():
            new = getattr(obj, "__new__", None)
            if (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")
                    and obj.__module__ == name and str(getattr(new, "__module__", "")).startswith("namedtuple_")):
                new.__module__ = obj.__module__
                changed += 1
    return changed


def build(out: Path, modules: list[str] = MODULES) -> list[str]:
    """Render ``modules`` into ``out``; returns the warnings raised (as one line each)."""
    import pdoc
    import pdoc.render

    namedtuple_constructors_in_their_modules(modules)

    pdoc.render.configure(docformat="restructuredtext", math=True, search=True, show_source=True,
                          footer_text="learned_dco API reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*modules, output_directory=out)
    problems = []
    for w in caught:
        message = str(w.message)
        if any(text in message for text in IGNORED):
            continue
        problems.append(f"{Path(w.filename).name}:{w.lineno}: {w.category.__name__}: {message.splitlines()[0]}")
    return sorted(set(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "site"), help="output directory (default: site/)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    problems = build(Path(args.out))
    if problems:
        print(f"build_docs: {len(problems)} warning(s), treated as errors:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"wrote the API reference to {args.out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
