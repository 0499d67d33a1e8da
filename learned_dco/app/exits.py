"""Exit statuses of the ``learned-dco`` command and the mapping from an exception to one
(:func:`classify`): every expected failure is one line and a distinct status. Shared by
:mod:`learned_dco.app.cli` and :mod:`learned_dco.app.launch` (so neither imports the other
for it)."""

from __future__ import annotations

import errno

# --------------------------------------------------------------------------------------
# exit statuses and expected failures
# --------------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_BUG = 1
EXIT_CONFIG = 2
EXIT_FILE = 3
EXIT_DISK_FULL = 4
EXIT_CHECKPOINT = 5
EXIT_EXISTS = 6
EXIT_MEMORY = 7
EXIT_PEER = 8  # multi-process: another process died or hung (learned_dco.app.launch)
EXIT_MISSING_EXTRA = 9  # an optional dependency is not installed (learned_dco.extras)
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_BUG: "internal error: a bug in learned_dco (please report it)",
    EXIT_CONFIG: "bad command line or config (the message names the key)",
    EXIT_FILE: "a file is missing or cannot be read/written (permission denied, ...)",
    EXIT_DISK_FULL: "disk full or quota exceeded while writing",
    EXIT_CHECKPOINT: "bad run directory: unreadable or mismatched checkpoint, corrupt metrics",
    EXIT_EXISTS: "outputs exist: pass --overwrite, another --out, or --resume",
    EXIT_MEMORY: "the config needs more memory than this machine has (the estimate is printed)",
    EXIT_PEER: "multi-process run: another process died, hung or stopped (the message names it)",
    EXIT_MISSING_EXTRA: "an optional dependency is not installed (the message names the pip extra)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); a training run can be resumed",
}

BUG_REPORT = (
    "this is a bug in learned_dco; please report it on the project's issue tracker with the command "
    "line and the output of the same command with --debug"
)


class OutputExists(Exception):
    """Writing would replace earlier results (use --overwrite or another directory)."""


def classify(exc: BaseException) -> tuple[int, str]:
    """``(exit status, one-line message)`` of an exception (:data:`EXIT_CODES`)."""
    from learned_dco.app.config import ConfigError, ResourceError
    from learned_dco.app.runs import RunError
    from learned_dco.extras import MissingExtra
    from learned_dco.meta.checkpoint import CheckpointError
    from learned_dco.meta.distributed import PeerError

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, ResourceError):
        return EXIT_MEMORY, str(exc)
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, (CheckpointError, RunError)):
        return EXIT_CHECKPOINT, str(exc)
    if isinstance(exc, OutputExists):
        return EXIT_EXISTS, str(exc)
    if isinstance(exc, PeerError):
        return EXIT_PEER, str(exc)
    if isinstance(exc, MissingExtra):
        return EXIT_MISSING_EXTRA, str(exc)
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else "?"
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return EXIT_DISK_FULL, f"{where}: {reason} (disk full; free space and resume)"
        return EXIT_FILE, f"{where}: {reason}"
    if isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc)[:2000]:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return EXIT_MEMORY, f"out of memory: {first[:300]}"
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return EXIT_BUG, f"internal error {type(exc).__name__}: {first} -- {BUG_REPORT}"
