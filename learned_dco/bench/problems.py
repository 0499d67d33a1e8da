r"""The benchmark's problems, their two fixed splits and their structural descriptors.

A :class:`Problem` is a fixed data set (scikit-learn's bundled files, read from the installed
package, or generated from a fixed NumPy seed; never downloaded), a model ``init(key)``, a loss
``loss(params, x, y)``, a step budget ``steps`` and a minibatch size ``batch`` (``None``: full
batch). An evaluation *seed* changes the initial parameters and the minibatch order, never
the data: the problem is fixed, the seeds measure the optimizer's run-to-run spread.

Splits:

* ``dev``: for design and meta-training choices (run it as often as you like);
* ``test``: run once per shipped optimizer; nothing is chosen on it.

Each problem carries a :class:`Descriptor` (model class, data source, loss class). A
problem whose (model class, loss class) pair is also that of a meta-training mixture
member (:mod:`learned_dco.bench.structure`) is *not held out*; such problems are kept on
purpose as in-distribution controls (``control=True``) and left out of the held-out
aggregates.

When scikit-learn is missing, each bundled data set is replaced by a generated stand-in of
the same shape, and its descriptor's data source says ``generated-standin:NAME``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from learned_dco.tasks import nets
from learned_dco.validation import ValidationError

SPLITS = ("dev", "test")

MODEL_CLASSES = ("linear", "mlp", "deep_linear", "autoencoder", "convnet", "attention", "transformer",
                 "factorization", "valley", "population_model", "interpolation")
"""Model classes a descriptor may name (``valley``: a non-convex test function such as
Rosenbrock)."""

LOSS_CLASSES = ("classification_xent", "squared_error", "valley")
"""Loss classes: softmax and sigmoid cross-entropy are one class (a binary softmax is a
sigmoid); ``squared_error`` covers least squares, ridge and any convex quadratic
:math:`\tfrac12 x^\top H x - b^\top x` (a quadratic is a least-squares problem in disguise)."""


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """A problem's structure: ``model`` (a :data:`MODEL_CLASSES` entry), ``data`` (its source,
    e.g. ``sklearn:iris``, ``generated:friedman1``, ``digits``), ``loss`` (a
    :data:`LOSS_CLASSES` entry) and ``detail`` (free text: widths, activation)."""

    model: str
    data: str
    loss: str
    detail: str = ""

    def __post_init__(self):
        if self.model not in MODEL_CLASSES:
            raise ValidationError(f"Descriptor.model must be one of {MODEL_CLASSES}, got {self.model!r}")
        if self.loss not in LOSS_CLASSES:
            raise ValidationError(f"Descriptor.loss must be one of {LOSS_CLASSES}, got {self.loss!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One benchmark problem. ``spec`` holds every constructor setting (widths, budgets, data
    parameters) and enters :meth:`fingerprint` with the data, the initial parameters at
    seed 0 and the loss there, so any change to a problem changes its fingerprint."""

    name: str
    split: str
    descriptor: Descriptor
    init: Callable[[jax.Array], Any]
    loss: Callable[[Any, jax.Array, jax.Array], jax.Array]
    x: np.ndarray
    y: np.ndarray
    steps: int
    batch: int | None = None
    control: bool = False
    spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValidationError(f"problem {self.name!r}: split must be one of {SPLITS}, got {self.split!r}")
        if not (isinstance(self.steps, int) and self.steps > 0):
            raise ValidationError(f"problem {self.name!r}: steps must be a positive int, got {self.steps!r}")
        if self.batch is not None and not (isinstance(self.batch, int) and 0 < self.batch <= len(self.x)):
            raise ValidationError(f"problem {self.name!r}: batch must be None or in 1..{len(self.x)}, got {self.batch!r}")

    def train_loss(self, params) -> jax.Array:
        """The full-data training loss (what every curve records)."""
        return self.loss(params, jnp.asarray(self.x), jnp.asarray(self.y))

    def step_loss(self, params, key) -> jax.Array:
        """The loss whose gradient a step uses: a minibatch of ``batch`` indices drawn with
        replacement from ``key``, or the full data."""
        if self.batch is None:
            return self.train_loss(params)
        idx = jax.random.randint(key, (self.batch,), 0, self.x.shape[0])
        return self.loss(params, jnp.asarray(self.x)[idx], jnp.asarray(self.y)[idx])

    def with_steps(self, steps: int) -> "Problem":
        return dataclasses.replace(self, steps=int(steps), spec={**self.spec, "steps": int(steps)})

    @property
    def held_out(self) -> bool:
        return not self.control

    @functools.cached_property
    def initial_loss(self) -> float:
        """The training loss at the initial parameters of seed 0's key (``PRNGKey(0)``)."""
        return float(jax.jit(lambda key: self.train_loss(self.init(key)))(jax.random.PRNGKey(0)))

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the name, split, descriptor, budget, batch, ``spec``, the data bytes,
        the initial parameters at seed 0 and the training loss there."""
        h = hashlib.sha256()
        meta = {"name": self.name, "split": self.split, "descriptor": dataclasses.asdict(self.descriptor),
                "steps": self.steps, "batch": self.batch, "control": self.control, "spec": dict(self.spec)}
        h.update(json.dumps(meta, sort_keys=True, default=str).encode())
        for a in (self.x, self.y):
            a = np.ascontiguousarray(a)
            h.update(str((a.shape, a.dtype.str)).encode())
            h.update(a.tobytes())
        params = self.init(jax.random.PRNGKey(0))
        for leaf in jax.tree.leaves(params):
            h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
        h.update(repr(self.initial_loss).encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "model": self.descriptor.model, "data": self.descriptor.data,
                "loss": self.descriptor.loss, "detail": self.descriptor.detail, "steps": self.steps,
                "batch": self.batch, "control": self.control, "examples": int(len(self.x))}


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------

_SKLEARN_SHAPES = {"iris": (150, 4, 3), "wine": (178, 13, 3), "breast_cancer": (569, 30, 2),
                   "diabetes": (442, 10, 0), "linnerud": (20, 3, -3)}


def _standardise(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def sklearn_data(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(x standardised, y, source)`` of scikit-learn's bundled data set ``name``: labels as
    int32, regression targets standardised to shape (n, k). Without scikit-learn, a
    generated stand-in of the same shape and ``source = "generated-standin:NAME"``."""
    try:
        from sklearn import datasets

        data = getattr(datasets, f"load_{name}")()
        x, y, source = data.data, data.target, f"sklearn:{name}"
    except ImportError:
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        n, d, c = _SKLEARN_SHAPES[name]
        x = rng.normal(size=(n, d))
        w = rng.normal(size=(d, max(abs(c), 1)))
        y = np.argmax(x @ w, 1) if c > 0 else (x @ w)[:, 0] if c == 0 else x @ w
        source = f"generated-standin:{name}"
    y = np.asarray(y)
    y = y.astype(np.int32) if y.dtype.kind in "iu" else _standardise(y.reshape(len(y), -1))
    return _standardise(x), y, source


# --------------------------------------------------------------------------------------
# models and losses
# --------------------------------------------------------------------------------------

ACTS: dict[str, Callable] = {"relu": jax.nn.relu, "tanh": jnp.tanh, "silu": jax.nn.silu, "elu": jax.nn.elu,
                             "gelu": jax.nn.gelu, "softplus": jax.nn.softplus}


def _mlp_init(sizes, act):
    gain = 2.0 if act == "relu" else 1.0
    return lambda key: nets.mlp_init(key, tuple(sizes), gain)


def _mlp(params, x, act):
    f = ACTS[act]
    layers = params["layers"]
    for layer in layers[:-1]:
        x = f(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def _mse(pred, y):
    return jnp.mean((pred - y) ** 2)


def _xent(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], -1))


def _binary_xent(score, y):
    return jnp.mean(jax.nn.softplus(-(2.0 * y - 1.0) * score))


def _linear_init(d, k, scale=0.0):
    def init(key):
        return {"w": scale * jax.random.normal(key, (d, k)), "b": jnp.zeros((k,))}
    return init


def _normal_tree(shapes: Mapping[str, tuple], scale: Mapping[str, float]):
    def init(key):
        keys = jax.random.split(key, len(shapes))
        return {n: scale[n] * jax.random.normal(k, s) for k, (n, s) in zip(keys, sorted(shapes.items()))}
    return init


def _attention(p, x):
    """Single-head self-attention ``softmax(Q K^T / sqrt(d)) V`` then a linear readout of the
    position mean: ``x (n, L, d) -> (n, k)``."""
    q, k, v = x @ p["wq"], x @ p["wk"], x @ p["wv"]
    a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / jnp.sqrt(q.shape[-1]), axis=-1)
    return jnp.mean(a @ v, axis=-2) @ p["wo"]


def _layer_norm(x):
    mu = jnp.mean(x, -1, keepdims=True)
    return (x - mu) / jnp.sqrt(jnp.var(x, -1, keepdims=True) + 1e-5)


def _transformer(p, tokens, vocab):
    """One pre-LayerNorm transformer block (single-head causal-free attention + GELU MLP, both
    residual) on token + position embeddings, then per-position logits."""
    h = p["embed"][tokens] + p["pos"]
    z = _layer_norm(h)
    q, k, v = z @ p["wq"], z @ p["wk"], z @ p["wv"]
    a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / jnp.sqrt(q.shape[-1]), axis=-1)
    h = h + (a @ v) @ p["wo"]
    h = h + jax.nn.gelu(_layer_norm(h) @ p["w1"]) @ p["w2"]
    return _layer_norm(h) @ p["out"]


def _rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _chain(params, x):
    for layer in params["layers"]:
        x = x @ layer["w"] + layer["b"]
    return x


_DUMMY = np.zeros((1, 1), np.float32)


# --------------------------------------------------------------------------------------
# the problems
# --------------------------------------------------------------------------------------

def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))


def _mlp_regression(name, split, data, x, y, hidden, act, steps, batch=None, control=False):
    sizes = (x.shape[1], *hidden, y.shape[1])
    desc = Descriptor("mlp", data, "squared_error", f"{sizes} {act}")
    return Problem(name, split, desc, _mlp_init(sizes, act), lambda p, x, y: _mse(_mlp(p, x, act), y), x, y, steps,
                   batch, control, {"sizes": sizes, "act": act})


def _friedman1(rng, n=512):
    x = rng.uniform(size=(n, 10))
    y = 10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    return _standardise(x), _standardise((y + rng.normal(size=n))[:, None])


def _smooth_regression(rng, n=512, d=8):
    x = rng.normal(size=(n, d))
    a, b, c = rng.normal(size=(3, d)) / np.sqrt(d)
    y = np.sin(2 * x @ a) + 0.5 * (x @ b) ** 2 + np.tanh(x @ c) + 0.1 * rng.normal(size=n)
    return _standardise(x), _standardise(y[:, None])


def _blob_images(rng, n=128, size=8):
    """Images with one Gaussian blob at a random centre plus noise; target: the centre."""
    centre = rng.uniform(1, size - 2, size=(n, 2))
    g = np.arange(size)
    img = np.exp(-((g[None, :, None] - centre[:, 0, None, None]) ** 2 + (g[None, None, :] - centre[:, 1, None, None]) ** 2) / 2.0)
    img = img + 0.1 * rng.normal(size=img.shape)
    return img[..., None].astype(np.float32), _standardise(centre)


def _bar_images(rng, n=128, size=8):
    """Images with 0-3 horizontal and 0-3 vertical bright bars plus noise; target: the two counts."""
    img = 0.1 * rng.normal(size=(n, size, size))
    counts = rng.integers(0, 4, size=(n, 2))
    for i in range(n):
        img[i, rng.choice(size, counts[i, 0], replace=False), :] += 1.0
        img[i, :, rng.choice(size, counts[i, 1], replace=False)] += 1.0
    return img[..., None].astype(np.float32), _standardise(counts.astype(np.float32))


def _swiss_roll(rng, n=512):
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    x = np.stack([t * np.cos(t), 21 * rng.uniform(size=n), t * np.sin(t)], 1) + 0.05 * rng.normal(size=(n, 3))
    return _standardise(x)


def _dev() -> list[Problem]:
    out = []
    x, y, src = sklearn_data("diabetes")
    out.append(_mlp_regression("diabetes_mlp_relu", "dev", src, x, y, (32,), "relu", 500))
    x, y = _friedman1(_rng("friedman"))
    out.append(_mlp_regression("friedman_mlp_silu_mb64", "dev", "generated:friedman1", x, y, (64, 64), "silu", 1000, 64))

    rng = _rng("autoencoder")
    xa = np.tanh(rng.normal(size=(256, 4)) @ rng.normal(size=(4, 16))).astype(np.float32)
    sizes = (16, 4, 16)
    out.append(Problem("autoencoder_tanh_mb32", "dev", Descriptor("autoencoder", "generated:lowrank_tanh", "squared_error",
                                                                  f"{sizes} tanh"),
                       _mlp_init(sizes, "tanh"), lambda p, x, y: _mse(_mlp(p, x, "tanh"), x), xa, xa, 600, 32,
                       spec={"sizes": sizes}))

    start = np.array([-1.2, 1.0], np.float32)
    out.append(Problem("rosenbrock_2d", "dev", Descriptor("valley", "generated:start(-1.2,1)+N(0,0.1^2)", "valley", "d=2"),
                       lambda key: jnp.asarray(start) + 0.1 * jax.random.normal(key, (2,)),
                       lambda p, x, y: _rosenbrock(p), _DUMMY, _DUMMY, 2000, spec={"start": start.tolist()}))

    rng = _rng("attention")
    L, d, k = 8, 8, 2
    xs = rng.normal(size=(512, L, d)).astype(np.float32)
    teacher = {n: rng.normal(size=s) / np.sqrt(s[0]) for n, s in
               {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, k)}.items()}
    ys = _standardise(np.asarray(_attention(jax.tree.map(lambda a: 2.0 * jnp.asarray(a, jnp.float32), teacher), xs)))
    shapes = {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, k)}
    out.append(Problem("attention_teacher_mb32", "dev", Descriptor("attention", "generated:teacher_attention", "squared_error",
                                                                   f"1 head, L={L}, d={d}"),
                       _normal_tree(shapes, {n: 1 / np.sqrt(s[0]) for n, s in shapes.items()}),
                       lambda p, x, y: _mse(_attention(p, x), y), xs, ys, 400, 32, spec={"L": L, "d": d, "k": k}))

    xi, yi = _blob_images(_rng("blobs"))
    chans, strides = (8, 8), (1, 2)
    feat = nets.conv_output_size(8, strides) ** 2 * chans[-1]
    out.append(Problem("convnet_blob_centre_mb32", "dev", Descriptor("convnet", "generated:blob_images", "squared_error",
                                                                     f"channels {chans} strides {strides} relu"),
                       lambda key: nets.convnet_init(key, 1, chans, 2, head_features=feat),
                       lambda p, x, y: _mse(nets.convnet_apply(p, x, strides, "relu", "flatten"), y), xi, yi, 400, 32,
                       spec={"channels": chans, "strides": strides}))

    rng = _rng("deep_linear")
    xd = rng.normal(size=(256, 8)).astype(np.float32)
    yd = (xd @ rng.normal(size=(8, 8)) @ rng.normal(size=(8, 4)) / 8).astype(np.float32)
    sizes = (8, 8, 8, 8, 4)
    out.append(Problem("deep_linear_4", "dev", Descriptor("deep_linear", "generated:linear_teacher", "squared_error", f"{sizes}"),
                       _mlp_init(sizes, "linear"), lambda p, x, y: _mse(_chain(p, x), y), xd, yd, 500,
                       spec={"sizes": sizes}))

    # in-distribution controls: (model, loss) shared with the meta-training mixture
    x, y, src = sklearn_data("iris")
    out.append(Problem("iris_softmax", "dev", Descriptor("linear", src, "classification_xent", "softmax"),
                       _linear_init(4, 3), lambda p, x, y: _xent(x @ p["w"] + p["b"], y), x, y, 200, control=True))
    rng = _rng("illcond")
    u, _ = np.linalg.qr(rng.normal(size=(200, 20)))
    v, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    a = (u * np.logspace(0, -3, 20)) @ v.T * np.sqrt(200)
    b = a @ rng.normal(size=(20, 1)) + 0.01 * rng.normal(size=(200, 1))
    out.append(Problem("illcond_lstsq_1e3", "dev", Descriptor("linear", "generated:cond_1e3", "squared_error", "20 dims, cond 1e3"),
                       _linear_init(20, 1, 0.1), lambda p, x, y: 0.5 * _mse(x @ p["w"], y), a.astype(np.float32),
                       b.astype(np.float32), 1000, control=True, spec={"cond": 1e3}))
    return out


def _test() -> list[Problem]:
    out = []
    x, y, src = sklearn_data("linnerud")
    out.append(_mlp_regression("linnerud_mlp_elu", "test", src, x, y, (16, 16), "elu", 300))
    x, y = _smooth_regression(_rng("smooth"))
    out.append(_mlp_regression("smooth_mlp_gelu_deep_mb64", "test", "generated:smooth_regression", x, y,
                               (32, 32, 32, 32), "gelu", 1500, 64))

    xs = _swiss_roll(_rng("swiss"))
    sizes = (3, 16, 2, 16, 3)
    out.append(Problem("swissroll_autoencoder_elu_mb64", "test", Descriptor("autoencoder", "generated:swiss_roll", "squared_error",
                                                                           f"{sizes} elu"),
                       _mlp_init(sizes, "elu"), lambda p, x, y: _mse(_mlp(p, x, "elu"), x), xs, xs, 800, 64,
                       spec={"sizes": sizes}))

    start = np.tile(np.array([-1.2, 1.0], np.float32), 3)
    out.append(Problem("rosenbrock_6d", "test", Descriptor("valley", "generated:start(-1.2,1)x3+N(0,0.1^2)", "valley", "chained, d=6"),
                       lambda key: jnp.asarray(start) + 0.1 * jax.random.normal(key, (6,)),
                       lambda p, x, y: _rosenbrock(p), _DUMMY, _DUMMY, 3000, spec={"start": start.tolist()}))

    rng = _rng("transformer")
    V, L, d = 6, 6, 16
    tokens = rng.integers(0, V, size=(128, L)).astype(np.int32)
    labels = tokens[:, ::-1].copy()
    shapes = {"embed": (V, d), "pos": (L, d), "wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d),
              "w1": (d, 2 * d), "w2": (2 * d, d), "out": (d, V)}
    scale = {n: (1.0 if n in ("embed", "pos") else 1 / np.sqrt(s[0])) for n, s in shapes.items()}
    out.append(Problem("transformer_reverse_mb32", "test", Descriptor("transformer", "generated:reverse_tokens", "classification_xent",
                                                                      f"1 block, 1 head, V={V}, L={L}, d={d}"),
                       _normal_tree(shapes, scale), lambda p, x, y: _xent(_transformer(p, x, V), y), tokens, labels,
                       500, 32, spec={"V": V, "L": L, "d": d}))

    xi, yi = _bar_images(_rng("bars"))
    chans, strides = (6, 12), (2, 2)
    out.append(Problem("convnet_bar_count_mb32", "test", Descriptor("convnet", "generated:bar_images", "squared_error",
                                                                    f"channels {chans} strides {strides} tanh, mean pool"),
                       lambda key: nets.convnet_init(key, 1, chans, 2, gain=1.0),
                       lambda p, x, y: _mse(nets.convnet_apply(p, x, strides, "tanh", "mean"), y), xi, yi, 500, 32,
                       spec={"channels": chans, "strides": strides}))

    rng = _rng("factorization")
    m = (rng.normal(size=(30, 3)) @ rng.normal(size=(3, 20)) / np.sqrt(3)).astype(np.float32)
    mask = (rng.uniform(size=m.shape) < 0.5).astype(np.float32)
    out.append(Problem("matrix_completion_rank4", "test", Descriptor("factorization", "generated:lowrank_30x20_half_observed",
                                                                     "squared_error", "rank 4 factors"),
                       _normal_tree({"a": (30, 4), "b": (20, 4)}, {"a": 0.3, "b": 0.3}),
                       lambda p, x, y: jnp.sum(y * (p["a"] @ p["b"].T - x) ** 2) / jnp.sum(y), m, mask, 1000,
                       spec={"rank": 4}))

    # in-distribution controls
    x, y, src = sklearn_data("breast_cancer")
    out.append(Problem("cancer_logistic_mb32", "test", Descriptor("linear", src, "classification_xent", "logistic"),
                       _linear_init(30, 1), lambda p, x, y: _binary_xent((x @ p["w"] + p["b"])[:, 0], y), x, y, 500, 32,
                       control=True))
    x, y, src = sklearn_data("wine")
    sizes = (13, 16, 3)
    out.append(Problem("wine_mlp_tanh", "test", Descriptor("mlp", src, "classification_xent", f"{sizes} tanh"),
                       _mlp_init(sizes, "tanh"), lambda p, x, y: _xent(_mlp(p, x, "tanh"), y), x, y, 400, control=True,
                       spec={"sizes": sizes}))
    return out


@functools.lru_cache(maxsize=None)
def _all() -> tuple[Problem, ...]:
    return tuple(_dev() + _test())


def problem_set(split: str = "dev") -> list[Problem]:
    """The problems of ``split`` (``"dev"``, ``"test"`` or ``"all"``), in a fixed order."""
    if split not in (*SPLITS, "all"):
        raise ValidationError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
    return [p for p in _all() if split == "all" or p.split == split]


def by_name(name: str) -> Problem:
    for p in _all():
        if p.name == name:
            return p
    raise ValidationError(f"unknown bench problem {name!r}; known: {[p.name for p in _all()]}")


__all__ = ["Descriptor", "LOSS_CLASSES", "MODEL_CLASSES", "Problem", "SPLITS", "by_name", "problem_set", "sklearn_data"]
