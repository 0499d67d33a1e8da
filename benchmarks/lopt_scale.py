"""The per-parameter learned update on 100k-1M parameter models: STAR and Blackbox against
an optax Adam step on the same parameters, in the same run.

Models: dense layers of a 784-128-10 MLP (101 770 parameters) and a 784-1024-256-10 MLP
(1 068 810 parameters), float32, random gradients, three steps of history first. One task
(N = 1: one plain jitted update, as a user applies the optimizer), guard on (the default).
Candidates, interleaved (``benchmarks.common.interleaved_samples``; per-round ratios to the
Adam call of the same round, reported as median and [min, max]):

* ``fused``        -- ``fuse_features=True`` (the CPU default through ``"auto"``);
* ``materialised`` -- ``fuse_features=False`` (the ``(n, 39)`` feature tensor, then the MLP);
* ``adam``         -- ``optax.adam(1e-3)``.

Also: the meta-gradient through ``--unroll`` inner steps of the 100k model on a fixed
quadratic loss (``jax.grad`` w.r.t. the meta-parameters, guard off), fused against
materialised, and the compile seconds of each program.

    python -m benchmarks.lopt_scale [--smoke] [--rounds 7] [--out DIR]

``--smoke``: the 100k model, STAR only, 3 rounds, a 2-step unroll (checks that it runs).
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

MODELS = {
    "mlp_100k": ((784, 128), (128,), (128, 10), (10,)),
    "mlp_1m": ((784, 1024), (1024,), (1024, 256), (256,), (256, 10), (10,)),
}
OPTIMIZERS = {"star": ldco.STAR, "blackbox": ldco.Blackbox}


def _params(shapes):
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    return {f"layer{i}": 0.05 * jax.random.normal(k, s, jnp.float32) for i, (k, s) in enumerate(zip(keys, shapes))}


def _grads(params, step):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(7), step), len(leaves))
    return jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _ratios(samples: dict[str, list[float]], ref: str) -> dict[str, dict[str, float]]:
    out = {}
    for name, times in samples.items():
        r = [t / a for t, a in zip(times, samples[ref])]
        out[name] = {"ms": 1e3 * statistics.median(times), "ratio": statistics.median(r), "min": min(r), "max": max(r)}
    return out


def bench_update(opt_name: str, model: str, rounds: int, budget: float) -> list[dict]:
    params = _params(MODELS[model])
    n = sum(x.size for x in jax.tree.leaves(params))
    grads = _grads(params, 3)
    fns, compile_s = {}, {}
    for variant, fused in (("fused", True), ("materialised", False)):
        lopt = OPTIMIZERS[opt_name](fuse_features=fused)
        tx = lopt.opt_fn(lopt.init(jax.random.PRNGKey(1), params))
        step = jax.jit(tx.update)
        state = tx.init(params)
        t0 = time.perf_counter()
        for k in range(3):
            _, state = block(step(_grads(params, k), state, params))
        compile_s[variant] = time.perf_counter() - t0
        fns[variant] = (lambda step=step, state=state: step(grads, state, params))
    adam = optax.adam(1e-3)
    adam_step, adam_state = jax.jit(adam.update), adam.init(params)
    fns["adam"] = lambda: adam_step(grads, adam_state, params)
    r = _ratios(interleaved_samples(fns, rounds, 1, budget), "adam")
    return [{"optimizer": opt_name, "model": model, "params": n, "variant": v, "ms": r[v]["ms"],
             "over_adam": r[v]["ratio"], "over_adam_min": r[v]["min"], "over_adam_max": r[v]["max"],
             "compile_s": compile_s.get(v)} for v in fns]


def bench_meta_grad(opt_name: str, model: str, unroll: int, rounds: int, budget: float) -> list[dict]:
    params = _params(MODELS[model])
    target = jax.tree.map(lambda p: 0.5 * p + 0.01, params)
    loss = lambda p: sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))
    fns, compile_s = {}, {}
    for variant, fused in (("fused", True), ("materialised", False)):
        lopt = OPTIMIZERS[opt_name](fuse_features=fused, max_consecutive_nonfinite=None)
        meta = lopt.init(jax.random.PRNGKey(1), params)

        def meta_loss(m, lopt=lopt):
            tx = lopt.opt_fn(m)

            def body(carry, _):
                p, s = carry
                u, s = tx.update(jax.grad(loss)(p), s, p)
                return (optax.apply_updates(p, u), s), None

            (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), length=unroll)
            return loss(p)

        g = jax.jit(jax.grad(meta_loss))
        t0 = time.perf_counter()
        block(g(meta))
        compile_s[variant] = time.perf_counter() - t0
        fns[variant] = (lambda g=g, meta=meta: g(meta))
    r = _ratios(interleaved_samples(fns, rounds, 1, budget), "materialised")
    return [{"optimizer": opt_name, "model": model, "unroll": unroll, "variant": v, "ms": r[v]["ms"],
             "over_materialised": r[v]["ratio"], "min": r[v]["min"], "max": r[v]["max"], "compile_s": compile_s[v]}
            for v in fns]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of timing rounds per row")
    ap.add_argument("--unroll", type=int, default=5)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    models, opts = list(MODELS), list(OPTIMIZERS)
    if args.smoke:
        models, opts, args.rounds, args.budget, args.unroll = ["mlp_100k"], ["star"], 3, 5.0, 2
    update_rows, meta_rows = [], []
    for opt_name in opts:
        for model in models:
            update_rows += bench_update(opt_name, model, args.rounds, args.budget)
            print(table(update_rows[-3:], ["optimizer", "model", "params", "variant", "ms", "over_adam", "over_adam_min",
                                           "over_adam_max", "compile_s"]), flush=True)
        meta_rows += bench_meta_grad(opt_name, "mlp_100k", args.unroll, args.rounds, args.budget)
        print(table(meta_rows[-2:], ["optimizer", "model", "unroll", "variant", "ms", "over_materialised", "min", "max",
                                     "compile_s"]), flush=True)
    path = write_json("lopt_scale" + ("_smoke" if args.smoke else ""), {
        "machine": "2-core CPU shared with other engineers' jobs (noisy; ratios from the same rounds)",
        "devices": [str(d) for d in jax.devices()], "config": {k: v for k, v in vars(args).items() if k != "out"},
        "update": update_rows, "meta_gradient": meta_rows}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
