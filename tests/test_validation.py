"""learned_dco.validation: each check accepts valid input unchanged and names bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_dco import validation as V


def test_positive_int():
    assert V.positive_int("O", "n", 3) == 3 and V.positive_int("O", "n", np.int64(2)) == 2
    assert V.positive_int("O", "n", 0, allow_zero=True) == 0
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(V.ValidationError, match=r"O\.n must be an integer >= 1"):
            V.positive_int("O", "n", bad)


def test_positive_number_and_finite():
    assert V.positive_number("O", "lr", 1e-3) == 1e-3
    assert V.positive_number("O", "lr", 0, allow_zero=True) == 0.0
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(V.ValidationError, match=r"O\.lr must be a finite number > 0"):
            V.positive_number("O", "lr", bad)
    with pytest.raises(V.ValidationError, match="finite number"):
        V.finite_number("O", "shift", float("nan"))
    assert V.finite_number("O", "shift", -2) == -2.0


def test_number_in_respects_open_ends():
    assert V.number_in("O", "m", 0.0, 0, 1) == 0.0
    with pytest.raises(V.ValidationError, match=r"\[0, 1\)"):
        V.number_in("O", "m", 1.0, 0, 1, closed=(True, False))
    with pytest.raises(V.ValidationError, match=r"\(0, 1\]"):
        V.number_in("O", "m", 0.0, 0, 1, closed=(False, True))


def test_one_of_and_ints_and_pairs():
    assert V.one_of("O", "solver", "eqqp", ("exact", "eqqp")) == "eqqp"
    with pytest.raises(V.ValidationError, match=r"O\.solver must be one of \('exact', 'eqqp'\), got 'osqp'"):
        V.one_of("O", "solver", "osqp", ("exact", "eqqp"))
    with pytest.raises(V.ValidationError, match="one of"):
        V.one_of("O", "solver", ["unhashable"], {"exact"})
    assert V.positive_ints("O", "hidden", [4, 4]) == (4, 4)
    for bad in ([], [4, 0], [4.0], 5, [True]):
        with pytest.raises(V.ValidationError, match=r"O\.hidden"):
            V.positive_ints("O", "hidden", bad)
    assert V.pair_range("O", "r", [1, 2]) == (1.0, 2.0)
    with pytest.raises(V.ValidationError, match="low <= high"):
        V.pair_range("O", "r", (2, 1))
    with pytest.raises(V.ValidationError, match=r"\[0.5, inf\)"):
        V.pair_range("O", "r", (0.1, 1), lower=0.5)


@dataclasses.dataclass(frozen=True)
class _Fam:
    n: int = 3
    scale: float = 1.0
    noise: float = 0.0
    span: tuple = (0.0, 1.0)
    kind: str = "a"


def test_field_checks_name_the_class_and_field():
    ok = _Fam(span=[0, 2])
    V.check_fields(ok, integer=("n",), positive=("n", "scale"), nonnegative=("noise",))
    V.check_range(ok, "span")
    assert ok.span == (0.0, 2.0) and hash(ok)
    with pytest.raises(V.ValidationError, match=r"_Fam\.n must be an integer"):
        V.check_fields(_Fam(n=3.0), integer=("n",))
    with pytest.raises(V.ValidationError, match=r"_Fam\.scale must be > 0"):
        V.check_fields(_Fam(scale=float("nan")), positive=("scale",))
    with pytest.raises(V.ValidationError, match=r"_Fam\.noise must be >= 0"):
        V.check_fields(_Fam(noise=-1.0), nonnegative=("noise",))
    with pytest.raises(V.ValidationError, match=r"_Fam\.kind must be one of"):
        V.check_choice(_Fam(kind="z"), "kind", ("a", "b"))
    with pytest.raises(V.ValidationError, match=r"_Fam\.scale must be a finite number > 0"):
        V.check_positive(_Fam(scale=0.0), "scale")


def test_array_checks_skip_tracers_only():
    V.check_values("O", "lam", {"a": jnp.ones(2)}, lambda v: v > 0, "> 0")
    with pytest.raises(V.ValidationError, match=r"O: lam\['a'\] must be > 0"):
        V.check_values("O", "lam", {"a": jnp.array([1.0, -1.0])}, lambda v: v > 0, "> 0")
    with pytest.raises(V.ValidationError, match="non-finite"):
        V.check_values("O", "lam", jnp.array([jnp.nan]), lambda v: v > 0, "> 0")
    assert V.is_concrete({"a": jnp.ones(2)})
    seen = []
    jax.jit(lambda x: seen.append(V.is_concrete(x)) or x)(jnp.ones(2))
    assert seen == [False]
    # inside jit a traced negative value passes (validity is the parameterisation's job)
    jax.jit(lambda x: V.check_values("O", "lam", x, lambda v: v > 0, "> 0") or x)(-jnp.ones(2))


def test_helpers_live_in_validation_only():
    from learned_dco import tasks
    from learned_dco.optimizers import base
    from learned_dco.tasks import base as tbase

    assert not any(hasattr(tbase, n) or hasattr(tasks, n) for n in ("check_fields", "check_range", "check_choice"))
    assert not hasattr(base, "is_concrete")
    assert not hasattr(base, "check_values")
    assert not {"check_fields", "check_range", "check_choice"} & set(tasks.__all__)
    assert issubclass(V.ValidationError, ValueError)
