"""One ``duro dev`` per data directory and per port: a second one refuses at once.

Without this, a second ``duro dev`` on the same ports found the first one's etcd answering its
health check, took it for its own, and started nodes that joined the running cluster and
overwrote its published bindings. Before it starts anything, ``duro dev``

1. takes an exclusive ``flock`` on ``<data dir>/dev.lock`` (held until it exits, released by the
   kernel even on SIGKILL; the file holds the owner's pid, for the message), and
2. checks that each port it was told to use (etcd's client port, the first edge's HTTP, Gateway
   and admin ports) has no listener on 127.0.0.1.

Either failure is a :class:`DevBusyError` whose message says who holds what and which flags
choose others. The ports the cluster picks itself (``free_port``) need no check. What it does not
do: a port taken between the check and the child's bind still fails that child's start (with its
log), as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

__all__ = ["DevBusyError", "DevLock", "claim_data_dir", "check_ports", "port_taken"]


class DevBusyError(RuntimeError):
    """Another ``duro dev`` (or another program) holds what this one needs."""


class DevLock:
    """The held lock on a data directory; :meth:`release` (or process exit) lets it go."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None


def claim_data_dir(data_dir: Path) -> DevLock:
    """Lock ``data_dir`` for this process, or :class:`DevBusyError` naming the holder's pid."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "dev.lock"
    handle = open(path, "a+")  # noqa: SIM115 - kept open while the lock is held
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            handle.close()
            raise
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise DevBusyError(
            f"another duro dev (pid {holder}) is running on the data directory {data_dir}: use "
            f"that one, stop it, or give this one another --data-dir and other ports "
            f"(--base-port, --http-port)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return DevLock(path, handle)


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` (a bind with SO_REUSEADDR fails only then, not
    for connections of a server that has just stopped, in TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(wanted: list[tuple[int, str, str]]) -> None:
    """``wanted``: (port, what it is for, the flag that changes it); :class:`DevBusyError` listing
    every one already taken."""
    taken = [(p, what, flag) for p, what, flag in wanted if p and port_taken(p)]
    if taken:
        listed = ", ".join(f"{p} ({what})" for p, what, _ in taken)
        flags = " and ".join(sorted({flag for _, _, flag in taken}))
        raise DevBusyError(
            f"port{'s' if len(taken) > 1 else ''} {listed} already in use on 127.0.0.1 (another "
            f"duro dev? `duro status` in its directory shows it): stop it, or choose free ports "
            f"with {flags}")
