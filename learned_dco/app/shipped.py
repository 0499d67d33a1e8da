"""The run configs shipped inside the package (``learned_dco/configs/*.yaml``): the demos,
the DCO paper's setups and the recipes of the pretrained optimizers, addressable by name.

``learned-dco train quick_demo`` and ``learned-dco train learned_dco/configs/quick_demo.yaml``
run the same config: :func:`resolve` takes an existing file as it is, and otherwise a
shipped config's name (its file stem, with or without ``.yaml``). Each file's first comment
line is its one-line description (:func:`describe`, listed by ``learned-dco configs``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SUFFIX = ".yaml"


def config_dir() -> Path:
    """The directory of the shipped configs inside the installed package."""
    return Path(str(resources.files("learned_dco").joinpath("configs")))


def shipped() -> dict[str, Path]:
    """Name (file stem) -> path of every shipped config, sorted by name."""
    return {p.stem: p for p in sorted(config_dir().glob(f"*{SUFFIX}"))}


def describe(path: str | Path) -> str:
    """The config's one-line description: its first comment line (``""`` without one)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("#"):
            return text.lstrip("#").strip()
        if text:
            return ""
    return ""


def is_name(arg: str | Path) -> bool:
    """Whether ``arg`` could name a shipped config: one path component, no other suffix."""
    text = str(arg)
    stem = text[: -len(SUFFIX)] if text.endswith(SUFFIX) else text
    return bool(stem) and "/" not in text and "\\" not in text and "." not in stem


def resolve(arg: str | Path) -> Path:
    """The config file ``arg`` names: an existing path as it is, else the shipped config of
    that name. Raises ``FileNotFoundError`` naming the argument and, for a bare name, the
    shipped configs."""
    path = Path(arg)
    if path.exists():
        return path
    if not is_name(arg):
        hint = f" (a shipped config of that name exists: give it as {path.stem!r})" if path.stem in shipped() else ""
        raise FileNotFoundError(2, f"no such config file{hint}", str(arg))
    return resolve_name(arg, what="neither a file nor a shipped config")


def resolve_name(name: str | Path, what: str = "no shipped config of that name") -> Path:
    """The path of the shipped config ``name`` (``.yaml`` optional); ``FileNotFoundError``
    listing the shipped names otherwise."""
    text = str(name)
    stem = text[: -len(SUFFIX)] if text.endswith(SUFFIX) else text
    table = shipped()
    if stem in table:
        return table[stem]
    raise FileNotFoundError(2, f"{what} (shipped: {', '.join(table)}; see `learned-dco configs`)", text)
