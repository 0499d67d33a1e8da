"""Per-step cost of the DCO rules: the QP backends against the closed form, same run.

For p = 100 parameters (a least-squares task, X 100x100), one task and a vmapped batch of
100 tasks, we time (jitted) the forward step and the meta-gradient (gradient of the loss
after ``--steps`` inner steps with respect to the meta-parameters) of DCOG, DCOGD and DCOM
for each backend, next to the closed form computed in the same process, and report
ratios. Targets (issue 2): default backend meta-gradient <= 1.3x closed form for DCOG/DCOM
and <= 1.5x for DCOGD.

    python benchmarks/qp_step.py [--repeats 20] [--steps 3] [--quick]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import learned_dco as ldco
from benchmarks.common import interleaved_medians, table, write_json

P = 100
BACKENDS = {"exact": ("exact", None), "eqqp": ("eqqp", None), "exact+box": ("exact", 0.05),
            "osqp+box": ("osqp", 0.05), "cdqp+box": ("cdqp", 0.05)}
TARGETS = {"dcog": 1.3, "dcom": 1.3, "dcogd": 1.5}


def _task(key):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (P, P)) / jnp.sqrt(P), jax.random.normal(ky, (P,))


def _loss(theta, task):
    X, y = task
    return jnp.sum((X @ theta - y) ** 2)


def _meta(rule):
    if rule == "dcog":
        return {"lam": jnp.full((P,), 2.0)}
    if rule == "dcogd":
        return {"B": 0.25 * jnp.eye(P)}
    return {"lam": jnp.full((P,), 2.0), "m": jnp.full((P,), 0.5)}


def _library_step(rule, solver, radius):
    def build(meta):
        kw = dict(solver=solver, radius=radius, max_consecutive_nonfinite=None)
        if rule == "dcog":
            return ldco.dcog(meta["lam"], **kw)
        if rule == "dcogd":
            return ldco.dcogd(meta["B"], **kw)
        return ldco.dcom(meta["lam"], meta["m"], **kw)

    def unroll(meta, theta, task, steps):
        tx = build(meta)
        state = tx.init(theta)

        def body(carry, _):
            theta, state = carry
            u, state = tx.update(jax.grad(_loss)(theta, task), state, theta)
            return (theta + u, state), None

        return jax.lax.scan(body, (theta, state), length=steps)[0][0]

    return unroll


def _closed_form_step(rule, radius):
    clip = (lambda d: d) if radius is None else (lambda d: jnp.clip(d, -radius, radius))

    def unroll(meta, theta, task, steps):
        def body(carry, _):
            theta, s = carry
            g = jax.grad(_loss)(theta, task)
            if rule == "dcog":
                d = clip(g / meta["lam"] ** 2)
            elif rule == "dcogd":
                d = clip(meta["B"] @ g)
            else:
                s = meta["m"] * g + (1 - meta["m"]) * s
                d = clip(s / meta["lam"] ** 2)
            return (theta - d, s), None

        return jax.lax.scan(body, (theta, jnp.zeros_like(theta)), length=steps)[0][0]

    return unroll


def _programs(unroll, meta, theta, task, steps, batched):
    """Jitted forward and meta-gradient for one task or a vmapped batch (shared meta)."""
    def forward(meta, theta, task):
        return unroll(meta, theta, task, steps)

    def meta_loss(meta, theta, task):
        return _loss(unroll(meta, theta, task, steps), task)

    if batched:
        fwd = jax.jit(jax.vmap(forward, in_axes=(None, 0, 0)))
        grad = jax.jit(jax.grad(lambda m, th, tk: jnp.mean(jax.vmap(meta_loss, in_axes=(None, 0, 0))(m, th, tk))))
    else:
        fwd, grad = jax.jit(forward), jax.jit(jax.grad(meta_loss))
    return (lambda: fwd(meta, theta, task)), (lambda: grad(meta, theta, task))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="default backend only, fewer repeats")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    backends = {"exact": BACKENDS["exact"]} if args.quick else BACKENDS
    repeats = 5 if args.quick else args.repeats

    keys = jax.random.split(jax.random.PRNGKey(0), args.batch)
    tasks = jax.vmap(_task)(keys)
    thetas = jax.random.normal(jax.random.PRNGKey(1), (args.batch, P))
    rows = []
    for rule in ["dcog", "dcogd", "dcom"]:
        meta = _meta(rule)
        for batched in (False, True):
            task = tasks if batched else jax.tree.map(lambda x: x[0], tasks)
            theta = thetas if batched else thetas[0]
            for name, (solver, radius) in backends.items():
                lib_f, lib_g = _programs(_library_step(rule, solver, radius), meta, theta, task, args.steps, batched)
                ref_f, ref_g = _programs(_closed_form_step(rule, radius), meta, theta, task, args.steps, batched)
                t = interleaved_medians({"lib_f": lib_f, "ref_f": ref_f, "lib_g": lib_g, "ref_g": ref_g}, repeats)
                err = float(jnp.max(jnp.abs(lib_f() - ref_f())))
                row = {
                    "rule": rule, "backend": name, "tasks": args.batch if batched else 1,
                    "forward_ms": 1e3 * t["lib_f"], "closed_forward_ms": 1e3 * t["ref_f"],
                    "forward_ratio": t["lib_f"] / t["ref_f"],
                    "metagrad_ms": 1e3 * t["lib_g"], "closed_metagrad_ms": 1e3 * t["ref_g"],
                    "metagrad_ratio": t["lib_g"] / t["ref_g"], "max_abs_diff": err,
                }
                if name == "exact":
                    row["target"] = TARGETS[rule]
                    row["meets_target"] = row["metagrad_ratio"] <= TARGETS[rule]
                rows.append(row)
                print(f"{rule:6s} {name:10s} tasks={row['tasks']:4d} forward x{row['forward_ratio']:.2f} "
                      f"metagrad x{row['metagrad_ratio']:.2f} ({row['metagrad_ms']:.3f} ms vs {row['closed_metagrad_ms']:.3f} ms)",
                      flush=True)
    cols = ["rule", "backend", "tasks", "forward_ms", "forward_ratio", "metagrad_ms", "closed_metagrad_ms", "metagrad_ratio", "max_abs_diff"]
    print()
    print(table(rows, cols))
    path = write_json("qp_step", {"p": P, "steps": args.steps, "repeats": repeats, "rows": rows}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
