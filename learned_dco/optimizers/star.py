r"""Small-MLP learned optimizers: Blackbox, Hyperparam and STAR.

Harrison, Metz & Sohl-Dickstein, "A Closer Look at Learned Optimization: Stability,
Robustness, and Inductive Biases" (NeurIPS 2022), Sec. 5 and App. B. All three share one
per-parameter MLP (two hidden ReLU layers of width 4) applied to the 39 features of
:mod:`learned_dco.optimizers.features` (momenta, rms, Adafactor factored accumulators, the
parameter and gradient, each normalised per tensor, plus 11 time features). The
meta-parameters -- the MLP's weights, its scalar output heads and, optionally, the
accumulator decays -- are shared by every parameter of every tensor, so one trained
optimizer applies to any model. With :math:`h(z)` the MLP's last hidden layer and linear
heads :math:`d, m_b, m_g` on it, the update :math:`\phi_{t+1} = \phi_t - f(z_t)` is

* **Blackbox** (``small_fc_lopt`` of Metz et al. 2022; STAR eq. 20):
  :math:`f = \beta_1\, d(z)\, \exp(\beta_2\, m_b(z))`, :math:`\beta_1 = \beta_2 = 10^{-3}`;
* **Hyperparam** (STAR Sec. 4.3/5.1, "nominal term with the magnitude control head"; eq. 21):
  :math:`f = \alpha \exp(\beta_2\, m_g(z))\, \hat g(z)` where :math:`\hat g` is a nominal
  descent direction (default Adam + AggMo, below) and :math:`\alpha` the explicit nominal
  step size (the paper's :math:`\beta_1`);
* **STAR** (eqs. 21-22): :math:`f = \alpha \exp(\beta_2 m_g)\,\hat g
  + \beta_3\, \frac{d(z)}{v(z)} \exp(\beta_4 m_b(z))`, the blackbox term divided by the
  Adam-style preconditioner :math:`v = \sqrt{\hat v + \epsilon_v}`, meta-trained with
  outer AdamW weight decay on the blackbox weights (:func:`star_meta_optimizer`).

Nominal directions (``nominal``; :math:`\hat m_k = m_k/(1-\beta_k^t)`,
:math:`\hat v = v/(1-\beta_v^t)` bias-corrected with ``bias_correction``):

* ``"adam"``: :math:`\hat m_0 / (\sqrt{\hat v} + \epsilon)` -- Adam with the first momentum
  decay (0.9) and the rms decay (0.999);
* ``"adam_aggmo"`` (default, the paper's "combined AggMo and Adam"):
  :math:`\mathrm{mean}_k\, \hat m_k / (\sqrt{\hat v} + \epsilon)` over all momentum decays;
* ``"aggmo"``: :math:`\mathrm{mean}_k\, \hat m_k` (aggregated EMA momentum, Lucas et al.);
* ``"sgd"``: the gradient.

Choices where the paper is silent (each a field):

* The nominal step size ``nominal_step`` (:math:`\alpha`) is not learned: it is an explicit
  hyperparameter (0 switches the nominal term off), default :math:`10^{-3}` (App. B.2:
  all :math:`\beta_i = 10^{-3}`).
* One ``magnitude_scale`` (:math:`\beta_2 = \beta_4`) for both magnitude heads, and the
  exponent is clipped to ``[-20, 20]`` so an absurd head output cannot overflow.
* The blackbox preconditioner is :math:`\sqrt{\hat v + \epsilon_v}` with ``precond_eps``
  :math:`\epsilon_v = 10^{-6}` (learned_optimization's ``rsqrt(rms + 1e-6)``, here with
  bias correction): it bounds the amplification of a parameter whose gradient vanishes
  (e.g. behind a dead ReLU) at :math:`10^3`, where Adam's :math:`\epsilon = 10^{-8}` would
  give :math:`10^8`. The nominal term keeps Adam's own form, so ``Hyperparam`` with
  ``nominal="adam"`` *is* Adam with step :math:`\alpha e^{\beta_2 m_g}`.
* Initialisation: kernels truncated normal with std :math:`1/\sqrt{\text{fan-in}}`, zero
  biases (learned_optimization), except the direction head (``direction_init``):

  - ``"random"``: as above (the paper's Blackbox);
  - ``"descent"`` (Blackbox default): the first two units of each hidden layer carry
    :math:`\mathrm{relu}(\pm a)` of the normalised Adam feature :math:`a = m_0 \rho(v)`
    and the head reads :math:`d = a` exactly; the other units start random. The
    untrained Blackbox then takes per-tensor-normalised Adam-like steps of RMS
    :math:`\beta_1` -- a working optimizer out of the box, in the spirit of initialising
    learned optimizers at a hand-designed one, rather than a random walk;
  - ``"zero"`` (STAR default): zero direction head, so the untrained STAR *is* its nominal
    term (Hyperparam), the point that outer weight decay pulls it back towards
    (STAR Fig. 1b). Its gradient is not zero, so meta-training moves it at once.
* Learned accumulator decays (``learn_decays``, as in learned_optimization, 7 extra
  meta-parameters): :math:`\beta = \mathrm{sigmoid}(\mathrm{logit}(\beta_0) + 10\,\theta)`,
  :math:`\theta` initialised at 0 -- always in (0, 1).

Meta-parameter counts (default sizes): MLP trunk 39·4+4 + 4·4+4 = 180, each head 5,
decays 7: Blackbox 197 (the paper's 197-weight ``small_fc_lopt``), Hyperparam 192,
STAR 202 (the paper's 203 counts a learned :math:`\beta_1`, which is explicit here).

Example::

    import jax, optax, learned_dco as ldco
    lopt = ldco.STAR(nominal_step=1e-3)
    meta = lopt.init(jax.random.PRNGKey(0), params)      # independent of params' shapes
    tx = lopt.opt_fn(meta)
    updates, state = tx.update(grads, tx.init(params), params)
    meta_opt = ldco.star_meta_optimizer(learning_rate=1e-4, weight_decay_factor=0.1)

References:
  Harrison, Metz, Sohl-Dickstein (2022), arXiv:2209.11208, Sec. 5, eqs. (20)-(22), App. B.
  Metz et al. (2022), "Practical tradeoffs between memory, compute, and performance in
  learned optimizers", App. A (``small_fc_lopt``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_dco import validation
from learned_dco.optimizers import features as F
from learned_dco.optimizers.base import check_grads, finish, plain, safe_sqrt
from learned_dco.types import Array, MetaParams, Params, PRNGKey
from learned_dco.validation import ValidationError

tree_map = jax.tree.map

NOMINAL_DIRECTIONS = ("adam", "adam_aggmo", "aggmo", "sgd")
DIRECTION_INITS = ("random", "descent", "zero")
BLACKBOX_HEADS = ("direction", "magnitude")
NOMINAL_HEADS = ("nominal_magnitude",)
DECAY_SCALE = 10.0  # beta = sigmoid(logit(beta_0) + DECAY_SCALE * theta)
EXP_CLIP = 20.0  # magnitude exponents are clipped to [-EXP_CLIP, EXP_CLIP]
HIDDEN_BIAS_STD = 0.1  # std of the hidden layers' initial biases (features.dense_init)

AdafacState = F.AdafacState
_ACC_FIELDS = ("momentum", "rms", "fac_row", "fac_col", "fac_full")


# --- the pure update rule ----------------------------------------------------------------


def adafac_mlp(
    trunk: Sequence[dict[str, Array]],
    heads: dict[str, dict[str, Array]],
    *,
    momentum_decays: Array | Sequence[float] = (0.9, 0.99, 0.999),
    rms_decay: Array | float = 0.999,
    adafactor_decays: Array | Sequence[float] = (0.9, 0.99, 0.999),
    nominal_step: float | Array = 0.0,
    blackbox_step: float = 1e-3,
    magnitude_scale: float = 1e-3,
    nominal: str = "adam_aggmo",
    precondition: bool = False,
    bias_correction: bool = True,
    feature_eps: float = 1e-5,
    eps: float = 1e-8,
    precond_eps: float = 1e-6,
    max_consecutive_nonfinite: int | None = 10,
    fuse_features: bool | str = "auto",
    learning_rate: Any = 1.0,
    weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""The per-parameter MLP update rule with explicit meta-parameters (module docstring).

    Which terms are active follows from ``heads``: ``"direction"`` and ``"magnitude"`` give
    the blackbox term :math:`\beta_3\, d\, e^{\beta_4 m_b}` (divided by
    :math:`\sqrt{\hat v + \epsilon_v}` if ``precondition``), ``"nominal_magnitude"`` the
    nominal term :math:`\alpha\, e^{\beta_2 m_g}\, \hat g`.

    Args:
      trunk: hidden layers ``[{"w": (n_in, width), "b": (width,)}, ...]``; the first takes
        the 39 features of :mod:`learned_dco.optimizers.features`.
      heads: ``{name: {"w": (width,), "b": ()}}`` for a subset of
        ``direction, magnitude, nominal_magnitude``.
      momentum_decays, rms_decay, adafactor_decays: accumulator decays in (0, 1) (may be
        traced, e.g. learned).
      nominal_step: :math:`\alpha >= 0`; 0 disables the nominal term.
      blackbox_step: :math:`\beta_1` (Blackbox) / :math:`\beta_3` (STAR).
      magnitude_scale: :math:`\beta_2 = \beta_4`.
      nominal: nominal direction, one of ``"adam", "adam_aggmo", "aggmo", "sgd"``.
      precondition: divide the blackbox term by :math:`\sqrt{\hat v + \epsilon_v}`.
      bias_correction: bias-correct the EMAs used by the nominal term and preconditioner.
      feature_eps: :math:`\epsilon` of the per-tensor feature normalisation.
      eps: Adam's :math:`\epsilon` in the nominal direction.
      precond_eps: :math:`\epsilon_v` of the blackbox preconditioner.
      max_consecutive_nonfinite: non-finite gradient guard
        (:func:`learned_dco.optimizers.base.guard_nonfinite`); ``None`` disables it (the
        setting for meta-training when the trainer already masks non-finite tasks: it drops
        the guard's per-step select over the whole optimizer state).
      fuse_features: ``True``: compute the features and the first layer per tensor without
        the ``(n, 39)`` feature tensor (:func:`learned_dco.optimizers.features.first_layer`:
        normalisation folded into the first-layer weights, time features into its bias, row
        and column channels through small matmuls, the rest of the MLP elementwise).
        ``False``: materialise the feature tensor and run the MLP on it (the reference).
        Same outputs up to float rounding (below 1e-6 relative in float32). The fused path
        only evaluates: its derivatives (``jax.grad``/``jax.jvp`` through the update, as in
        FullUnroll and TruncatedBPTT meta-gradients) are the materialised path's, and under
        differentiation so is its value (a ``jax.custom_jvp``), so meta-gradients compile
        and run as the materialised ones do. ``"auto"``
        (default): fused on XLA:CPU, where it is 2.2-5.5x faster for 8-64 vmapped tasks
        (``benchmarks/lopt_update.py``); materialised on accelerators, where the one
        measurement we have (an H200, an earlier fused design) found it 0.77x.
      learning_rate, weight_decay: a scale :math:`\eta` on the update (number, array or
        optax schedule) and decoupled weight decay :math:`\lambda`:
        :math:`u = \eta\,(-f(z) - \lambda\phi)` (AdamW's form, scaled by the learning rate).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`AdafacState` (wrapped
      by ``optax.ApplyIfFiniteState`` unless the guard is off); ``update`` requires
      ``params``. bfloat16/float16 params keep their state dtypes (computed in float32).
    """
    if nominal not in NOMINAL_DIRECTIONS:
        raise ValueError(f"nominal must be one of {NOMINAL_DIRECTIONS}, got {nominal!r}")
    if not (isinstance(fuse_features, bool) or fuse_features == "auto"):
        raise ValueError(f"fuse_features must be True, False or 'auto', got {fuse_features!r}")
    unknown = set(heads) - set(BLACKBOX_HEADS + NOMINAL_HEADS)
    if unknown:
        raise ValueError(f"unknown output heads {sorted(unknown)}; expected a subset of {BLACKBOX_HEADS + NOMINAL_HEADS}")
    blackbox = "direction" in heads
    if blackbox != ("magnitude" in heads):
        raise ValueError("the blackbox term needs both a 'direction' and a 'magnitude' head")
    use_nominal = "nominal_magnitude" in heads
    if not (blackbox or use_nominal):
        raise ValueError("no output heads: need the blackbox heads, the nominal magnitude head, or both")
    momentum_decays = jnp.asarray(momentum_decays)
    adafactor_decays = jnp.asarray(adafactor_decays)
    rms_decay = jnp.asarray(rms_decay)
    num_momenta, num_factored = momentum_decays.shape[0], adafactor_decays.shape[0]

    num_inputs = F.num_features(num_momenta, num_factored)

    def init_fn(params):
        return F.init_state(params, num_momenta, num_factored)

    def blackbox_and_nominal(theta, h, g, m, v, count, dtype, head_apply=F.head_apply):
        """The update formula on flat or per-tensor arrays (``m`` has a trailing momentum axis)."""
        _, heads, rms_decay, momentum_decays, nominal_step = theta
        if bias_correction:
            tf = count.astype(dtype)  # updates taken including this one
            v_hat = v / (1 - jnp.power(rms_decay.astype(dtype), tf))
            m_hat = m / (1 - jnp.power(momentum_decays.astype(dtype), tf))
        else:
            v_hat, m_hat = v, m
        step = None
        if blackbox:
            d = head_apply(heads["direction"], h)
            mag = head_apply(heads["magnitude"], h)
            step = blackbox_step * d * jnp.exp(jnp.clip(magnitude_scale * mag, -EXP_CLIP, EXP_CLIP))
            if precondition:
                step = step * jax.lax.rsqrt(v_hat + precond_eps)
        if use_nominal:
            mag = head_apply(heads["nominal_magnitude"], h)
            scale = jnp.asarray(nominal_step, dtype) * jnp.exp(jnp.clip(magnitude_scale * mag, -EXP_CLIP, EXP_CLIP))
            term = scale * nominal_direction(nominal, g, m_hat, v_hat, eps)
            step = term if step is None else step + term
        return step

    def update_fn(grads, state, params=None):
        check_grads("adafac_mlp", grads, params)
        state = F.update_state(state, grads, momentum_decays, rms_decay, adafactor_decays)
        leaves_p, treedef = jax.tree.flatten(params)
        if not leaves_p:
            return grads, state
        per_leaf = list(zip(
            leaves_p, jax.tree.leaves(grads), *(treedef.flatten_up_to(getattr(state, f)) for f in _ACC_FIELDS)
        ))
        dtype = jnp.result_type(*leaves_p)
        fused = jax.default_backend() == "cpu" if fuse_features == "auto" else fuse_features
        theta = (trunk, heads, rms_decay, momentum_decays, jnp.asarray(nominal_step, dtype))
        if fused:
            updates = _fused_value_materialised_derivative(dtype)(theta, per_leaf, state.count)
        else:
            updates = _materialised_updates(theta, per_leaf, state.count, dtype)
        return jax.tree.unflatten(treedef, updates), state

    def _fused_value_materialised_derivative(dtype):
        # The fused path computes the update's value; its derivatives (forward and, by
        # transposition, reverse mode) are those of the materialised path, which is the
        # same function up to float rounding. Differentiated through the fused loops, the
        # update compiled 5x slower (float64 meta-gradient through 3 steps: 16.8 against
        # 3.1 CPU-seconds) and ran 0.76-0.81x as fast for one task
        # (benchmarks/lopt_update.py). Under differentiation the returned value is the
        # materialised one, so the primal and its tangent come from the same program.
        def value(theta, per_leaf, count):
            return [_fused_update(theta, *leaf, count, dtype) for leaf in per_leaf]

        f = jax.custom_jvp(value)

        @f.defjvp
        def _jvp(primals, tangents):
            return jax.jvp(lambda th, pl, c: _materialised_updates(th, pl, c, dtype), primals, tangents)

        return f

    def _fused_update(theta, p, g, m, v, row, col, full, count, dtype):
        trunk = theta[0]
        # One tensor: first layer without the feature tensor (features.first_layer), the
        # rest of the MLP and the update formula elementwise on this tensor.
        h = jax.nn.relu(F.first_layer(p, g, m, v, row, col, full, count - 1, trunk[0], feature_eps, dtype))
        for layer in trunk[1:]:
            h = jax.nn.relu(F.dense_elementwise(h, layer))
        step = blackbox_and_nominal(
            theta, h, g.astype(dtype), m.astype(dtype), v.astype(dtype), count, dtype, lambda head, x: F.dense_elementwise(x, head)
        )
        return (-step).astype(jnp.result_type(p))

    def _materialised_updates(theta, per_leaf, count, dtype):
        # The default (and the fused path's test reference): the (n, 39) inputs of every
        # tensor, concatenated over the model, then one MLP over all entries.
        x, g, m, v = [], [], [], []
        for p, gi, mi, vi, row, col, full in per_leaf:
            x.append(F.tensor_inputs(p, gi, mi, vi, row, col, full, count - 1, feature_eps).reshape(-1, num_inputs))
            g.append(gi.reshape(-1))
            m.append(mi.reshape(-1, mi.shape[-1]))
            v.append(vi.reshape(-1))
        x, g, m, v = (jnp.concatenate([a.astype(dtype) for a in arrs], axis=0) for arrs in (x, g, m, v))
        h = F.trunk_apply(theta[0], x)
        step = blackbox_and_nominal(theta, h, g, m, v, count, dtype)
        sizes = [int(np.prod(jnp.shape(p), dtype=int)) for p, *_ in per_leaf]
        pieces = jnp.split(-step, np.cumsum(sizes)[:-1])
        return [u.reshape(jnp.shape(p)).astype(jnp.result_type(p)) for u, (p, *_) in zip(pieces, per_leaf)]

    return finish(optax.GradientTransformation(init_fn, update_fn), learning_rate=learning_rate,
                  weight_decay=weight_decay, max_consecutive_nonfinite=max_consecutive_nonfinite, owner="adafac_mlp")


def mean_last(x: Array) -> Array:
    """``jnp.mean(x, axis=-1)`` for a short trailing axis (the momentum decays), written as a
    sum of slices. XLA:CPU runs a reduction over a trailing axis of length 3 as a slow
    strided loop that also blocks fusion: in the vmapped STAR update (8 tasks, 64-32-32-10
    MLP) that one mean took 0.69 of 1.8 ms; as elementwise adds it fuses with its
    neighbours and costs about 0.06 ms (``benchmarks/lopt_update.py``)."""
    total = x[..., 0]
    for k in range(1, x.shape[-1]):
        total = total + x[..., k]
    return total / x.shape[-1]


def nominal_direction(nominal: str, g: Array, m_hat: Array, v_hat: Array, eps: float) -> Array:
    """The nominal descent direction :math:`\\hat g` (module docstring); ``m_hat`` has a
    trailing momentum axis."""
    if nominal == "sgd":
        return g
    if nominal == "aggmo":
        return mean_last(m_hat)
    denom = safe_sqrt(v_hat) + eps  # finite meta-gradients where v_hat == 0 (base.safe_sqrt)
    if nominal == "adam":
        return m_hat[..., 0] / denom
    if nominal == "adam_aggmo":
        return mean_last(m_hat) / denom
    raise ValueError(f"nominal must be one of {NOMINAL_DIRECTIONS}, got {nominal!r}")


# --- learned optimizers -------------------------------------------------------------------


def decay_values(base: Sequence[float] | float, theta: Array | None) -> Array:
    r""":math:`\mathrm{sigmoid}(\mathrm{logit}(\beta_0) + 10\,\theta)` (``theta=None``: :math:`\beta_0`)."""
    base = jnp.asarray(base, jnp.float32 if theta is None else jnp.result_type(theta))
    if theta is None:
        return base
    return jax.nn.sigmoid(jnp.log(base) - jnp.log1p(-base) + DECAY_SCALE * theta)


def _is_decay_tuple(value) -> bool:
    return isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, (int, float)) and 0 < v < 1 for v in value)


@dataclasses.dataclass(frozen=True)
class _AdafacMLPOptimizer:
    """Options shared by :class:`Blackbox`, :class:`Hyperparam` and :class:`STAR` (module
    docstring). Subclasses choose the output heads (class attribute ``heads``)."""

    hidden_sizes: tuple[int, ...] = (4, 4)
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decay: float = 0.999
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    learn_decays: bool = True
    magnitude_scale: float = 1e-3
    feature_eps: float = 1e-5
    bias_correction: bool = True
    max_consecutive_nonfinite: int | None = 10
    fuse_features: bool | str = "auto"

    heads: ClassVar[tuple[str, ...]] = ()

    def _check(self) -> None:
        name = type(self).__name__
        sizes = self.hidden_sizes
        if not (isinstance(sizes, tuple) and sizes and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)):
            raise ValidationError(f"{name}.hidden_sizes must be a non-empty tuple of positive ints, got {sizes!r}", field="hidden_sizes")
        for field in ("momentum_decays", "adafactor_decays"):
            if not _is_decay_tuple(getattr(self, field)):
                raise ValueError(f"{name}.{field} must be a non-empty tuple of numbers in (0, 1), got {getattr(self, field)!r}")
        if len(self.momentum_decays) != len(self.adafactor_decays):
            raise ValueError(
                f"{name}: momentum_decays and adafactor_decays must have the same length (the "
                f"fac_mom features pair them), got {len(self.momentum_decays)} and {len(self.adafactor_decays)}"
            )
        validation.number_in(name, "rms_decay", self.rms_decay, 0.0, 1.0, closed=(False, False))
        validation.check_positive(self, "magnitude_scale", allow_zero=True)
        validation.check_positive(self, "feature_eps")
        if not (isinstance(self.fuse_features, bool) or self.fuse_features == "auto"):
            raise ValidationError(f"{name}.fuse_features must be True, False or 'auto', got {self.fuse_features!r}", field="fuse_features")
        if self.max_consecutive_nonfinite is not None:
            validation.positive_int(name, "max_consecutive_nonfinite", self.max_consecutive_nonfinite, allow_zero=True)

    @property
    def num_inputs(self) -> int:
        """MLP inputs (39 with the default decays)."""
        return F.num_features(len(self.momentum_decays), len(self.adafactor_decays))

    def feature_names(self) -> tuple[str, ...]:
        return F.feature_names(len(self.momentum_decays), len(self.adafactor_decays))

    # -- meta-parameters --
    def _direction_init(self) -> str:
        return "random"

    def init(self, key: PRNGKey, params: Params) -> MetaParams:
        """MLP weights, heads and (optionally) decays; ``params`` only sets the dtype."""
        leaves = jax.tree.leaves(plain(params))
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.float32
        return _init_meta(self, key, jnp.dtype(dtype))

    def _init_meta(self, key: PRNGKey, dtype) -> MetaParams:
        sizes = (self.num_inputs, *self.hidden_sizes)
        keys = jax.random.split(key, len(self.hidden_sizes) + len(self.heads))
        trunk = [
            F.dense_init(keys[i], sizes[i], sizes[i + 1], dtype, bias_std=HIDDEN_BIAS_STD)
            for i in range(len(self.hidden_sizes))
        ]
        width = sizes[-1]
        heads = {}
        for j, name in enumerate(self.heads):
            layer = F.dense_init(keys[len(self.hidden_sizes) + j], width, 1, dtype)
            heads[name] = {"w": layer["w"][:, 0], "b": layer["b"][0]}
        if "direction" in heads:
            trunk, heads = self._init_direction(trunk, heads, self._direction_init())
        meta: dict[str, Any] = {"trunk": trunk, "heads": heads}
        if self.learn_decays:
            meta["decays"] = {
                "momentum": jnp.zeros((len(self.momentum_decays),), dtype),
                "rms": jnp.zeros((), dtype),
                "adafactor": jnp.zeros((len(self.adafactor_decays),), dtype),
            }
        return meta

    def _init_direction(self, trunk, heads, how: str):
        if how == "random":
            return trunk, heads
        direction = heads["direction"]
        if how == "zero":
            heads = {**heads, "direction": tree_map(jnp.zeros_like, direction)}
            return trunk, heads
        # "descent": units 0/1 of every hidden layer carry relu(+a), relu(-a) of the
        # normalised Adam feature a, and d = unit0 - unit1 = a.
        if min(self.hidden_sizes) < 2:
            raise ValueError(f"direction_init='descent' needs hidden layers of width >= 2, got {self.hidden_sizes}")
        a = self.feature_names().index("adam_0")
        new_trunk = []
        for i, layer in enumerate(trunk):
            w = layer["w"]
            w = w.at[:, :2].set(0.0)
            if i == 0:
                w = w.at[a, 0].set(1.0).at[a, 1].set(-1.0)
            else:
                w = w.at[0, 0].set(1.0).at[1, 1].set(1.0)
            # Units 0/1 after the first layer get a positive bias so they stay active (linear):
            # relu(relu(+a) + 1) - relu(relu(-a) + 1) = a, and no unit sits on a kink.
            b = layer["b"].at[:2].set(0.0 if i == 0 else 1.0)
            new_trunk.append({"w": w, "b": b})
        d_w = jnp.zeros_like(direction["w"]).at[0].set(1.0).at[1].set(-1.0)
        heads = {**heads, "direction": {"w": d_w, "b": jnp.zeros_like(direction["b"])}}
        return new_trunk, heads

    # -- update rule --
    def _check_meta(self, meta: MetaParams) -> None:
        name = type(self).__name__
        if not isinstance(meta, dict) or "trunk" not in meta or "heads" not in meta:
            raise ValueError(f"{name}: meta must be a dict with 'trunk' and 'heads' (from {name}.init)")
        if len(meta["trunk"]) != len(self.hidden_sizes):
            raise ValueError(f"{name}: meta has {len(meta['trunk'])} hidden layers, expected {len(self.hidden_sizes)}")
        if set(meta["heads"]) != set(self.heads):
            raise ValueError(f"{name}: meta has heads {sorted(meta['heads'])}, expected {sorted(self.heads)}")
        if self.learn_decays != ("decays" in meta):
            raise ValueError(f"{name}: meta {'lacks' if self.learn_decays else 'has'} 'decays' but learn_decays={self.learn_decays}")

    def decays(self, meta: MetaParams) -> tuple[Array, Array, Array]:
        """The (momentum, rms, adafactor) decays this ``meta`` uses."""
        theta = meta.get("decays") if self.learn_decays else None
        get = lambda k: None if theta is None else theta[k]
        return (
            decay_values(self.momentum_decays, get("momentum")),
            decay_values(self.rms_decay, get("rms")),
            decay_values(self.adafactor_decays, get("adafactor")),
        )

    def _rule_kwargs(self) -> dict[str, Any]:
        return {}

    def opt_fn(self, meta: MetaParams, *, learning_rate: Any = 1.0, weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
        """The :func:`adafac_mlp` rule of ``meta``; ``learning_rate`` (number, array or optax
        schedule) scales the update, ``weight_decay`` adds decoupled decay (as there)."""
        return adafac_mlp(meta["trunk"], meta["heads"], learning_rate=learning_rate, weight_decay=weight_decay,
                          **self._rule_options(meta))

    def _rule_options(self, meta: MetaParams) -> dict[str, Any]:
        self._check_meta(meta)
        mom, rms, fac = self.decays(meta)
        return dict(
            momentum_decays=mom,
            rms_decay=rms,
            adafactor_decays=fac,
            magnitude_scale=self.magnitude_scale,
            bias_correction=self.bias_correction,
            feature_eps=self.feature_eps,
            max_consecutive_nonfinite=self.max_consecutive_nonfinite,
            fuse_features=self.fuse_features,
            **self._rule_kwargs(),
        )


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_meta(lopt: _AdafacMLPOptimizer, key: PRNGKey, dtype) -> MetaParams:
    # One compiled program per (optimizer, dtype) instead of ~100 eager ops per call.
    return lopt._init_meta(key, dtype)


@dataclasses.dataclass(frozen=True)
class Blackbox(_AdafacMLPOptimizer):
    r"""``small_fc_lopt``: :math:`\phi \leftarrow \phi - \beta_1\, d(z)\, e^{\beta_2 m(z)}` (STAR eq. 20).

    Meta-parameters ``{"trunk", "heads": {"direction", "magnitude"}, "decays"}`` (197 with
    the defaults). Fields: see the module docstring; ``blackbox_step`` is :math:`\beta_1`,
    ``direction_init`` one of ``"descent"`` (default), ``"random"`` (the paper's), ``"zero"``.
    """

    blackbox_step: float = 1e-3
    direction_init: str = "descent"

    heads: ClassVar[tuple[str, ...]] = BLACKBOX_HEADS

    def __post_init__(self):
        self._check()
        validation.check_positive(self, "blackbox_step")
        validation.check_choice(self, "direction_init", DIRECTION_INITS)

    def _direction_init(self) -> str:
        return self.direction_init

    def _rule_kwargs(self):
        return dict(blackbox_step=self.blackbox_step, precondition=False)


@dataclasses.dataclass(frozen=True)
class Hyperparam(_AdafacMLPOptimizer):
    r"""Hyperparameter controller: :math:`\phi \leftarrow \phi - \alpha\, e^{\beta_2 m_g(z)}\, \hat g`.

    The nominal direction :math:`\hat g` (``nominal``, default Adam+AggMo) scaled by the
    explicit ``nominal_step`` :math:`\alpha` and a learned per-parameter magnitude head.
    Meta-parameters ``{"trunk", "heads": {"nominal_magnitude"}, "decays"}`` (192).
    """

    nominal_step: float = 1e-3
    nominal: str = "adam_aggmo"
    eps: float = 1e-8

    heads: ClassVar[tuple[str, ...]] = NOMINAL_HEADS

    def __post_init__(self):
        self._check()
        validation.check_positive(self, "nominal_step", allow_zero=True)
        validation.check_positive(self, "eps")
        validation.check_choice(self, "nominal", NOMINAL_DIRECTIONS)

    def _rule_kwargs(self):
        return dict(nominal_step=self.nominal_step, nominal=self.nominal, eps=self.eps)


@dataclasses.dataclass(frozen=True)
class STAR(_AdafacMLPOptimizer):
    r"""STAR: nominal term with a magnitude head plus the preconditioned blackbox term,

    .. math::
        \phi \leftarrow \phi - \alpha\, e^{\beta_2 m_g(z)}\, \hat g
        - \beta_3\, \frac{d(z)}{\sqrt{\hat v + \epsilon_v}}\, e^{\beta_4 m_b(z)}

    (STAR eqs. 21-22). ``nominal_step`` :math:`\alpha` must be set deliberately (0 leaves
    only the blackbox term); train it with :func:`star_meta_optimizer` (AdamW, weight
    decay 0.1-0.5 x lr on the blackbox weights). Meta-parameters ``{"trunk", "heads":
    {"direction", "magnitude", "nominal_magnitude"}, "decays"}`` (202). ``direction_init``
    defaults to ``"zero"``: the untrained STAR is exactly its nominal term.
    """

    nominal_step: float = 1e-3
    blackbox_step: float = 1e-3
    nominal: str = "adam_aggmo"
    eps: float = 1e-8
    precondition: bool = True
    precond_eps: float = 1e-6
    direction_init: str = "zero"

    heads: ClassVar[tuple[str, ...]] = BLACKBOX_HEADS + NOMINAL_HEADS

    def __post_init__(self):
        self._check()
        validation.check_positive(self, "nominal_step", allow_zero=True)
        validation.check_positive(self, "blackbox_step")
        validation.check_positive(self, "eps")
        validation.check_positive(self, "precond_eps")
        validation.check_choice(self, "nominal", NOMINAL_DIRECTIONS)
        validation.check_choice(self, "direction_init", DIRECTION_INITS)

    def _direction_init(self) -> str:
        return self.direction_init

    def _rule_kwargs(self):
        return dict(
            nominal_step=self.nominal_step,
            blackbox_step=self.blackbox_step,
            nominal=self.nominal,
            eps=self.eps,
            precondition=self.precondition,
            precond_eps=self.precond_eps,
        )


# --- the outer (meta) optimizer ----------------------------------------------------------


def blackbox_weight_mask(meta: MetaParams) -> MetaParams:
    """``True`` on the weights that produce the blackbox term: the ``direction`` and
    ``magnitude`` heads and, when those exist, the shared hidden layers (``trunk``).
    ``False`` on the nominal magnitude head and the learned decays (and on everything of a
    meta without blackbox heads, e.g. Hyperparam's)."""
    has_blackbox = "direction" in meta.get("heads", {})
    mask = tree_map(lambda _: False, meta)
    if has_blackbox:
        mask["trunk"] = tree_map(lambda _: True, meta["trunk"])
        mask["heads"] = {
            name: tree_map(lambda _: name in BLACKBOX_HEADS, head) for name, head in meta["heads"].items()
        }
    return mask


def star_meta_optimizer(
    learning_rate: float = 1e-4,
    weight_decay_factor: float = 0.1,
    clip: float | None = 1.0,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mask: Callable[[MetaParams], MetaParams] = blackbox_weight_mask,
) -> optax.GradientTransformation:
    r"""STAR's outer optimizer (App. B): global-norm clipping then AdamW whose decoupled
    weight decay acts only on the blackbox weights (:func:`blackbox_weight_mask`).

    optax's AdamW applies :math:`\theta \leftarrow \theta - \eta(\text{adam} +
    \lambda\theta)`, so ``weight_decay_factor`` :math:`\lambda` is the decay "as a multiple
    of the outer learning rate" of STAR App. B.2/C.2 (0.1-0.5 there): each step shrinks
    the masked weights by :math:`\eta\lambda`. ``weight_decay_factor=0`` is plain Adam (the
    paper's Blackbox and Hyperparam runs); ``clip=None`` skips the clipping.
    """
    validation.positive_number("star_meta_optimizer", "learning_rate", learning_rate)
    validation.positive_number("star_meta_optimizer", "weight_decay_factor", weight_decay_factor, allow_zero=True)
    if clip is not None and not (clip > 0):
        raise ValueError(f"clip must be > 0 or None, got {clip!r}")
    adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay_factor, mask=mask)
    return adamw if clip is None else optax.chain(optax.clip_by_global_norm(clip), adamw)


def count_meta_parameters(meta: MetaParams) -> int:
    """Total number of scalars in a meta-parameter pytree."""
    return int(sum(jnp.size(x) for x in jax.tree.leaves(meta)))
