r"""Launching ``learned-dco`` on several processes: options, the session and its watchdog.

``learned-dco train CONFIG --coordinator HOST:PORT --num-processes N --process-id I`` runs
one of ``N`` cooperating processes (``--distributed`` instead takes all three from the
cluster's environment: SLURM, Open MPI, Kubernetes, Cloud TPU pods). :func:`session`
wraps a command: it connects the processes (:func:`learned_dco.meta.distributed.initialize`)
before any JAX backend starts and runs a :class:`Watchdog` until the command ends.

Failure handling (every process exits non-zero with one clear line, within a bounded time):

* every process publishes a heartbeat counter in the coordination service's key-value
  store every ``interval`` seconds and watches the others'; a peer whose counter has not
  moved for ``--peer-timeout`` seconds is declared dead, as is the coordination service
  itself (hosted by process 0) once it has not answered for that long;
* a process whose command fails or is interrupted (Ctrl-C, SIGTERM) first publishes a
  *stop* record with its exit status and reason, so the others stop within about one
  ``interval`` with the same status (130 for an interrupt) instead of waiting for the
  timeout;
* the watchdog ends its process with ``os._exit`` -- the main thread may be blocked inside
  a collective that will never complete -- after flushing stdout/stderr (metrics lines and
  checkpoints are already durable: appended line by line, replaced atomically).

JAX's own heartbeat (``jax.distributed``) is set to twice the peer timeout plus 10 s, so
this watchdog's message comes first.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading
import time
from typing import Iterator

from learned_dco.app.exits import EXIT_PEER  # another process died, hung or was lost (the message names it)

PREFIX = "learned_dco/"


def add_options(parser: argparse.ArgumentParser) -> None:
    """The multi-process options of ``train``, ``eval`` and ``reproduce``."""
    g = parser.add_argument_group(
        "multi-process (jax.distributed; see docs/distributed.md)",
        "Run the same command in every process; the task batch is sharded over all processes' devices, "
        "process 0 writes files and prints progress.",
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordination service")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index in [0, N)")
    g.add_argument("--distributed", action="store_true",
                   help="multi-process with coordinator/count/index from the cluster environment "
                   "(SLURM, Open MPI, Kubernetes, TPU pods)")
    g.add_argument("--peer-timeout", type=float, default=60.0, metavar="S",
                   help="seconds without a heartbeat after which another process counts as dead "
                   "(default: %(default)s)")
    g.add_argument("--init-timeout", type=int, default=300, metavar="S",
                   help="seconds to wait for every process to connect (default: %(default)s)")


def requested(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a multi-process run."""
    return bool(getattr(args, "distributed", False) or getattr(args, "coordinator", None)
                or getattr(args, "num_processes", None) or getattr(args, "process_id", None) is not None)


class Watchdog:
    """Heartbeats through the coordination service's key-value store (module docstring).

    Two daemon threads: ``_beat`` talks to the service (its calls may block when the
    service is gone), ``_watch`` only compares clocks, so a dead service is noticed within
    ``timeout`` even while ``_beat`` hangs.
    """

    def __init__(self, client, process_id: int, num_processes: int, timeout: float, command: str,
                 interval: float | None = None, on_exit=os._exit):
        self.client, self.pid, self.n = client, process_id, num_processes
        self.timeout, self.command = float(timeout), command
        self.interval = interval if interval is not None else max(0.2, min(2.0, self.timeout / 10))
        now = time.monotonic()
        self.last_ok = now  # last successful exchange with the service
        self.last_seen = {p: now for p in range(num_processes) if p != process_id}
        self.counters: dict[int, str] = {}
        self.finished: set[int] = set()
        self._stopping = threading.Event()
        self._count = 0
        self._on_exit = on_exit  # os._exit; tests pass a recorder
        self.linger = min(self.timeout, 10.0)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> Watchdog:
        for target in (self._beat, self._watch):
            threading.Thread(target=target, name=f"learned-dco-{target.__name__[1:]}", daemon=True).start()
        return self

    def close(self, finished: bool = True) -> None:
        """Stop watching; with ``finished``, tell the others this process ended normally."""
        self._stopping.set()
        if finished:
            with contextlib.suppress(Exception):
                self.client.key_value_set(f"{PREFIX}done/{self.pid}", "1", allow_overwrite=True)

    def announce_stop(self, code: int, reason: str) -> None:
        """Ask every other process to stop with status ``code`` (first announcement wins)."""
        with contextlib.suppress(Exception):
            self.client.key_value_set(f"{PREFIX}stop/record", f"{code}|{self.pid}|{reason}")

    def leave(self, dead=()) -> None:
        """Acknowledge a stop. Process 0 hosts the coordination service, so it waits (at
        most ``linger`` seconds) for every live process to acknowledge before it exits:
        leaving first would make JAX abort the others with its own fatal error."""
        with contextlib.suppress(Exception):
            self.client.key_value_set(f"{PREFIX}ack/{self.pid}", "1", allow_overwrite=True)
        if self.pid != 0:
            return
        waiting = set(range(1, self.n)) - set(dead)
        deadline = time.monotonic() + self.linger
        while time.monotonic() < deadline:
            try:
                acks = {int(k.rsplit("/", 1)[1]) for k, _ in self.client.key_value_dir_get(f"{PREFIX}ack/")}
            except Exception:  # noqa: BLE001
                return
            if not waiting - acks - self.finished:
                return
            time.sleep(min(self.interval, 0.1))

    # --- threads --------------------------------------------------------------------------
    def _exit(self, code: int, message: str, dead=()) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.announce_stop(code, message)  # no-op if another process announced first
        word = "stopped" if code == 130 else "error"
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        print(f"learned-dco {self.command}: {word}: process {self.pid}: {message}", file=sys.stderr, flush=True)
        self.leave(dead)
        self._on_exit(code)

    def _beat(self) -> None:
        while not self._stopping.is_set():
            try:
                self._count += 1
                self.client.key_value_set(f"{PREFIX}beat/{self.pid}", str(self._count), allow_overwrite=True)
                beats = dict(self.client.key_value_dir_get(f"{PREFIX}beat/"))
                done = dict(self.client.key_value_dir_get(f"{PREFIX}done/"))
                stop = dict(self.client.key_value_dir_get(f"{PREFIX}stop/"))
            except Exception:  # noqa: BLE001 -- the service is unreachable; _watch times it out
                time.sleep(self.interval)
                continue
            now = time.monotonic()
            self.last_ok = now
            self.finished = {int(k.rsplit("/", 1)[1]) for k in done}
            for key, value in beats.items():
                p = int(key.rsplit("/", 1)[1])
                if p != self.pid and self.counters.get(p) != value:
                    self.counters[p] = value
                    self.last_seen[p] = now
            if stop and not self._stopping.is_set():
                code, who, reason = next(iter(stop.values())).split("|", 2)
                if int(who) != self.pid:
                    self._exit(int(code), f"process {who} stopped the run ({reason}); stopping too")
            time.sleep(self.interval)

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval):
            now = time.monotonic()
            if now - self.last_ok > self.timeout:
                self._exit(EXIT_PEER, f"lost contact with the coordination service (process 0) for "
                           f"{now - self.last_ok:.0f} s > --peer-timeout {self.timeout:g} s: process 0 died or the "
                           f"network failed")
            for p, seen in self.last_seen.items():
                if p not in self.finished and now - seen > self.timeout:
                    self._exit(EXIT_PEER, f"process {p} sent no heartbeat for {now - seen:.0f} s > --peer-timeout "
                               f"{self.timeout:g} s: it died, hung or lost its network; stopping (resume every "
                               f"process with --resume)", dead=(p,))


def _hard_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class Job:
    """What :func:`session` yields: :meth:`exit_status` records the command's status."""

    def __init__(self, watchdog: Watchdog | None = None):
        self.watchdog, self.code = watchdog, 0

    def exit_status(self, code: int) -> int:
        self.code = code
        return code


@contextlib.contextmanager
def session(args: argparse.Namespace, command: str) -> Iterator[Job]:
    """Run a command as one process of a multi-process job (a plain :class:`Job` unless
    :func:`requested`).

    On success every process waits for the others at a barrier, then disconnects. On an
    exception or a non-zero status the others are told to stop (an exception then
    propagates to the CLI, which prints it and returns its status), and the process ends
    with ``os._exit`` so that no shutdown barrier waits for peers that are gone.
    """
    if not requested(args):
        yield Job()
        return
    from learned_dco.app.config import ConfigError
    from learned_dco.meta import distributed

    timeout = float(args.peer_timeout)
    if not timeout > 0:
        raise ConfigError(f"--peer-timeout: must be > 0, got {args.peer_timeout}")
    options = ("--coordinator", args.coordinator), ("--num-processes", args.num_processes), ("--process-id", args.process_id)
    missing = [name for name, value in options if value is None]
    if not getattr(args, "distributed", False) and missing:
        raise ConfigError(f"{missing[0]}: required for a multi-process run (give --coordinator, --num-processes "
                          f"and --process-id, or --distributed to read them from the cluster environment)")
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               init_timeout=args.init_timeout, heartbeat_timeout=int(2 * timeout + 10))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    import jax

    dog = Watchdog(distributed.client(), jax.process_index(), jax.process_count(), timeout, command).start()
    job = Job(dog)
    try:
        yield job
    except BaseException as e:
        from learned_dco.app.exits import classify

        code, message = classify(e)
        if isinstance(e, jax.errors.JaxRuntimeError):  # a collective failed: a peer is gone
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            code, message = EXIT_PEER, f"a cross-process operation failed; another process probably died ({first})"
            _fail(dog, code, message)
            raise distributed.PeerError(message) from e
        _fail(dog, code, message)
        raise
    if job.code:
        _fail(dog, job.code, "interrupted" if job.code == 130 else f"exit status {job.code}")
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("learned_dco: command finished")
    dog.close()
    jax.distributed.shutdown()


def _fail(dog: Watchdog, code: int, message: str) -> None:
    dog.announce_stop(code, f"{'interrupted' if code == 130 else 'failed'}: {message}")
    dog.close(finished=False)
    dog.leave()
    atexit.register(_hard_exit, code)  # after the CLI prints the error: skip the shutdown barrier
