r"""Structural comparison of the benchmark's problems with the meta-training mixtures.

A mixture member (an entry of ``task.members`` in a ``learned_dco/configs/pretrain_*.yaml`` recipe or a
shipped card's ``recipe``) gets a :class:`~learned_dco.bench.problems.Descriptor` from its
task-family name and fields (:func:`member_descriptor`). A benchmark problem *overlaps* a
member when

* their model class and loss class are equal (the same kind of model trained on the same
  kind of objective is not held out, whatever the data), or
* their model class and data source are equal (the same model on the same data).

:func:`overlaps` lists every (problem, member) overlap of problems that are not labelled
in-distribution controls; the shipped problem set must give an empty list
(``tests/test_bench.py``). A family with no descriptor here is an error (add one before
meta-training on it), so a new member cannot slip past the check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from learned_dco.bench.problems import Descriptor, Problem
from learned_dco.validation import ValidationError

_FAMILY_CLASSES: dict[str, tuple[str, str]] = {
    "softmax_regression": ("linear", "classification_xent"),
    "logistic_regression": ("linear", "classification_xent"),
    "mlp_classifier": ("mlp", "classification_xent"),
    "digits_mlp": ("mlp", "classification_xent"),
    "digits_convnet": ("convnet", "classification_xent"),
    "quadratic": ("linear", "squared_error"),
    "noisy_quadratic": ("linear", "squared_error"),
    "spectral_noisy_quadratic": ("linear", "squared_error"),
    "least_squares": ("linear", "squared_error"),
    "shifted_least_squares": ("linear", "squared_error"),
    "lasso": ("linear", "squared_error"),
    "nonneg_least_squares": ("linear", "squared_error"),
    "simplex_least_squares": ("linear", "squared_error"),
    "box_lqr": ("linear", "squared_error"),
    "rosenbrock": ("valley", "valley"),
    "beverton_holt": ("population_model", "squared_error"),
    "smooth_interpolation": ("interpolation", "squared_error"),
}
"""Task family (``learned_dco.tasks.FAMILIES`` name) -> (model class, loss class)."""


def member_descriptor(member: Mapping[str, Any]) -> Descriptor:
    """The descriptor of one mixture member given as its config mapping (``name`` + fields)."""
    name = member.get("name")
    if name not in _FAMILY_CLASSES:
        raise ValidationError(f"mixture member {name!r} has no structural descriptor; add it to "
                              f"learned_dco.bench.structure._FAMILY_CLASSES (known: {sorted(_FAMILY_CLASSES)})")
    model, loss = _FAMILY_CLASSES[name]
    data = member.get("data")
    if data is None:
        data = "digits" if name.startswith("digits_") else f"generated:{name}"
    elif data == "synthetic":
        data = "generated:synthetic_classification"
    detail = ", ".join(f"{k}={member[k]}" for k in ("hidden", "activation", "channels", "dim") if k in member)
    return Descriptor(model, str(data), loss, detail)


def overlap(problem: Descriptor, member: Descriptor) -> bool:
    """Whether a problem's structure overlaps a member's (see the module docstring)."""
    return problem.model == member.model and (problem.loss == member.loss or problem.data == member.data)


def recipe_members(source: str | Path | Mapping[str, Any]) -> list[dict]:
    """The mixture members of a recipe: a YAML config path or a parsed config/recipe mapping
    (a single-family ``task`` counts as one member)."""
    if not isinstance(source, Mapping):
        import yaml

        source = yaml.safe_load(Path(source).read_text())
    task = dict(source.get("task") or {})
    if task.get("name") == "mixture":
        return [dict(m) for m in task.get("members", [])]
    return [task] if task else []


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""The configs shipped in the package (``learned_dco/configs``; ``learned-dco configs`` lists them)."""


def shipped_recipes(config_dir: str | Path | None = CONFIG_DIR) -> dict[str, list[dict]]:
    """Label -> mixture members of every shipped recipe: each shipped card's recipe
    (``card:NAME``) and every ``pretrain_*.yaml`` in ``config_dir`` (default: the package's
    shipped configs; ``None``: cards only)."""
    from learned_dco import pretrained

    out = {f"card:{n}": recipe_members(pretrained.card(n).get("recipe", {})) for n in pretrained.list()}
    if config_dir is not None:
        for path in sorted(Path(config_dir).glob("pretrain_*.yaml")):
            out[f"config:{path.name}"] = recipe_members(path)
    return out


def overlaps(problems: Iterable[Problem], recipes: Mapping[str, list[dict]], *, include_controls: bool = False
             ) -> list[tuple[str, str, int, Descriptor]]:
    """``(problem, recipe, member index, member descriptor)`` for every overlap of a problem
    (controls only when ``include_controls``) with a member of a recipe."""
    found = []
    for prob in problems:
        if prob.control and not include_controls:
            continue
        for label, members in recipes.items():
            for i, member in enumerate(members):
                desc = member_descriptor(member)
                if overlap(prob.descriptor, desc):
                    found.append((prob.name, label, i, desc))
    return found


__all__ = ["member_descriptor", "overlap", "overlaps", "recipe_members", "shipped_recipes"]
