"""Cost of one learned-optimizer update (Blackbox, STAR): the lean update against the
original implementation and an optax Adam step, same parameters, same run.

Setup: the 64-32-32-10 digits MLP (3 466 parameters, ``tasks.DigitsMLP(hidden=(32, 32))``),
random gradients. For each optimizer and each number of tasks N (the update ``jax.vmap``-ed
over N independent parameter/state copies, as in meta-training; N = 1 is one plain jitted
update) we time, runs interleaved (``--repeats`` rounds, each calling every candidate
``--number`` times in turn, medians reported):

* ``old``      -- the materialised implementation (``fuse_features=False``: the ``(n, 39)``
  feature tensor materialised and fed to the MLP; the default on accelerators), default options otherwise;
* ``new``      -- ``fuse_features=True`` (features and first layer fused per tensor,
  ``features.first_layer``; the default on CPU through ``"auto"``), default options
  otherwise (non-finite guard on);
* ``new_noguard`` -- the same with ``max_consecutive_nonfinite=None`` (the setting for
  meta-training, where the trainer already masks non-finite tasks);
* ``old_noguard`` -- the reference without the guard (the fair comparison for the above);
* ``adam``     -- ``optax.adam(1e-3)`` on the same parameters.

Also reported: the update's relative difference new vs old (``max |new - old| / max |old|``
per tensor, float32, after 3 steps of history), XLA's compiled cost analysis (flops and
bytes accessed per parameter) and memory stats (temporaries), and the meta-gradient time
(``jax.grad`` w.r.t. the meta-parameters of the training loss after ``--unroll`` inner steps
on a fixed minibatch, ``lax.scan`` over the steps, guard off) old vs new, with the number of
non-finite meta-gradient entries on each path (a ``nan`` difference then says which path
produced it; both differentiate the materialised update, so they agree when finite). Ratios are
``old / new`` (speed-up) and ``new / adam``.

    python -m benchmarks.lopt_update [--quick | --smoke] [--tasks 1 8 64] [--out DIR]

``--quick``: N = 1 and 8, fewer rounds (about a minute on 2 busy cores); ``--smoke``: STAR only, N = 1,
three rounds, a 2-step unroll (a few seconds plus compilation; for tests). The JSON (to
benchmarks/results/lopt_update.json) records ``jax.devices()``, so the script runs unchanged
on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_dco as ldco
from learned_dco import io
from benchmarks.common import environment, interleaved_samples, table
from learned_dco import tasks

RESULTS = Path(__file__).resolve().parent / "results"
OPTIMIZERS = {
    "blackbox": lambda: ldco.Blackbox(direction_init="random"),
    "star": lambda: ldco.STAR(direction_init="random"),
}


def interleaved(fns: dict, repeats: int, number: int, budget_s: float) -> dict[str, dict[str, float]]:
    """Median and min seconds per call of each zero-argument function, rounds interleaved
    (:func:`benchmarks.common.interleaved_samples`); compiled first."""
    samples = interleaved_samples(fns, repeats, number, budget_s)
    return {k: {"median": statistics.median(v), "min": min(v), "rounds": len(v)} for k, v in samples.items()}


def _compiled_stats(jitted, *args) -> dict[str, float | None]:
    compiled = jitted.lower(*args).compile()
    out: dict[str, float | None] = {"flops": None, "bytes_accessed": None, "temp_bytes": None}
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        out["flops"] = float(ca.get("flops", float("nan")))
        out["bytes_accessed"] = float(ca.get("bytes accessed", float("nan")))
    except Exception:  # noqa: BLE001 -- not every backend reports it
        pass
    try:
        out["temp_bytes"] = float(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001
        pass
    return out


def _max_rel_diff(new, ref) -> float:
    """``max |new - ref| / max |ref|`` per tensor, the largest over tensors; a tensor whose
    entries are all zero in both counts 0 (not 0/0), and a non-finite entry in either makes
    the result ``nan`` whichever tensor it is in (Python's ``max`` would drop a ``nan`` that
    is not first)."""
    worst = 0.0
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.size == 0:
            continue
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            return float("nan")
        diff, scale = np.max(np.abs(a - b)), np.max(np.abs(b))
        worst = max(worst, 0.0 if diff == 0 else float(diff / max(scale, np.finfo(np.float64).tiny)))
    return worst


def _grads(params, step):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(7), step), len(leaves))
    return jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _stack(tree, n):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), tree)


def _builders(lopt):
    variant = lambda **kw: dataclasses.replace(lopt, **kw).opt_fn
    return {
        "old": variant(fuse_features=False),
        "new": variant(fuse_features=True),
        "old_noguard": variant(fuse_features=False, max_consecutive_nonfinite=None),
        "new_noguard": variant(fuse_features=True, max_consecutive_nonfinite=None),
    }


def bench_update(name, lopt, family, n_tasks, repeats, number, budget):
    params = family.init_params(jax.random.PRNGKey(0), None)
    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    meta = lopt.init(jax.random.PRNGKey(1), params)
    builders = _builders(lopt)
    # three steps of history so every accumulator is non-trivial
    tx = lopt.opt_fn(meta)
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for k in range(3):
        _, state = step(_grads(params, k), state, params)
    grads = _grads(params, 3)
    adam = optax.adam(1e-3)
    adam_state = adam.init(params)

    def one(builder):
        return lambda m, g, s, p: builder(m).update(g, s, p)

    fns, args = {}, {}
    for key, builder in builders.items():
        f = one(builder)
        fns[key] = jax.jit(f if n_tasks == 1 else jax.vmap(f, in_axes=(None, 0, 0, 0)))
        args[key] = (meta, grads, state.inner_state if key.endswith("noguard") else state, params)
    adam_fn = lambda m, g, s, p: adam.update(g, s, p)
    fns["adam"] = jax.jit(adam_fn if n_tasks == 1 else jax.vmap(adam_fn, in_axes=(None, 0, 0, 0)))
    args["adam"] = (meta, grads, adam_state, params)
    if n_tasks > 1:
        args = {k: (a[0], *(_stack(x, n_tasks) for x in a[1:])) for k, a in args.items()}

    # equality new vs old on the same inputs (per tensor, relative to the tensor's largest entry)
    u_new, s_new = fns["new"](*args["new"])
    u_old, s_old = fns["old"](*args["old"])
    rel = _max_rel_diff(u_new, u_old)
    state_equal = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(s_new), jax.tree.leaves(s_old)))
    stats = {k: _compiled_stats(fns[k], *args[k]) for k in fns}
    times = interleaved({k: (lambda k=k: fns[k](*args[k])) for k in fns}, repeats, number, budget)
    total = n_params * n_tasks
    row = {
        "optimizer": name,
        "tasks": n_tasks,
        "params_per_task": n_params,
        "max_rel_diff_new_vs_old": rel,
        "state_identical": state_equal,
        "speedup_old_over_new": times["old"]["median"] / times["new"]["median"],
        "speedup_noguard": times["old_noguard"]["median"] / times["new_noguard"]["median"],
        "speedup_old_over_new_noguard": times["old"]["median"] / times["new_noguard"]["median"],
        "new_over_adam": times["new"]["median"] / times["adam"]["median"],
        "guard_cost_new": times["new"]["median"] / times["new_noguard"]["median"],
    }
    for k in fns:
        row[f"{k}_us"] = 1e6 * times[k]["median"]
        row[f"{k}_min_us"] = 1e6 * times[k]["min"]
        row[f"{k}_ns_per_param"] = 1e9 * times[k]["median"] / total
        for s, v in stats[k].items():
            row[f"{k}_{s}_per_param"] = None if v is None else v / total
    row["rounds"] = times["new"]["rounds"]
    return row


def bench_meta_grad(name, lopt, family, n_tasks, unroll, repeats, budget):
    """Time of jax.grad (w.r.t. meta) of the training loss after ``unroll`` inner steps."""
    lopt = dataclasses.replace(lopt, max_consecutive_nonfinite=None)
    task = family.sample(jax.random.PRNGKey(2))
    params = family.init_params(jax.random.PRNGKey(0), task)
    batch = family.sample_batch(jax.random.PRNGKey(3), task)
    meta = lopt.init(jax.random.PRNGKey(1), params)

    def meta_loss(meta, params, builder):
        tx = builder(meta)

        def body(carry, _):
            p, s = carry
            g = jax.grad(family.loss)(p, task, batch)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), length=unroll)
        return family.loss(p, task, batch)

    fns = {}
    for key, fused in (("old", False), ("new", True)):
        builder = dataclasses.replace(lopt, fuse_features=fused).opt_fn
        f = jax.grad(lambda m, p, b=builder: meta_loss(m, p, b))
        if n_tasks > 1:
            f = (lambda f: lambda m, p: jax.tree.map(lambda x: x.mean(0), jax.vmap(f, in_axes=(None, 0))(m, p)))(f)
        fns[key] = jax.jit(f)
    ps = params if n_tasks == 1 else jax.vmap(lambda k: family.init_params(k, task))(jax.random.split(jax.random.PRNGKey(0), n_tasks))
    g_old, g_new = fns["old"](meta, ps), fns["new"](meta, ps)
    nonfinite = {k: sum(int(np.sum(~np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(g))
                 for k, g in (("old", g_old), ("new", g_new))}
    rel = _max_rel_diff(g_new, g_old)
    stats = {k: _compiled_stats(fns[k], meta, ps) for k in fns}
    times = interleaved({k: (lambda k=k: fns[k](meta, ps)) for k in fns}, repeats, 1, budget)
    row = {
        "optimizer": name,
        "tasks": n_tasks,
        "unroll": unroll,
        "max_rel_diff_meta_grad": rel,
        "nonfinite_meta_grad_old": nonfinite["old"],
        "nonfinite_meta_grad_new": nonfinite["new"],
        "old_ms": 1e3 * times["old"]["median"],
        "new_ms": 1e3 * times["new"]["median"],
        "old_min_ms": 1e3 * times["old"]["min"],
        "new_min_ms": 1e3 * times["new"]["min"],
        "speedup": times["old"]["median"] / times["new"]["median"],
        "rounds": times["new"]["rounds"],
    }
    for k in fns:
        for s, v in stats[k].items():
            row[f"{k}_{s}"] = v
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, nargs="+", default=[1, 8, 64], help="N, tasks the update is vmapped over")
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    ap.add_argument("--repeats", type=int, default=40, help="timing rounds (at least 3)")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timing rounds per row")
    ap.add_argument("--unroll", type=int, default=10, help="inner steps of the meta-gradient unroll")
    ap.add_argument("--meta-tasks", type=int, nargs="*", default=[1, 8], help="N for the meta-gradient rows")
    ap.add_argument("--quick", action="store_true", help="N = 1 and 8, fewer rounds")
    ap.add_argument("--smoke", action="store_true", help="STAR, N = 1, 3 rounds, 2-step unroll")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.smoke:  # STAR only (Blackbox's update is the same code path without the nominal term)
        args.tasks, args.meta_tasks, args.repeats, args.budget, args.unroll = [1], [1], 3, 2.0, 2
        args.optimizers = ["star"]
    elif args.quick:
        args.tasks, args.meta_tasks, args.repeats, args.budget = [1, 8], [1], 20, 8.0
    family = tasks.DigitsMLP(hidden=(32, 32), batch_size=64)
    print(f"devices: {jax.devices()}")
    update_rows, meta_rows = [], []
    t0 = time.perf_counter()
    for name in args.optimizers:
        for n in args.tasks:
            number = max(1, 64 // n) if not args.smoke else 1
            update_rows.append(bench_update(name, OPTIMIZERS[name](), family, n, args.repeats, number, args.budget))
            print(table(update_rows[-1:], ["optimizer", "tasks", "old_us", "new_us", "new_noguard_us", "adam_us", "speedup_old_over_new"]), flush=True)
        for n in args.meta_tasks:
            meta_rows.append(bench_meta_grad(name, OPTIMIZERS[name](), family, n, args.unroll, max(3, args.repeats // 4), args.budget))
    print("\nUpdate (medians; speed-up = old / new; ns per parameter-entry):")
    print(table(update_rows, [
        "optimizer", "tasks", "old_us", "new_us", "speedup_old_over_new", "old_noguard_us", "new_noguard_us",
        "speedup_noguard", "adam_us", "new_over_adam", "guard_cost_new", "max_rel_diff_new_vs_old",
    ]))
    print("\nPer parameter (XLA cost analysis / memory stats, per parameter-entry):")
    print(table(update_rows, [
        "optimizer", "tasks", "old_ns_per_param", "new_ns_per_param", "adam_ns_per_param",
        "old_bytes_accessed_per_param", "new_bytes_accessed_per_param", "adam_bytes_accessed_per_param",
        "old_flops_per_param", "new_flops_per_param", "adam_flops_per_param", "old_temp_bytes_per_param", "new_temp_bytes_per_param",
    ]))
    print(f"\nMeta-gradient through {args.unroll} inner steps (guard off):")
    print(table(meta_rows, ["optimizer", "tasks", "old_ms", "new_ms", "speedup", "old_bytes_accessed", "new_bytes_accessed",
                            "max_rel_diff_meta_grad", "nonfinite_meta_grad_old", "nonfinite_meta_grad_new"]))
    result = {
        "benchmark": "lopt_update",
        "environment": environment(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "task": "DigitsMLP(hidden=(32, 32)), 3466 parameters",
        "seconds": time.perf_counter() - t0,
        "update": update_rows,
        "meta_gradient": meta_rows,
    }
    name = "lopt_update" + ("_smoke" if args.smoke else "_quick" if args.quick else "")
    path = io.atomic_write_json((Path(args.out) if args.out else RESULTS) / f"{name}.json", result, indent=2)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
