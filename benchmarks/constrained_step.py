"""Cost of a constrained DCO step against the unconstrained one, per solver, same run.

A least-squares task (p parameters, X p x p); the step is DCOG's QP
``min g.d + lam^2/2 ||d||^2`` (:func:`learned_dco.optimizers.general.general_dco`) with

* ``none/exact``: no constraints (the reference, the closed form's speed);
* ``nonneg/exact``, ``nonneg/osqp``, ``nonneg/cdqp``: ``theta >= 0`` as a box on the step;
* ``simplex/osqp``: ``theta`` on the probability simplex (one equality row, p inequality
  rows; the general OSQP path with the active-set KKT backward);
* ``simplex/simplex_exact``: the same set as one row of ones and a lower bound, solved by
  the exact sort-based :class:`learned_dco.qp.SimplexExact`;
* ``simplex/ipm``: the general rows through the interior-point backend :class:`qp.IPM`;
* ``general/osqp``, ``general/ipm``: the general set of the DCO paper's eq. (5), 2 equality
  and 10 inequality rows on theta (:func:`general_rows`), through OSQP and the IPM.

For one task and a vmapped batch, the jitted forward (``--steps`` inner steps) and the
meta-gradient of the final loss w.r.t. ``lam`` are timed interleaved with the reference;
ratios (median over rounds of the per-round ratio, with its min and max) are printed and
written as JSON (the user defaults: guard on).

    python benchmarks/constrained_step.py [--quick | --smoke] [--out DIR]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import statistics

from benchmarks.common import interleaved_samples, table, unroll_steps, write_json
from learned_dco import qp
from learned_dco.optimizers import StepQP, general_dco
from learned_dco.qp import SimplexExact

SETTINGS = {
    "none/exact": (None, "exact"),
    "nonneg/exact": ("nonneg", "exact"),
    "nonneg/osqp": ("nonneg", "osqp"),
    "nonneg/cdqp": ("nonneg", "cdqp"),
    "simplex/osqp": ("simplex", "osqp"),
    "simplex/simplex_exact": ("simplex_lo", SimplexExact()),
    "simplex/ipm": ("simplex", qp.IPM()),
    "general/osqp": ("general", "osqp"),
    "general/ipm": ("general", qp.IPM()),
}

#: The general set of the DCO paper's eq. (5) at p = 20: 2 equality and 10 inequality rows
#: on theta, fixed across tasks, with theta_0 = 1/p strictly inside (slack 0.1 to 0.6).
N_EQ, N_INEQ = 2, 10


def general_rows(p: int, dtype=jnp.float32):
    r"""``(A, G, h_theta)`` of :math:`\{\theta: A\theta = A\theta_0,\ G\theta \le h\}`."""
    kA, kG, kh = jax.random.split(jax.random.PRNGKey(7), 3)
    A = jax.random.normal(kA, (N_EQ, p), dtype)
    G = jax.random.normal(kG, (N_INEQ, p), dtype)
    theta0 = jnp.full((p,), 1.0 / p, dtype)
    return A, G, G @ theta0 + jax.random.uniform(kh, (N_INEQ,), dtype, 0.1, 0.6)


def _step(kind):
    def step(meta, g, theta, state):
        Q = qp.ScaledIdentity(meta ** 2)
        if kind is None:
            return StepQP(Q, g), state
        if kind == "nonneg":
            return StepQP(Q, g, lo=-theta), state
        n = theta.size
        if kind == "general":
            A, G, h = general_rows(n, theta.dtype)
            return StepQP(Q, g, A=A, b=jnp.zeros(N_EQ, theta.dtype), G=G, h=h - G @ theta), state
        if kind == "simplex_lo":
            return StepQP(Q, g, A=jnp.ones((1, n), theta.dtype), b=jnp.zeros(1, theta.dtype), lo=-theta), state
        return StepQP(Q, g, A=jnp.ones((1, n), theta.dtype), b=jnp.zeros(1, theta.dtype), G=-jnp.eye(n, dtype=theta.dtype), h=theta), state

    return step


def _loss(theta, task):
    X, y = task
    return jnp.sum((X @ theta - y) ** 2)


def _unroll(kind, solver, steps):
    constraints = {None: (), "nonneg": ("box",), "simplex": ("eq", "ineq"), "simplex_lo": ("box", "eq"), "general": ("eq", "ineq")}[kind]

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
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                    help="settings to time (none/exact, the reference, is always timed)")
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
    settings = {name: SETTINGS[name] for name in ["none/exact"] + [n for n in args.settings if n != "none/exact"]}
    rows = []
    for batch in batches:
        task, theta = (X[:batch], y[:batch]), theta0[:batch]
        progs = {}
        for name, (kind, solver) in settings.items():
            run = _unroll(kind, solver, args.steps)
            fwd = jax.jit(jax.vmap(run, in_axes=(None, 0, 0)))
            grad = jax.jit(jax.grad(lambda l, th, tk, run=run: jnp.mean(jax.vmap(lambda a, b: _loss(run(l, a, b), b))(th, tk))))
            progs[name + ":f"] = (lambda f=fwd, task=task, theta=theta: f(lam, theta, task))
            progs[name + ":g"] = (lambda g=grad, task=task, theta=theta: g(lam, theta, task))
        samples = interleaved_samples(progs, repeats, budget_s=30.0)
        t = {k: statistics.median(v) for k, v in samples.items()}
        for name in settings:
            row = {"setting": name, "tasks": batch, "rounds": len(samples[name + ":f"])}
            for part, label in (("f", "forward"), ("g", "metagrad")):
                ratios = [a / r for a, r in zip(samples[f"{name}:{part}"], samples[f"none/exact:{part}"])]
                row[f"{label}_ms"] = 1e3 * t[f"{name}:{part}"]
                row[f"{label}_ratio"] = statistics.median(ratios)
                row[f"{label}_ratio_min"], row[f"{label}_ratio_max"] = min(ratios), max(ratios)
            rows.append(row)
            print(f"{name:22s} tasks={batch:4d} forward x{row['forward_ratio']:.2f} "
                  f"[{row['forward_ratio_min']:.2f}, {row['forward_ratio_max']:.2f}] metagrad x{row['metagrad_ratio']:.2f} "
                  f"[{row['metagrad_ratio_min']:.2f}, {row['metagrad_ratio_max']:.2f}]", flush=True)
    print()
    print(table(rows, ["setting", "tasks", "rounds", "forward_ms", "forward_ratio", "forward_ratio_min", "forward_ratio_max",
                       "metagrad_ms", "metagrad_ratio", "metagrad_ratio_min", "metagrad_ratio_max"]))
    name = "constrained_step_smoke" if args.smoke else "constrained_step"
    machine = "2-core CPU shared with other jobs (noisy)"
    path = write_json(name, {"p": p, "steps": args.steps, "repeats": repeats, "general_rows": [N_EQ, N_INEQ],
                             "machine": machine, "rows": rows}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
