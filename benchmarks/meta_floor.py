"""Meta-step throughput against a hand-written plain-JAX floor of the same computation.

For each estimator (FullUnroll, TruncatedBPTT, ES, PES) and learned optimizer
(LearnedStepSize on 10-d quadratics; Blackbox and STAR on a 64-32-32-10 digits MLP; DCOM on
STAR's 2-D noisy quadratic, the ``pes_noisy_quadratic`` recipe, ``--setups
dcom_noisy_quadratic``), one
meta-step of ``MetaTrainer.step`` is timed next to a *floor*: the same maths written by
hand in plain JAX -- one jit per meta-step, tasks ``jax.vmap``-ed (both antithetic unrolls
for ES/PES), one ``lax.scan`` over the truncation, the same meta-loss (mean training loss
over the unroll, on a fresh batch unless ``fresh_batch=False``), the same number of loss
and gradient evaluations, an Adam meta-update. The floor pays no per-task masking, no
sharding constraints, and resets finished episodes once per truncation (episode phases
are multiples of the truncation, so boundaries fall between truncations); the library
staggers phases uniformly, so its episodes may end inside a truncation.

Runs are interleaved (``benchmarks.common.interleaved_medians``); the figure is
``floor_s / library_s`` (1.0 = as fast as the floor; the target is >= 0.8 at
N = 64 and 256). Library variants beside the default: ``no_guard`` (the learned
optimizer's non-finite guard off, ``max_consecutive_nonfinite=None``, where it has one;
the trainer still masks non-finite tasks) and ``reuse_loss`` (``MeanTrain(fresh_batch=
False)``, the loss computed with the gradient), each against the floor doing the same.

    python -m benchmarks.meta_floor [--quick | --smoke] [--tasks 8 64 256] [--out DIR]

``--smoke``: the step-size setup only, default variant, N = 4, short horizons, three rounds --
it checks that the benchmark runs, its ratios are no claim.

GPU-ready: nothing assumes a CPU; every timed call blocks on its outputs, and the JSON
records ``jax.devices()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import learned_dco as ldco
from benchmarks.common import block, interleaved_samples, table, write_json
from learned_dco import meta, tasks

ESTIMATORS = ("full", "truncated", "es", "pes")
SIGMA = 0.01
META_LR = 1e-3


@dataclasses.dataclass(frozen=True)
class Setup:
    name: str
    lopt: object
    family: object
    horizon: int
    truncation: int


def setups(quick: bool) -> dict[str, Setup]:
    digits = tasks.DigitsMLP(hidden=(32, 32), batch_size=64)
    T, K = (20, 10) if quick else (100, 10)
    out = {
        # 0.01, not 0.05: at 0.05 the inner runs diverge (the library then restarts non-finite
        # tasks every step, which the floor never does, and the ratio measures that instead)
        "stepsize_quadratic": Setup("stepsize_quadratic", ldco.LearnedStepSize(learning_rate=0.01),
                                    tasks.Quadratic(dim=10), T, K),
        "blackbox_digits": Setup("blackbox_digits", ldco.Blackbox(), digits, 2 * T, 5 * K if not quick else K),
        "star_digits": Setup("star_digits", ldco.STAR(), digits, 2 * T, 5 * K if not quick else K),
        # the pes_noisy_quadratic recipe: DCOM on STAR's 2-D noisy quadratic (fresh noise xi_t
        # every inner step), T = 100, K = 10
        "dcom_noisy_quadratic": Setup("dcom_noisy_quadratic", ldco.DCOM(learning_rate=0.01, momentum=0.5),
                                      tasks.NoisyQuadratic.star(), T, K),
    }
    return out


# --- the floor ------------------------------------------------------------------------------


def floor_step(kind: str, s: Setup, num_tasks: int, fresh_batch: bool = True, remat: bool = False):
    """``(init(key) -> state, step(state) -> state)``: the hand-written meta-step
    (``remat``: each inner step of the scan under ``jax.checkpoint``, as the library's
    ``remat=True``)."""
    lopt, family, T = s.lopt, s.family, s.horizon
    K = T if kind == "full" else s.truncation
    meta_opt = optax.adam(META_LR)

    def fresh(m, key, offset=0):
        k_task, k_init, k_run = jax.random.split(key, 3)
        task = family.sample(k_task)
        params = family.init_params(k_init, task)
        return dict(params=params, opt=lopt.opt_fn(m).init(params), task=task, step=jnp.int32(offset), key=k_run)

    def unroll(m, st):
        """K steps from ``st``: (new state, sum of meta-loss terms)."""
        tx, task = lopt.opt_fn(m), st["task"]

        def body(c, k):
            p, o = c
            kb, km = jax.random.split(k)
            value, g = jax.value_and_grad(family.loss)(p, task, family.sample_batch(kb, task))
            u, o = tx.update(g, o, p)
            p_next = optax.apply_updates(p, u)
            term = family.loss(p_next, task, family.sample_batch(km, task)) if fresh_batch else value
            return (p_next, o), term / T

        k_next, k_run = jax.random.split(st["key"])
        (p, o), terms = jax.lax.scan(jax.checkpoint(body) if remat else body, (st["params"], st["opt"]),
                                     jax.random.split(k_run, K))
        return dict(st, params=p, opt=o, step=st["step"] + K, key=k_next), jnp.sum(terms)

    def reset(m, st, key, eps=None):
        """Finished episodes restart (once per truncation, between truncations)."""
        keys = jax.random.split(key, num_tasks)
        if eps is None:
            new = jax.vmap(lambda k: fresh(m, k))(keys)
        else:
            new = jax.vmap(lambda k, e: fresh(jax.tree.map(jnp.add, m, e), k))(keys, eps)
        done = st["step"] >= T
        return jax.tree.map(lambda a, b: jnp.where(done.reshape(done.shape + (1,) * (a.ndim - 1)), b, a), st, new), done

    def perturb(m, key):
        leaves, tree = jax.tree.flatten(m)
        ks = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(tree, [SIGMA * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(ks, leaves)])

    def init(key):
        k_p, k_m, k_s, k_run = jax.random.split(key, 4)
        t0 = family.sample(k_p)
        m = lopt.init(k_m, family.init_params(k_p, t0))
        state = dict(meta=m, opt=meta_opt.init(m), key=k_run, t=jnp.int32(0))
        if kind == "full":
            return state
        keys = jax.random.split(k_s, num_tasks)
        offsets = K * jax.random.randint(k_s, (num_tasks,), 0, T // K)
        tasks_ = jax.vmap(lambda k, o: fresh(m, k, o))(keys, offsets)
        if kind == "truncated":
            return dict(state, tasks=tasks_)
        zeros = jax.vmap(lambda _: jax.tree.map(jnp.zeros_like, m))(keys)
        return dict(state, plus=tasks_, minus=tasks_, noise=zeros)

    def update(state, grads, extra):
        g = jax.tree.map(lambda x: jnp.mean(x, axis=0), grads)
        u, o = meta_opt.update(g, state["opt"], state["meta"])
        return dict(state, meta=optax.apply_updates(state["meta"], u), opt=o, t=state["t"] + 1, **extra)

    @jax.jit
    def step(state):
        m = state["meta"]
        key = jax.random.fold_in(state["key"], state["t"])
        k_a, k_b = jax.random.split(key)
        scale = T / K
        if kind == "full":
            starts = jax.vmap(lambda k: fresh(m, k))(jax.random.split(k_a, num_tasks))
            grads = jax.vmap(lambda st: jax.grad(lambda mm: unroll(mm, st)[1])(m))(starts)
            return update(state, grads, {})
        if kind == "truncated":
            def one(st):
                (_, new), g = jax.value_and_grad(lambda mm: unroll(mm, jax.lax.stop_gradient(st))[::-1], has_aux=True)(m)
                return jax.tree.map(lambda x: scale * x, g), new
            grads, new = jax.vmap(one)(state["tasks"])
            new, _ = reset(m, new, k_b)
            return update(state, grads, dict(tasks=new))
        pes = kind == "pes"
        eps = jax.vmap(lambda k: perturb(m, k))(jax.random.split(k_a, num_tasks))
        held = eps if pes else state["noise"]
        xi = jax.tree.map(jnp.add, state["noise"], eps) if pes else state["noise"]

        def one(plus, minus, h, x):
            plus, lp = unroll(jax.tree.map(jnp.add, m, h), plus)
            minus, lm = unroll(jax.tree.map(jnp.subtract, m, h), minus)
            return jax.tree.map(lambda e: scale * e * (lp - lm) / (2 * SIGMA**2), x), plus, minus

        grads, plus, minus = jax.vmap(one)(state["plus"], state["minus"], held, xi)
        new_eps = eps if not pes else jax.tree.map(jnp.zeros_like, eps)
        plus, done = reset(m, plus, k_b, None if pes else new_eps)
        minus, _ = reset(m, minus, k_b, None if pes else jax.tree.map(jnp.negative, new_eps))
        noise = jax.tree.map(lambda n, e: jnp.where(done.reshape(done.shape + (1,) * (n.ndim - 1)), e, n),
                             xi if pes else state["noise"], new_eps)
        return update(state, grads, dict(plus=plus, minus=minus, noise=noise))

    return init, step


# --- the library ----------------------------------------------------------------------------


def library_trainer(kind: str, s: Setup, num_tasks: int, lopt=None, meta_loss="mean_train", remat=False):
    lopt = lopt or s.lopt
    common = dict(horizon=s.horizon, num_tasks=num_tasks, meta_loss=meta_loss)
    est = {
        "full": lambda: meta.FullUnroll(remat=remat, **common),
        "truncated": lambda: meta.TruncatedBPTT(truncation=s.truncation, remat=remat, **common),
        "es": lambda: meta.ES(truncation=s.truncation, sigma=SIGMA, **common),
        "pes": lambda: meta.PES(truncation=s.truncation, sigma=SIGMA, **common),
    }[kind]()
    if kind == "full":
        est = meta.FullUnroll(remat=remat, **dict(common, horizon=s.truncation))
    return meta.MetaTrainer(lopt, s.family, est, optax.adam(META_LR))


def _unguarded(lopt):
    if hasattr(lopt, "max_consecutive_nonfinite"):
        return dataclasses.replace(lopt, max_consecutive_nonfinite=None)
    return None


VARIANTS = ("default", "no_guard", "reuse_loss", "remat")


def measure(kind: str, s: Setup, num_tasks: int, repeats: int, budget_s: float,
            default_only: bool = False, only: tuple[str, ...] | None = None) -> list[dict]:
    """Rows of one estimator and setup at ``num_tasks``: each variant's library step against
    the floor doing the same, interleaved. Variants: ``default``, ``no_guard``, ``reuse_loss``
    (all three unless ``default_only``) and ``remat`` (inner steps under ``jax.checkpoint`` on
    both sides; backpropagating estimators only); ``only`` picks a subset by name."""
    floor_s = dataclasses.replace(s, horizon=s.truncation) if kind == "full" else s
    variants = {"default": (s.lopt, "mean_train", True, False)}
    if _unguarded(s.lopt) is not None and not default_only:
        variants["no_guard"] = (_unguarded(s.lopt), "mean_train", True, False)
    if not default_only:
        variants["reuse_loss"] = (s.lopt, meta.MeanTrain(fresh_batch=False), False, False)
    if only is not None:
        if kind in ("full", "truncated"):
            variants["remat"] = (s.lopt, "mean_train", True, True)
        variants = {k: v for k, v in variants.items() if k in only}
    fns, boxes, compile_s, failed = {}, {}, {}, []
    for name, (lopt, loss, fresh_batch, remat) in list(variants.items()):
        trainer = library_trainer(kind, s, num_tasks, lopt, loss, remat)
        init, step = floor_step(kind, dataclasses.replace(floor_s, lopt=lopt), num_tasks, fresh_batch, remat)
        t0 = time.perf_counter()
        try:
            boxes["lib_" + name] = block(trainer.step(trainer.init(jax.random.PRNGKey(0)))[0])
            boxes["floor_" + name] = block(step(init(jax.random.PRNGKey(0))))
        except jax.errors.JaxRuntimeError as e:  # out of memory: a row saying so, the others still run
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            boxes.pop("lib_" + name, None)
            failed.append({"setup": s.name, "estimator": kind, "variant": name, "N": num_tasks, "T": s.horizon,
                           "K": s.truncation, "error": str(e).splitlines()[0][:300],
                           "side": "floor" if "lib_" + name in boxes else "library"})
            print(f"{s.name} {kind} {name} N={num_tasks}: {failed[-1]['error']}", flush=True)
            del variants[name]
            continue
        compile_s[name] = time.perf_counter() - t0

        def lib(trainer=trainer, box="lib_" + name):
            boxes[box] = trainer.step(boxes[box])[0]
            return boxes[box]

        def flo(step=step, box="floor_" + name):
            boxes[box] = step(boxes[box])
            return boxes[box]

        fns["lib_" + name], fns["floor_" + name] = lib, flo
    if not fns:
        return failed
    # calls per sample: a sample of at least ~20 ms, so a sub-millisecond step's per-round
    # ratio measures the step and not the timer and scheduler noise of one call
    first = next(iter(fns.values()))
    block(first())
    t0 = time.perf_counter()
    for _ in range(3):
        block(first())
    number = max(1, int(0.02 / max((time.perf_counter() - t0) / 3, 1e-6)))
    samples = interleaved_samples(fns, repeats=repeats, number=number, budget_s=budget_s)
    t = {k: statistics.median(v) for k, v in samples.items()}
    K = s.truncation
    rows = []
    base = "default" if "default" in variants else next(iter(variants))
    for name in variants:
        lib_s, flo_s = t["lib_" + name], t["floor_" + name]
        # per-round ratios (the programs of one round ran back to back): the run-to-run spread
        per_round = [f / l for f, l in zip(samples["floor_" + name], samples["lib_" + name])]
        vs_base = [b / l for b, l in zip(samples["lib_" + base], samples["lib_" + name])]
        task_steps = num_tasks * K * (2 if kind in ("es", "pes") else 1)
        rows.append({
            "setup": s.name, "estimator": kind, "variant": name, "N": num_tasks, "T": s.horizon, "K": K,
            "library_ms": 1e3 * lib_s, "floor_ms": 1e3 * flo_s, "ratio": flo_s / lib_s,
            "ratio_round_min": min(per_round), "ratio_round_max": max(per_round), "rounds": len(per_round),
            "calls_per_sample": number,
            "library_min_ms": 1e3 * min(samples["lib_" + name]), "floor_min_ms": 1e3 * min(samples["floor_" + name]),
            "ratio_of_mins": min(samples["floor_" + name]) / min(samples["lib_" + name]),
            "vs_default_library": t["lib_" + base] / lib_s,
            "vs_default_library_round_min": min(vs_base), "vs_default_library_round_max": max(vs_base),
            "library_task_steps_per_s": task_steps / lib_s, "floor_task_steps_per_s": task_steps / flo_s,
            "compile_s": compile_s[name],
        })
    return rows + failed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, nargs="+", default=[8, 64, 256])
    ap.add_argument("--setups", nargs="+", default=["stepsize_quadratic", "blackbox_digits", "star_digits"],
                    choices=list(setups(True)))
    ap.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timing rounds per row")
    ap.add_argument("--quick", action="store_true", help="N = 8 only, short horizons, 3-5 rounds (CPU smoke size)")
    ap.add_argument("--smoke", action="store_true", help="step-size setup, N = 4, 3 rounds: checks that it runs")
    ap.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                    help="library variants to time (default: default, no_guard, reuse_loss; remat only when named)")
    ap.add_argument("--remat", action="store_true", help="shorthand for --variants default remat")
    ap.add_argument("--name", default="meta_floor", help="JSON file name (without .json)")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.repeats, args.budget = [8], 5, 4.0
    if args.smoke:
        args.quick, args.setups, args.tasks, args.repeats, args.budget = True, ["stepsize_quadratic"], [4], 3, 0.5
    if args.remat:
        args.variants = sorted(set(args.variants or ()) | {"default", "remat"}, key=VARIANTS.index)
    only = tuple(args.variants) if args.variants else None
    rows = []
    for name in args.setups:
        s = setups(args.quick)[name]
        for kind in args.estimators:
            for n in args.tasks:
                for row in measure(kind, s, n, args.repeats, args.budget, default_only=args.smoke, only=only):
                    rows.append(row)
                    if "error" in row:
                        continue
                    print(f"{row['setup']:18s} {kind:9s} {row['variant']:10s} N={n:3d}: library {row['library_ms']:.3g} ms, "
                          f"floor {row['floor_ms']:.3g} ms -> {row['ratio']:.2f}x of the floor", flush=True)
    cols = ["setup", "estimator", "variant", "N", "T", "K", "library_ms", "floor_ms", "ratio", "ratio_round_min",
            "ratio_round_max", "ratio_of_mins", "vs_default_library", "library_task_steps_per_s", "floor_task_steps_per_s", "compile_s"]
    print()
    print(table([r for r in rows if "error" not in r], cols))
    payload = {"quick": args.quick, "smoke": args.smoke, "target_ratio": 0.8, "devices": [str(d) for d in jax.devices()],
               "backend": jax.default_backend(), "config": {k: v for k, v in vars(args).items() if k != "out"},
               "rows": rows}
    print(f"\nwrote {write_json(args.name, payload, args.out)}")


if __name__ == "__main__":
    main()
