"""Pretrained learned optimizers shipped with the package: weights + a JSON card each.

A shipped optimizer ``NAME`` is two files in this folder's ``weights/``:

* ``NAME.json``, its *card*: ``format`` (this loader's card version), ``architecture``
  (``optimizer``: a key of ``ldco.LEARNED_OPTIMIZERS``; ``fields``: the dataclass fields
  that rebuild it; ``meta_shapes``: every meta-parameter leaf's path -> shape, the
  architecture's fingerprint), ``options`` (``load`` keyword -> optimizer field it sets,
  e.g. the expected number of steps for time features), ``recipe`` (config, seed, task
  mixture, estimator, meta-steps, wall time, hardware) and ``heldout`` (the held-out
  benchmark's numbers for these weights);
* ``NAME.msgpack``: the meta-parameters (``flax.serialization`` msgpack; never pickle).

Loading reads only these files (no network). Weights from another version of the
architecture (a leaf's path or shape differs from what the optimizer class builds today)
are refused with an error naming the first difference, never silently misloaded.

:func:`save` writes a card in the format above (from a finished ``learned-dco train`` run:
:func:`learned_dco.app.cards.ship_run`, which reads the recipe from the run directory). The
shipped optimizers, their recipes (``learned_dco/configs/pretrain_<name>.yaml``, ``learned-dco train pretrain_<name>``) and their held-out
numbers are described in ``docs/pretrained.md``.

Example::

    import learned_dco as ldco
    ldco.pretrained.list()                          # names of the shipped optimizers
    tx = ldco.pretrained.load(name, num_steps=1000) # an optax.GradientTransformation
    lopt, meta = ldco.pretrained.load_lopt(name)    # to meta-train further
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from learned_dco.io import atomic_write_bytes, atomic_write_json
from learned_dco.learned import LearnedOptimizer
from learned_dco.validation import ValidationError

CARD_FORMAT = 1
"""Version of the card layout this loader reads."""

WEIGHTS_DIR = Path(__file__).parent / "weights"
"""Where the shipped cards and weights live."""

_TEMPLATE_PARAMS = {"w": np.zeros((3, 2), np.float32), "b": np.zeros((2,), np.float32)}
"""Stand-in model for building the meta-parameter template. A shippable optimizer's
meta-parameters must not depend on the model's shapes (it applies to any pytree)."""


class PretrainedError(ValidationError):
    """An unknown name, an option the optimizer does not take, or incompatible weights."""


class BudgetWarning(UserWarning):
    """A schedule-aware pretrained optimizer was loaded without being told its step budget."""


_WARNED_BUDGET: set[str] = set()
"""Names already warned about a missing ``num_steps`` in this process (each warns once)."""


def _warn_budget(name: str, data: Mapping[str, Any]) -> None:
    """Warn once per name that ``load(name)`` without ``num_steps`` uses the card's default."""
    if name in _WARNED_BUDGET:
        return
    _WARNED_BUDGET.add(name)
    field = data.get("options", {}).get("num_steps")
    default = data.get("architecture", {}).get("fields", {}).get(field)
    warnings.warn(
        f"pretrained {name!r} is schedule-aware and was not told the run's budget: it assumes "
        f"num_steps={default}. Pass load({name!r}, num_steps=T) with your number of steps T "
        f"(the default can cost several-fold in final loss when T differs).",
        BudgetWarning, stacklevel=3)


def _root(root: str | Path | None) -> Path:
    return WEIGHTS_DIR if root is None else Path(root)


def list(root: str | Path | None = None) -> builtins.list[str]:  # noqa: A001 (shadows the builtin on purpose: ldco.pretrained.list())
    """Names of the pretrained optimizers (cards in ``root``, default the shipped ones)."""
    folder = _root(root)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def card(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """The parsed JSON card of ``name`` (``PretrainedError`` listing the names if unknown)."""
    path = _root(root) / f"{name}.json"
    if not isinstance(name, str) or not name or "/" in name or not path.is_file():
        raise PretrainedError(f"unknown pretrained optimizer {name!r}; shipped: {list(root)}")
    data = json.loads(path.read_text())
    if data.get("format") != CARD_FORMAT:
        raise PretrainedError(
            f"pretrained {name!r}: card format {data.get('format')!r}, this loader reads {CARD_FORMAT}"
        )
    return data


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (frozen dataclasses hold hashable values)."""
    if isinstance(value, builtins.list):
        return tuple(_tuples(v) for v in value)
    return value


def _build(name: str, arch: Mapping[str, Any], overrides: Mapping[str, Any] = {}) -> LearnedOptimizer:
    from learned_dco.optimizers import LEARNED_OPTIMIZERS

    kind = arch.get("optimizer")
    if kind not in LEARNED_OPTIMIZERS:
        raise PretrainedError(
            f"pretrained {name!r}: architecture.optimizer {kind!r} is not one of {sorted(LEARNED_OPTIMIZERS)}"
        )
    cls = LEARNED_OPTIMIZERS[kind]
    fields = {k: _tuples(v) for k, v in dict(arch.get("fields", {}), **overrides).items()}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise PretrainedError(
            f"pretrained {name!r}: {cls.__name__} has no fields {unknown} (architecture version mismatch?)"
        )
    return cls(**fields)


def meta_shapes(meta: Any) -> dict[str, builtins.list[int]]:
    """Leaf path -> shape of a meta-parameter pytree (the architecture fingerprint)."""
    return {
        jax.tree_util.keystr(path): [int(d) for d in jnp.shape(leaf)]
        for path, leaf in jax.tree_util.tree_flatten_with_path(meta)[0]
    }


def _template(lopt: LearnedOptimizer) -> Any:
    return lopt.init(jax.random.PRNGKey(0), _TEMPLATE_PARAMS)


def _check_shapes(name: str, want: Mapping[str, Any], got: Mapping[str, Any], what: str) -> None:
    if dict(want) == dict(got):
        return
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    diff = [k for k in sorted(set(want) & set(got)) if builtins.list(want[k]) != builtins.list(got[k])]
    detail = (
        f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
        else f"{diff[0]} has shape {got[diff[0]]}, expected {want[diff[0]]}"
    )
    raise PretrainedError(f"pretrained {name!r}: {what} do not match the architecture ({detail}); "
                          "the weights come from a different version of the optimizer")


def load_lopt(name: str, *, root: str | Path | None = None) -> tuple[LearnedOptimizer, Any]:
    """``(lopt, meta)`` of a pretrained optimizer, e.g. to meta-train it further.

    The result is cached per (card, weights) file version, so a builder called at every
    step (``optax.inject_hyperparams`` calls :func:`load` in each ``update``) reads the files
    once; rewriting either file loads it afresh."""
    stamp = None
    if isinstance(name, str) and name and "/" not in name:
        files = [_root(root) / f"{name}.json", _root(root) / f"{name}.msgpack"]
        if all(f.is_file() for f in files):
            stats = [(f, f.stat()) for f in files]
            stamp = tuple((str(f.resolve()), st.st_ino, st.st_mtime_ns, st.st_size) for f, st in stats)
    if stamp is None:
        lopt, meta = _load_lopt(name, root)
    else:
        lopt, meta = _cached_lopt(name, str(_root(root).resolve()), stamp)
    # Fresh containers and JAX arrays: the cache holds NumPy values (a load inside jit must
    # not store that trace's values) and the caller may edit what it gets.
    return lopt, jax.tree.map(jnp.asarray, meta)


@functools.lru_cache(maxsize=16)
def _cached_lopt(name: str, root: str, stamp: tuple) -> tuple[LearnedOptimizer, Any]:
    del stamp  # part of the cache key only
    return _load_lopt(name, root)


def _load_lopt(name: str, root: str | Path | None) -> tuple[LearnedOptimizer, Any]:
    data = card(name, root)
    arch = data.get("architecture", {})
    lopt = _build(name, arch)
    template = _template(lopt)
    _check_shapes(name, meta_shapes(template), arch.get("meta_shapes", {}), "the card's meta_shapes")
    raw = serialization.msgpack_restore((_root(root) / f"{name}.msgpack").read_bytes())
    try:
        meta = serialization.from_state_dict(template, raw)
    except (ValueError, KeyError, TypeError) as err:
        raise PretrainedError(f"pretrained {name!r}: weights do not match the architecture ({err})") from None
    _check_shapes(name, meta_shapes(template), meta_shapes(meta), "the stored weights")
    meta = jax.tree.map(lambda t, v: np.asarray(v, np.dtype(jnp.result_type(t))), template, meta)
    return lopt, meta


def load(
    name: str,
    *,
    root: str | Path | None = None,
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
    num_steps: Any = None,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
    r"""The pretrained optimizer ``name`` as an ``optax.GradientTransformationExtraArgs``.

    ``options`` are the card's ``options`` (e.g. ``num_steps``, the run's length for a
    horizon-aware optimizer: a Python int or a, possibly traced, scalar array); each sets
    one field of the optimizer. Anything else raises ``PretrainedError`` listing what the
    optimizer takes. ``learning_rate`` (a number, array or optax schedule; default 1, the
    shipped behaviour) scales every update and ``weight_decay`` adds decoupled weight decay
    scaled by it, :math:`u = \eta\,(u^{opt} - \lambda\theta)` as in ``optax.adamw``.
    bfloat16/float16 params keep their state dtypes. ``optax.inject_hyperparams`` can wrap
    it::

        tx = optax.inject_hyperparams(functools.partial(load, "learned_prodigy"))(
            learning_rate=0.5, num_steps=300)   # state.hyperparams holds both
    """
    nested = options.pop("options", None)
    if isinstance(nested, Mapping):
        # optax.inject_hyperparams binds this signature and hands the var-keyword back as
        # one mapping named ``options``.
        options = {**nested, **options}
    elif nested is not None:
        options["options"] = nested
    if num_steps is not None:
        options["num_steps"] = num_steps
    data = card(name, root)
    accepted = data.get("options", {})
    if "num_steps" in accepted and "num_steps" not in options:
        _warn_budget(name, data)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise PretrainedError(
            f"pretrained {name!r} takes no option(s) {unknown}; it takes {sorted(accepted)}"
        )
    lopt, meta = load_lopt(name, root=root)
    if options:
        lopt = _build(name, data["architecture"], {accepted[k]: v for k, v in options.items()})
    return lopt.opt_fn(meta, learning_rate=learning_rate, weight_decay=weight_decay)


def save(
    name: str,
    lopt: LearnedOptimizer,
    meta: Any,
    *,
    root: str | Path,
    options: Mapping[str, str] | None = None,
    recipe: Mapping[str, Any] | None = None,
    heldout: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``NAME.json`` + ``NAME.msgpack`` into ``root``; returns the card's path.

    ``options`` maps a ``load`` keyword to the optimizer field it sets.
    """
    from learned_dco.optimizers import LEARNED_OPTIMIZERS

    kinds = [k for k, cls in LEARNED_OPTIMIZERS.items() if type(lopt) is cls]
    if not kinds:
        raise PretrainedError(f"{type(lopt).__name__} is not in ldco.LEARNED_OPTIMIZERS; it cannot be shipped")
    template = _template(lopt)
    _check_shapes(name, meta_shapes(template), meta_shapes(meta), "meta")
    fields = {f.name: getattr(lopt, f.name) for f in dataclasses.fields(lopt)}
    for option, field in (options or {}).items():
        if field not in fields:
            raise PretrainedError(f"option {option!r} names {field!r}, not a field of {type(lopt).__name__}")
    data = {
        "format": CARD_FORMAT,
        "name": name,
        "architecture": {"optimizer": kinds[0], "fields": fields, "meta_shapes": meta_shapes(meta)},
        "options": dict(options or {}),
        "recipe": dict(recipe or {}),
        "heldout": dict(heldout or {}),
    }
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    state = serialization.to_state_dict(jax.tree.map(np.asarray, meta))
    atomic_write_bytes(folder / f"{name}.msgpack", serialization.msgpack_serialize(state))
    path = folder / f"{name}.json"
    atomic_write_json(path, data, indent=2, sort_keys=True)
    return path


__all__ = ["BudgetWarning", "CARD_FORMAT", "WEIGHTS_DIR", "PretrainedError", "card", "list", "load", "load_lopt", "meta_shapes", "save"]
