"""Meta-training throughput: the jitted, vmapped meta-step against a literal Algorithm 1 loop.

The same meta-training work is done two ways, in the same process, runs interleaved:

* **library** -- ``MetaTrainer.step`` with ``FullUnroll(horizon=T, num_tasks=N)`` over a
  pool of ``N`` tasks (every task in every meta-step, as in the DCO paper): one jitted
  function, tasks ``jax.vmap``-ed, the inner loop a ``lax.scan``;
* **loop** -- Algorithm 1 of the DCO paper written the way a straightforward
  reimplementation would be: a Python ``for`` over tasks and a Python ``for`` over the ``T``
  inner steps (``jax.grad`` of the task loss, then ``Opt``), validation losses accumulated in
  ``l_total``, one ``jax.grad`` of ``l_total`` for the meta-gradient, one ``MetaOpt`` step. All
  eager JAX: no ``vmap``, no ``jit`` of the step. This is the reference;
* **jit_loop** -- for context, the same Python loop over tasks with each task's unroll and
  meta-gradient compiled into one jitted call (no vmap), meta-gradients summed in Python:
  what batching the tasks into one program adds on top of compiling.

Setup: least squares (DCO Sec. VI-B, ``dim x dim`` Gaussian ``X``), DCOG / DCOM with
normalised gradients (paper VI-A), ``final_val`` meta-loss, RMSProp with PyTorch defaults.
Both start from the same meta-parameters, tasks and initial parameters; the script asserts
that their meta-gradients and the meta-parameters after a few meta-steps agree before
timing. Reported: task-steps per second (``N * T`` inner steps, forward and backward, per
meta-step) and the speed-ups over both loops; the library's one-off compile time is reported separately
and excluded from its rate. Target: >= 30x on a 2-core CPU.

    python -m benchmarks.meta_throughput [--quick | --smoke] [--tasks 100] [--dim 100] [--horizons 1 10] [--out DIR]

``--smoke``: DCOG, 4 tasks of dimension 10, T = 1, three rounds -- it checks that the
benchmark runs (the agreement checks included); its speed-ups are no claim.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_dco as ldco
from benchmarks.common import block, interleaved_medians, table, write_json
from learned_dco import meta, tasks

TARGET = 30.0
OPTIMIZERS = {"dcog": ldco.DCOG, "dcom": ldco.DCOM}


def _tasks_and_starts(family, pool, init_seed: int):
    """The pool's tasks as a list and their initial parameters, the same as FullUnroll's:
    task ``i`` starts from ``fold_in(init_seed, i)``."""
    n = jax.tree.leaves(pool)[0].shape[0]
    task_list = [jax.tree.map(lambda x: x[i], pool) for i in range(n)]
    starts = [
        family.init_params(jax.random.split(jax.random.fold_in(jax.random.PRNGKey(init_seed), i))[0], task)
        for i, task in enumerate(task_list)
    ]
    return task_list, starts


def literal_algorithm_1(lopt, family, pool, init_seed: int, horizon: int):
    """``meta_step(meta, opt_state) -> (meta, opt_state, l_total)`` and ``meta_gradient``,
    per DCO Algorithm 1, eager and per task (a literal Python loop: the reference)."""
    task_list, starts = _tasks_and_starts(family, pool, init_seed)
    n = len(task_list)
    grad_loss = jax.grad(family.loss)

    def l_total(phi):
        total = 0.0
        opt = lopt.opt_fn(phi)
        for theta, task in zip(starts, task_list):  # for each task T_i
            state = opt.init(theta)
            for _ in range(horizon):  # for t = 1..T
                g = grad_loss(theta, task, None)
                updates, state = opt.update(g, state, theta)  # (theta, S) = Opt(theta, S, G; phi)
                theta = optax.apply_updates(theta, updates)
            total = total + family.val_loss(theta, task)  # l_total += l_i^val(theta_i^T)
        return total / n

    meta_gradient = jax.value_and_grad(l_total)
    return _with_meta_opt(meta_gradient), meta_gradient


def per_task_jit(lopt, family, pool, init_seed: int, horizon: int):
    """The same loop over tasks, but each task's ``T``-step unroll and its meta-gradient are
    one jitted call (no vmap; the library's inner loop): what vectorising over tasks adds
    on top of compiling."""
    task_list, starts = _tasks_and_starts(family, pool, init_seed)
    n = len(task_list)

    @jax.jit
    @jax.value_and_grad
    def task_loss(phi, theta, task):
        opt = lopt.opt_fn(phi)
        start = meta.InnerState(theta, opt.init(theta), task, jnp.zeros((), jnp.int32), None)
        return family.val_loss(meta.inner_loop(opt, family, start, horizon)[0].params, task)

    def meta_gradient(phi):
        total, grad = 0.0, jax.tree.map(jnp.zeros_like, phi)
        for theta, task in zip(starts, task_list):
            value, g = task_loss(phi, theta, task)
            total, grad = total + value, jax.tree.map(jnp.add, grad, g)
        return total / n, jax.tree.map(lambda g: g / n, grad)

    return _with_meta_opt(meta_gradient), meta_gradient


META_OPT = meta.rmsprop_pytorch(0.01)


def _with_meta_opt(meta_gradient):
    def meta_step(phi, opt_state):
        value, grad = meta_gradient(phi)
        updates, opt_state = META_OPT.update(grad, opt_state, phi)  # phi = MetaOpt(phi, grad)
        return optax.apply_updates(phi, updates), opt_state, value

    return meta_step


def _close(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def measure(name: str, horizon: int, num_tasks: int, dim: int, repeats: int, budget_s: float, lib_steps: int):
    family = tasks.LeastSquares(num_samples=dim, dim=dim)
    # The non-finite guard (optax.apply_if_finite) is off on both sides: its lax.cond is
    # recompiled on every eager call (~0.35 s per inner step here), which would time JAX's
    # eager control flow rather than the Python loop; least squares never goes non-finite.
    lopt = OPTIMIZERS[name](learning_rate=0.1, normalize=True, max_consecutive_nonfinite=None)
    pool = tasks.sample_tasks(family, jax.random.PRNGKey(0), num_tasks)
    estimator = meta.FullUnroll(horizon=horizon, num_tasks=num_tasks, meta_loss="final_val")
    trainer = meta.MetaTrainer(lopt, family, estimator, META_OPT, pool=pool)
    state = trainer.init(jax.random.PRNGKey(1))
    loops = {
        "loop": literal_algorithm_1(lopt, family, pool, estimator.init_seed, horizon),
        "jit_loop": per_task_jit(lopt, family, pool, estimator.init_seed, horizon),
    }

    # --- same work: same meta-gradient, same meta-parameters after two meta-steps ----------
    t0 = time.perf_counter()
    lib_grad = trainer.meta_gradient(state)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(lib_grad))
    compile_start = time.perf_counter()
    lib_state, _ = trainer.step(state)
    block(lib_state)
    compile_s = time.perf_counter() - compile_start
    lib_state, _ = trainer.step(lib_state)
    box = {"lib": lib_state}
    for name, (step, grad_fn) in loops.items():
        _close(lib_grad, grad_fn(state.meta)[1], rtol=2e-3, atol=1e-5 * scale)
        phi, opt_state = state.meta, META_OPT.init(state.meta)
        for _ in range(2):
            phi, opt_state, _ = step(phi, opt_state)
        _close(lib_state.meta, phi, rtol=1e-3, atol=1e-5)
        box[name] = (phi, opt_state)
    check_s = time.perf_counter() - t0

    # --- timing (interleaved; the library runs lib_steps meta-steps per call) ---------------
    def library():
        s = box["lib"]
        for _ in range(lib_steps):
            s, metrics = trainer.step(s)
        box["lib"] = block(s)
        return metrics.meta_loss

    def looped(name):
        def run():
            phi, opt_state, value = loops[name][0](*box[name])
            box[name] = (phi, opt_state)
            return value

        return run

    t = interleaved_medians(
        {"library": library, "loop": looped("loop"), "jit_loop": looped("jit_loop")}, repeats=repeats, budget_s=budget_s
    )
    lib_s, loop_s, jit_s = t["library"] / lib_steps, t["loop"], t["jit_loop"]
    work = num_tasks * horizon
    return {
        "optimizer": name_of(lopt), "T": horizon, "tasks": num_tasks, "dim": dim,
        "library_ms": 1e3 * lib_s, "loop_s": loop_s, "jit_loop_ms": 1e3 * jit_s,
        "library_task_steps_per_s": work / lib_s, "loop_task_steps_per_s": work / loop_s,
        "jit_loop_task_steps_per_s": work / jit_s,
        "speedup": loop_s / lib_s, "speedup_vs_jit_loop": jit_s / lib_s,
        "library_compile_s": compile_s, "check_s": check_s, "meets_target": loop_s / lib_s >= TARGET,
    }


def name_of(lopt) -> str:
    return {cls: n for n, cls in OPTIMIZERS.items()}[type(lopt)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--horizons", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (at least 3)")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of timing rounds per row")
    ap.add_argument("--quick", action="store_true", help="DCOG only, 20 tasks, T = 1 and 3 (well under a minute)")
    ap.add_argument("--smoke", action="store_true", help="DCOG, 4 tasks, dim 10, T = 1: checks that it runs")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.horizons, args.optimizers, args.repeats, args.budget = 20, [1, 3], ["dcog"], 3, 5.0
    if args.smoke:
        args.tasks, args.dim, args.horizons, args.optimizers, args.repeats, args.budget = 4, 10, [1], ["dcog"], 3, 1.0

    rows = []
    for name in args.optimizers:
        for horizon in args.horizons:
            lib_steps = max(1, 200 // horizon)
            row = measure(name, horizon, args.tasks, args.dim, args.repeats, args.budget, lib_steps)
            rows.append(row)
            print(
                f"{name} T={horizon:3d} tasks={args.tasks}: library {row['library_task_steps_per_s']:.3g} task-steps/s, "
                f"loop {row['loop_task_steps_per_s']:.3g} -> x{row['speedup']:.0f}; "
                f"jitted per-task loop {row['jit_loop_task_steps_per_s']:.3g} -> x{row['speedup_vs_jit_loop']:.1f} "
                f"(library compile {row['library_compile_s']:.1f} s)",
                flush=True,
            )
    cols = ["optimizer", "T", "tasks", "library_ms", "loop_s", "jit_loop_ms", "library_task_steps_per_s",
            "loop_task_steps_per_s", "jit_loop_task_steps_per_s", "speedup", "speedup_vs_jit_loop",
            "library_compile_s", "meets_target"]
    print()
    print(table(rows, cols))
    path = write_json("meta_throughput", {"target_speedup": TARGET, "quick": args.quick, "smoke": args.smoke, "rows": rows}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
