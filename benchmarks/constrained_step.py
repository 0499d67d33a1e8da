"""Cost of a constrained DCO step against the unconstrained one, per solver, same run.

A least-squares task (p parameters, X p x p); the step is DCOG's QP
``min g.d + lam^2/2 ||d||^2`` (:func:`learned_dco.optimizers.general.general_dco`) with

* ``none/exact``: no constraints (the reference, the closed form's speed);
* ``nonneg/exact``, ``nonneg/osqp``, ``nonneg/cdqp``: ``theta >= 0`` as a box on the step;
* ``simplex/osqp``: ``theta`` on the probability simplex (one equality row, p inequality
  rows; the general OSQP path with the active-set KKT backward);
* ``simplex/simplex_exact``: the same set as one row of ones and a lower bound, solved by
  the exact sort-based :class:`learned_dco.optimizers.general.SimplexExact`.

For one task and a vmapped batch, the jitted forward (``--steps`` inner steps) and the
meta-gradient of the final loss w.r.t. ``lam`` are timed interleaved with the reference;
ratios are printed and written as JSON (the user defaults: guard on).

    python benchmarks/constrained_step.py [--quick | --smoke] [--out DIR]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import interleaved_medians, table, unroll_steps, write_json
from learned_dco import qp
from learned_dco.optimizers.general import SimplexExact, StepQP, general_dco

SETTINGS = {
    "none/exact": (None, "exact"),
    "nonneg/exact": ("nonneg", "exact"),
    "nonneg/osqp": ("nonneg", "osqp"),
    "nonneg/cdqp": ("nonneg", "cdqp"),
    "simplex/osqp": ("simplex", "osqp"),
    "simplex/simplex_exact": ("simplex_lo", SimplexExact()),
}


def _step(kind):
    def step(meta, g, theta, state):
        Q = qp.ScaledIdentity(meta ** 2)
        if kind is None:
            return StepQP(Q, g), state
        if kind == "nonneg":
            return StepQP(Q, g, lo=-theta), state
        n = theta.size
        if kind == "simplex_lo":
            return StepQP(Q, g, A=jnp.ones((1, n), theta.dtype), b=jnp.zeros(1, theta.dtype), lo=-theta), state
        return StepQP(Q, g, A=jnp.ones((1, n), theta.dtype), b=jnp.zeros(1, theta.dtype), G=-jnp.eye(n, dtype=theta.dtype), h=theta), state

    return step


def _loss(theta, task):
    X, y = task
    return jnp.sum((X @ theta - y) ** 2)


def _unroll(kind, solver, steps):
    constraints = {None: (), "nonneg": ("box",), "simplex": ("eq", "ineq"), "simplex_lo": ("box", "eq")}[kind]

    def run(lam, theta, task):
        tx = general_dco(lam, _step(kind), solver=solver, constraints=constraints)
        return unroll_steps(tx, _loss, theta, task, steps)

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, default=20)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repeats, batch 1 and 100")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, checks the benchmark runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    p, batches, repeats = args.p, (1, 100), args.repeats
    if args.quick:
        repeats = 5
    if args.smoke:
        p, batches, repeats = 4, (1, 3), 2
    key = jax.random.PRNGKey(0)
    X = jax.random.normal(key, (max(batches), p, p)) / jnp.sqrt(p)
    y = jax.random.normal(jax.random.PRNGKey(1), (max(batches), p))
    theta0 = jnp.full((max(batches), p), 1.0 / p)  # feasible for both sets
    lam = jnp.asarray(2.0)
    rows = []
    for batch in batches:
        task, theta = (X[:batch], y[:batch]), theta0[:batch]
        progs = {}
        for name, (kind, solver) in SETTINGS.items():
            run = _unroll(kind, solver, args.steps)
            fwd = jax.jit(jax.vmap(run, in_axes=(None, 0, 0)))
            grad = jax.jit(jax.grad(lambda l, th, tk, run=run: jnp.mean(jax.vmap(lambda a, b: _loss(run(l, a, b), b))(th, tk))))
            progs[name + ":f"] = (lambda f=fwd, task=task, theta=theta: f(lam, theta, task))
            progs[name + ":g"] = (lambda g=grad, task=task, theta=theta: g(lam, theta, task))
        t = interleaved_medians(progs, repeats, budget_s=30.0)
        for name in SETTINGS:
            row = {
                "setting": name, "tasks": batch,
                "forward_ms": 1e3 * t[name + ":f"], "forward_ratio": t[name + ":f"] / t["none/exact:f"],
                "metagrad_ms": 1e3 * t[name + ":g"], "metagrad_ratio": t[name + ":g"] / t["none/exact:g"],
            }
            rows.append(row)
            print(f"{name:22s} tasks={batch:4d} forward x{row['forward_ratio']:.2f} metagrad x{row['metagrad_ratio']:.2f}", flush=True)
    print()
    print(table(rows, ["setting", "tasks", "forward_ms", "forward_ratio", "metagrad_ms", "metagrad_ratio"]))
    name = "constrained_step_smoke" if args.smoke else "constrained_step"
    path = write_json(name, {"p": p, "steps": args.steps, "repeats": repeats, "rows": rows}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
