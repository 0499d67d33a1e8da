"""Per-step cost of the DCO rules: the QP backends against the closed form, same run.

For p = 100 parameters (a least-squares task, X 100x100), one task and a vmapped batch of
100 tasks, we time (jitted) the forward step and the meta-gradient (gradient of the loss
after ``--steps`` inner steps with respect to the meta-parameters) of DCOG, DCOGD and DCOM
for each backend, next to the closed form computed in the same process, and report
ratios. Every backend is measured with the options a user gets by default (the non-finite
guard on: ``max_consecutive_nonfinite=10``); the default backend is also measured with the
guard off beside it (``exact/noguard``). Targets: the default meta-gradient of
a batch of 100 tasks sharing the meta-parameters <= 1.1x the closed form for DCOG/DCOM and
<= 1.5x for DCOGD.

    python benchmarks/qp_step.py [--repeats 20] [--steps 3] [--quick | --smoke] [--out DIR]

``--quick``: default backend (guarded and unguarded) only, fewer repeats; ``--smoke``: a
tiny problem (p = 8, batch 4, 2 repeats) that only checks the benchmark runs.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import learned_dco as ldco
from benchmarks.common import interleaved_medians, table, unroll_steps, write_json

P = 100
DEFAULT_GUARD = 10  # max_consecutive_nonfinite, the builders' default
# name -> (solver, trust-region radius, max_consecutive_nonfinite)
BACKENDS = {"exact": ("exact", None, DEFAULT_GUARD), "exact/noguard": ("exact", None, None),
            "eqqp": ("eqqp", None, DEFAULT_GUARD), "exact+box": ("exact", 0.05, DEFAULT_GUARD),
            "osqp+box": ("osqp", 0.05, DEFAULT_GUARD), "cdqp+box": ("cdqp", 0.05, DEFAULT_GUARD),
            "exact/optax-guard": ("exact", None, "optax")}  # the previous guard, for comparison
TARGETS = {"dcog": 1.1, "dcom": 1.1, "dcogd": 1.5}  # default backend, batch of tasks


def _task(key, p=P):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (p, p)) / jnp.sqrt(p), jax.random.normal(ky, (p,))


def _loss(theta, task):
    X, y = task
    return jnp.sum((X @ theta - y) ** 2)


def _meta(rule, p=P):
    if rule == "dcog":
        return {"lam": jnp.full((p,), 2.0)}
    if rule == "dcogd":
        return {"B": 0.25 * jnp.eye(p)}
    return {"lam": jnp.full((p,), 2.0), "m": jnp.full((p,), 0.5)}


def _library_step(rule, solver, radius, guard):
    """``guard``: max_consecutive_nonfinite, or ``"optax"`` for ``optax.apply_if_finite``
    (a ``lax.cond``) around the unguarded rule."""
    def build(meta):
        kw = dict(solver=solver, radius=radius, max_consecutive_nonfinite=None if guard == "optax" else guard)
        if rule == "dcog":
            tx = ldco.dcog_transform(meta["lam"], **kw)
        elif rule == "dcogd":
            tx = ldco.dcogd_transform(meta["B"], **kw)
        else:
            tx = ldco.dcom_transform(meta["lam"], meta["m"], **kw)
        return optax.apply_if_finite(tx, DEFAULT_GUARD) if guard == "optax" else tx

    def unroll(meta, theta, task, steps):
        return unroll_steps(build(meta), _loss, theta, task, steps)

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
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="default backend (guard on and off) only, fewer repeats")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, checks that the benchmark runs")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    p, batch, repeats = P, args.batch, args.repeats
    backends = BACKENDS
    if args.quick or args.smoke:
        backends = {k: BACKENDS[k] for k in ("exact", "exact/noguard", "exact/optax-guard")}
        repeats = 15
    if args.smoke:
        p, batch, repeats = 8, 4, 2
        backends = {k: BACKENDS[k] for k in ("exact", "exact+box")}

    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    tasks = jax.vmap(lambda k: _task(k, p))(keys)
    thetas = jax.random.normal(jax.random.PRNGKey(1), (batch, p))
    rows = []
    for rule in ["dcog", "dcogd", "dcom"]:
        meta = _meta(rule, p)
        for batched in (False, True):
            task = tasks if batched else jax.tree.map(lambda x: x[0], tasks)
            theta = thetas if batched else thetas[0]
            for name, (solver, radius, guard) in backends.items():
                lib_f, lib_g = _programs(_library_step(rule, solver, radius, guard), meta, theta, task, args.steps, batched)
                ref_f, ref_g = _programs(_closed_form_step(rule, radius), meta, theta, task, args.steps, batched)
                t = interleaved_medians({"lib_f": lib_f, "ref_f": ref_f, "lib_g": lib_g, "ref_g": ref_g}, repeats)
                err = float(jnp.max(jnp.abs(lib_f() - ref_f())))
                row = {
                    "rule": rule, "backend": name, "tasks": batch if batched else 1,
                    "max_consecutive_nonfinite": guard, "user_default": name == "exact",
                    "forward_ms": 1e3 * t["lib_f"], "closed_forward_ms": 1e3 * t["ref_f"],
                    "forward_ratio": t["lib_f"] / t["ref_f"],
                    "metagrad_ms": 1e3 * t["lib_g"], "closed_metagrad_ms": 1e3 * t["ref_g"],
                    "metagrad_ratio": t["lib_g"] / t["ref_g"], "max_abs_diff": err,
                }
                if name == "exact" and batched:
                    row["target"] = TARGETS[rule]
                    row["meets_target"] = row["metagrad_ratio"] <= TARGETS[rule]
                rows.append(row)
                print(f"{rule:6s} {name:10s} tasks={row['tasks']:4d} forward x{row['forward_ratio']:.2f} "
                      f"metagrad x{row['metagrad_ratio']:.2f} ({row['metagrad_ms']:.3f} ms vs {row['closed_metagrad_ms']:.3f} ms)",
                      flush=True)
    cols = ["rule", "backend", "tasks", "forward_ms", "forward_ratio", "metagrad_ms", "closed_metagrad_ms", "metagrad_ratio", "max_abs_diff"]
    print()
    print(table(rows, cols))
    name = "qp_step_smoke" if args.smoke else "qp_step"
    path = write_json(name, {"p": p, "batch": batch, "steps": args.steps, "repeats": repeats, "rows": rows}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
