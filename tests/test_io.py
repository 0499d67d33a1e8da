"""The one JSON rule (learned_dco.io): plain data, non-finite floats as "inf"/"-inf"/"nan",
strict JSON text, and readers that take the older null spelling too."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_dco import io


def test_to_json_spells_non_finite_floats_as_strings_and_keeps_the_rest():
    value = {"a": (1.5, float("inf"), -math.inf), 3: np.float32(0.5), "n": np.nan,
             "arr": np.array([[1.0, np.inf], [np.nan, -2.0]]), "j": jnp.asarray([1.0, -jnp.inf]),
             "i": np.int64(7), "s": "inf", "z": None, "b": True}
    out = io.to_json(value)
    assert out == {"a": [1.5, "inf", "-inf"], "3": 0.5, "n": "nan", "arr": [[1.0, "inf"], ["nan", -2.0]],
                   "j": [1.0, "-inf"], "i": 7, "s": "inf", "z": None, "b": True}
    assert type(out["i"]) is int and type(out["3"]) is float
    text = io.dumps(value)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == out


def test_json_number_reads_what_to_json_wrote_and_the_older_null():
    for x in (0.25, -3.0, math.inf, -math.inf):
        assert io.json_number(json.loads(io.dumps(x))) == x
    assert math.isnan(io.json_number(json.loads(io.dumps(math.nan))))
    assert math.isnan(io.json_number(None))  # files written before the string rule
    with pytest.raises(ValueError, match="not a JSON number: 'diverged'"):
        io.json_number("diverged")


def test_every_writer_follows_the_rule(tmp_path):
    """A study's results.json and a pretrained card spell a non-finite number the same way."""
    from learned_dco import pretrained
    from learned_dco.optimizers import ScheduledAdam
    from learned_dco.studies import Claim, write_study

    claim = Claim("c", "claim", 1.0, math.inf, "holds", "e", kind="sanity")
    study = write_study(tmp_path / "s", study="x", paper="p", config={"quick": True, "seed": 0, "r": -math.inf},
                        claims=[claim], seconds=1.0)
    on_disk = json.loads((tmp_path / "s" / "results.json").read_text())
    assert on_disk["claims"][0]["measured"] == "inf" and on_disk["config"]["r"] == "-inf" == study["config"]["r"]
    lopt = ScheduledAdam()
    pretrained.save("c", lopt, lopt.init(jax.random.PRNGKey(0), jnp.zeros(2)), root=tmp_path / "w",
                    heldout={"ratio": math.nan})
    assert pretrained.card("c", root=tmp_path / "w")["heldout"] == {"ratio": "nan"}
