r"""The benchmark's rows: tuned baselines, tuning-free baselines and candidates.

Tuned per problem (:data:`TUNED`; the learning rate is picked on separate tuning seeds from
:data:`GRID`, a half-decade grid :math:`10^{-4}, 10^{-3.5}, \dots, 1`):

* ``adam``: Adam at a constant rate;
* ``adam_cosine``: Adam with cosine decay from the rate to 0 over the budget (the fair
  reference for an optimizer that is told its budget);
* ``adamw``: AdamW, weight decay :math:`10^{-4}`;
* ``sgdm``: SGD with momentum 0.9.

Untuned (:data:`UNTUNED`, optax defaults at the pinned optax version):

* ``adam_1e-3``: Adam(1e-3);
* ``prodigy``: ``optax.contrib.prodigy()`` (Mishchenko & Defazio 2023);
* ``prodigy_linear_decay``: Prodigy with optax's recommended schedule, a linear decay of its
  rate multiplier from 1 to 0 over the budget (no warmup);
* ``dog``: ``optax.contrib.dog()`` (Ivgi et al. 2023);
* ``dadapt_adamw``: ``optax.contrib.dadapt_adamw()`` (Defazio & Mishchenko 2023);
* ``schedule_free_adamw``: ``optax.contrib.schedule_free_adamw()`` (Defazio et al. 2024),
  its loss measured at ``optax.contrib.schedule_free_eval_params``.

A *candidate* is what the user benchmarks (:func:`resolve`): a shipped pretrained name
(cached like a baseline, keyed by the SHA-256 of its weights and architecture; with its
untrained starting point as an extra row, e.g. ``learned_prodigy (untrained)``,
Prodigy-like at its meta-initialisation), an untuned baseline name, or ``module:factory``
for any optax factory, called as ``factory(num_steps=T)`` when it takes ``num_steps`` and
``factory()`` otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from learned_dco.validation import ValidationError

GRID = tuple(10.0 ** (-4 + 0.5 * i) for i in range(9))
"""Learning rates tried by the tuned baselines (half-decade steps, 1e-4 .. 1)."""

TUNED: dict[str, Callable[[Any, int], optax.GradientTransformation]] = {
    "adam": lambda lr, steps: optax.adam(lr),
    "adam_cosine": lambda lr, steps: optax.adam(optax.cosine_decay_schedule(lr, steps)),
    "adamw": lambda lr, steps: optax.adamw(lr, weight_decay=1e-4),
    "sgdm": lambda lr, steps: optax.sgd(lr, momentum=0.9),
}
"""Tuned baseline name -> ``make(learning_rate, budget)`` (the rate may be a traced array)."""

REFERENCE, REFERENCE_COSINE = "adam", "adam_cosine"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An untuned row: ``make(budget) -> transformation``; ``eval_params(state, params)`` gives
    the parameters whose loss is recorded (default: the iterate); ``fingerprint`` names what
    the row is for the baseline cache (``None``: never cached); ``start``: the untrained
    starting point of a learned optimizer, benchmarked beside it."""

    name: str
    make: Callable[[int], optax.GradientTransformation]
    eval_params: Callable[[Any, Any], Any] | None = None
    fingerprint: str | None = None
    start: "Candidate | None" = None


def _sf_eval(state, params):
    return optax.contrib.schedule_free_eval_params(state, params)


UNTUNED: dict[str, Candidate] = {c.name: c for c in (
    Candidate("adam_1e-3", lambda steps: optax.adam(1e-3), fingerprint="optax.adam(1e-3)"),
    Candidate("prodigy", lambda steps: optax.contrib.prodigy(), fingerprint="optax.contrib.prodigy()"),
    Candidate("prodigy_linear_decay", lambda steps: optax.contrib.prodigy(optax.linear_schedule(1.0, 0.0, steps)),
              fingerprint="optax.contrib.prodigy(optax.linear_schedule(1.0, 0.0, T))"),
    Candidate("dog", lambda steps: optax.contrib.dog(), fingerprint="optax.contrib.dog()"),
    Candidate("dadapt_adamw", lambda steps: optax.contrib.dadapt_adamw(), fingerprint="optax.contrib.dadapt_adamw()"),
    Candidate("schedule_free_adamw", lambda steps: optax.contrib.schedule_free_adamw(), eval_params=_sf_eval,
              fingerprint="optax.contrib.schedule_free_adamw() at schedule_free_eval_params"),
)}
"""Untuned baseline name -> :class:`Candidate`."""

_TEMPLATE = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}


def with_steps(lopt, steps: int):
    """``lopt`` told a run of ``steps`` steps where it takes ``num_steps`` (a horizon-aware
    optimizer); any other optimizer unchanged."""
    fields = {f.name for f in dataclasses.fields(lopt)}
    return dataclasses.replace(lopt, num_steps=int(steps)) if "num_steps" in fields else lopt


def learned_start(name: str, lopt) -> Candidate:
    """The untrained starting point of learned optimizer ``lopt`` (its ``init`` meta-parameters;
    told the budget when it takes ``num_steps``)."""
    def make(steps):
        lo = with_steps(lopt, steps)
        return lo.opt_fn(lo.init(jax.random.PRNGKey(0), _TEMPLATE))

    fields = {f.name: getattr(lopt, f.name) for f in dataclasses.fields(lopt) if f.name != "num_steps"}
    return Candidate(f"{name} (untrained)", make, fingerprint=f"{type(lopt).__name__}.init {sorted(fields.items())}")


def pretrained_candidate(name: str, root=None) -> Candidate:
    """``ldco.pretrained.load(name[, num_steps=budget])`` as a candidate, with its untrained start."""
    from learned_dco import pretrained

    takes_steps = "num_steps" in pretrained.card(name, root).get("options", {})
    lopt, _ = pretrained.load_lopt(name, root=root)

    def make(steps):
        return pretrained.load(name, root=root, num_steps=steps) if takes_steps else pretrained.load(name, root=root)

    folder = pretrained.WEIGHTS_DIR if root is None else Path(root)
    digest = hashlib.sha256((folder / f"{name}.msgpack").read_bytes())
    digest.update(json.dumps(pretrained.card(name, root).get("architecture"), sort_keys=True).encode())
    return Candidate(name, make, fingerprint=f"pretrained {name} {digest.hexdigest()}", start=learned_start(name, lopt))


def factory_candidate(spec: str) -> Candidate:
    """``module:factory`` as a candidate (``factory(num_steps=T)`` if it takes ``num_steps``)."""
    module, _, attr = spec.partition(":")
    try:
        fn = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as err:
        raise ValidationError(f"optimizer {spec!r}: cannot import {attr!r} from {module!r} ({err})") from None
    if not callable(fn):
        raise ValidationError(f"optimizer {spec!r}: {attr!r} is not callable")
    try:
        takes = "num_steps" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes = False

    def make(steps):
        tx = fn(num_steps=steps) if takes else fn()
        if not isinstance(tx, optax.GradientTransformation):
            raise ValidationError(f"optimizer {spec!r} returned {type(tx).__name__}, not an optax.GradientTransformation")
        return tx

    return Candidate(spec, make)


def resolve(spec: str, root=None) -> Candidate:
    """A candidate from its command-line name (see the module docstring)."""
    from learned_dco import pretrained

    if not isinstance(spec, str) or not spec:
        raise ValidationError(f"optimizer must be a non-empty string, got {spec!r}")
    if spec in pretrained.list(root):
        return pretrained_candidate(spec, root)
    if spec in UNTUNED:
        return UNTUNED[spec]
    if spec in TUNED:
        raise ValidationError(f"optimizer {spec!r} is a tuned baseline: it is a row of every table already")
    if ":" in spec:
        return factory_candidate(spec)
    raise ValidationError(f"unknown optimizer {spec!r}: expected a pretrained name {pretrained.list(root)}, "
                          f"an untuned baseline {sorted(UNTUNED)} or module:factory")


__all__ = ["Candidate", "GRID", "REFERENCE", "REFERENCE_COSINE", "TUNED", "UNTUNED", "factory_candidate",
           "learned_start", "pretrained_candidate", "resolve"]
