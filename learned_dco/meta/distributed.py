r"""Meta-training over several processes (hosts) on JAX's multi-controller runtime.

Every process runs the same program (``jax.distributed.initialize`` connects them); the
trainer's 1-D ``Mesh`` over ``jax.devices()`` then spans *all* processes' devices:

* **sharded** (leading task axis, split over every device of every process): the task
  batch of a meta-step and the estimator's persistent per-task states (inner parameters,
  inner optimizer states, PES accumulators). A process materialises only its rows: the
  jitted step samples and unrolls tasks under a sharding constraint, so each device
  computes its slice of the global batch;
* **replicated** (identical on every device): the meta-parameters, the meta-optimizer
  state, the step counter, the base key, the task pool and every metric (the mean over
  tasks is an all-reduce inside the jitted step).

Task ``i`` of meta-step ``k`` draws its randomness from ``split(fold_in(key, k), N)[i]``
with the threefry implementation in its partitionable form (``jax_threefry_partitionable``,
the default, switched on by :func:`initialize`), so its bits depend on (seed, meta-step,
global task index) only and never on how the batch is split: 1 process x 1 device,
1 x 4 and 2 x 2 compute the same numbers up to the order of the floating-point sum over
tasks (an all-reduce across devices instead of one sum).

Checkpoints are written once, by the primary process (process 0), after gathering the
per-task shards (:func:`to_host`, a ``process_allgather``); a restore is read by the
primary and broadcast to all processes (:func:`broadcast_bytes`), then placed onto each
process's shards (:func:`place`). No shared file system is needed, and the file is the
same whatever the process count, so a run may resume on a different number of processes or
devices (``num_tasks`` must divide evenly over the new device count; the trainer says so
otherwise).

With one process every function here is the plain single-process operation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS")


class PeerError(RuntimeError):
    """Another process of a multi-process run died, hung or stopped (the message says which)."""


# --------------------------------------------------------------------------------------------
# the runtime
# --------------------------------------------------------------------------------------------


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    init_timeout: int = 300,
    heartbeat_timeout: int = 100,
    local_device_ids=None,
) -> None:
    """Connect this process to the others (``jax.distributed.initialize``); call it before
    anything touches a JAX backend.

    With no arguments JAX reads the cluster's environment (SLURM, Open MPI, Kubernetes, Cloud
    TPU pods). On CPU, cross-process collectives go through gloo. Threefry is put in its
    partitionable form so random bits do not depend on sharding (module docstring).
    """
    if coordinator is not None and (":" not in coordinator or not coordinator.rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"--coordinator: expected HOST:PORT, got {coordinator!r}")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes: must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id: must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_threefry_partitionable", True)
    jax.distributed.initialize(
        coordinator, num_processes, process_id, local_device_ids=local_device_ids,
        initialization_timeout=init_timeout, heartbeat_timeout_seconds=heartbeat_timeout,
        shutdown_timeout_seconds=max(10, heartbeat_timeout),
    )


def is_multiprocess() -> bool:
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes files and prints progress). Does not
    initialise a backend when no distributed runtime is running."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def client():
    """The distributed runtime's key-value/barrier client (``None`` in a single process)."""
    from jax._src import distributed as _dist  # the only handle JAX offers on its client

    return _dist.global_state.client


# --------------------------------------------------------------------------------------------
# moving data between processes
# --------------------------------------------------------------------------------------------


def to_host(tree: Any) -> Any:
    """The whole (global) value of every leaf as numpy, on every process.

    Replicated leaves are read locally; leaves sharded over other processes' devices are
    gathered with one ``process_allgather`` -- a collective: every process must call this
    with the same structure.
    """
    leaves, treedef = jax.tree.flatten(tree)
    out: list[Any] = [None] * len(leaves)
    remote = []
    for i, x in enumerate(leaves):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            remote.append(i)
        else:
            out[i] = np.asarray(x)
    if remote:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather([leaves[i] for i in remote], tiled=True)
        for i, g in zip(remote, gathered):
            out[i] = np.asarray(g)
    return jax.tree.unflatten(treedef, out)


def place(host: Any, shardings: Any) -> Any:
    """Put full (global) numpy values, identical on every process, onto ``shardings``; each
    process builds only the shards its devices hold."""
    if not is_multiprocess():
        return jax.device_put(host, shardings)

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, host, shardings)


def broadcast_bytes(data: bytes | None) -> bytes:
    """``data`` from the primary process, on every process (a collective over all devices;
    other processes pass ``None``)."""
    if not is_multiprocess():
        assert data is not None
        return data
    from jax.experimental import multihost_utils

    size = len(data) if is_primary() else 0
    n = int(multihost_utils.broadcast_one_to_all(np.array([size], np.int32))[0])
    padded = max(64, 1 << (n - 1).bit_length())  # bucketed: few distinct shapes to compile
    buf = np.zeros(padded, np.uint8)
    if is_primary():
        buf[:n] = np.frombuffer(data, np.uint8)
    return multihost_utils.broadcast_one_to_all(buf)[:n].tobytes()


def from_primary(fn: Callable[[], Any], errors: tuple[type[BaseException], ...] = ()) -> Any:
    """Evaluate ``fn()`` (JSON-able result) on the primary process only and return its value
    on every process, e.g. whether a file exists on the primary's disk, or a run directory
    named from the primary's clock. If ``fn`` raises, every process raises: the same class
    if it is one of ``errors``, else :class:`PeerError`, with the primary's message."""
    if not is_multiprocess():
        return fn()
    caught = None
    payload = b""
    if is_primary():
        try:
            payload = json.dumps({"value": fn()}).encode()
        except BaseException as e:  # noqa: BLE001 -- shipped to the other processes, re-raised below
            caught = e
            kind = next((c.__name__ for c in errors if isinstance(e, c)), "")
            payload = json.dumps({"error": kind, "message": str(e)}).encode()
    got = json.loads(broadcast_bytes(payload if is_primary() else None))
    if caught is not None:
        raise caught
    if "error" in got:
        cls = next((c for c in errors if c.__name__ == got["error"]), None)
        if cls is not None:
            raise cls(got["message"])
        raise PeerError(f"process 0 failed: {got['message']}")
    return got["value"]


# --------------------------------------------------------------------------------------------
# checkpoints across hosts
# --------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, state: Any, fingerprint: str | None = None) -> None:
    """Gather ``state`` (collective) and write one checkpoint generation from the primary
    (:func:`learned_dco.meta.checkpoint.save_generation`)."""
    from learned_dco.meta import checkpoint

    host = to_host(state)
    if is_primary():
        checkpoint.save_generation(path, host, fingerprint)


def restore_checkpoint(path: str | os.PathLike, template: Any, fingerprint: str | None = None, warn=None) -> Any:
    """The newest readable checkpoint generation at ``path`` (read by the primary, broadcast
    to all) placed with the shardings of ``template`` (a freshly initialised state, whose
    structure, shapes and dtypes the checkpoint must match; every check of
    :func:`learned_dco.meta.checkpoint.restore` applies, and its error is raised on every
    process)."""
    from flax import serialization

    from learned_dco.meta import checkpoint

    shardings = jax.tree.map(lambda x: x.sharding, template)
    host_template = to_host(template)
    if not is_multiprocess():
        return jax.device_put(checkpoint.restore_latest(path, host_template, fingerprint, warn=warn), shardings)
    data = None
    error: BaseException | None = None
    if is_primary():
        try:
            data = serialization.to_bytes(checkpoint.restore_latest(path, host_template, fingerprint, warn=warn))
        except checkpoint.CheckpointError as e:
            error = e
    message = from_primary(lambda: str(error) if error is not None else "")
    if message:
        raise checkpoint.CheckpointError(message)
    host = serialization.from_bytes(host_template, broadcast_bytes(data))
    return place(host, shardings)


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether the primary sees a checkpoint generation at ``path`` (same answer everywhere)."""
    from learned_dco.meta import checkpoint

    path = Path(path)
    return bool(from_primary(lambda: path.exists() or checkpoint.previous(path).exists()))


# --------------------------------------------------------------------------------------------
# sharding work over every process's devices (evaluation, sweeps)
# --------------------------------------------------------------------------------------------


def global_mesh(axis: str = "tasks") -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process."""
    return jax.sharding.Mesh(np.array(jax.devices()), (axis,))


def shard_tasks(tasks: Any, mesh: jax.sharding.Mesh | None = None) -> Any:
    """Split a batch of tasks (leading axis) over ``mesh`` (default :func:`global_mesh`)
    so that a jitted, vmapped computation on it runs on every device; a batch that does not
    divide evenly over the devices stays replicated (each device then computes it all)."""
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = mesh or global_mesh()
    n = jax.tree.leaves(tasks)[0].shape[0]
    spec = PartitionSpec(mesh.axis_names[0]) if n % mesh.size == 0 else PartitionSpec()
    host = jax.tree.map(np.asarray, tasks)
    return place(host, jax.tree.map(lambda _: NamedSharding(mesh, spec), host))
