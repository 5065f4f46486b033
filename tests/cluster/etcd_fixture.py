"""A real etcd for tests, on free 127.0.0.1 ports in a temporary directory.

Import the plain helpers or the fixtures::

    from tests.cluster.etcd_fixture import etcd, etcd_client, running_etcd, assert_eventually

``running_etcd`` is an async context manager usable outside pytest; the ``etcd`` fixture wraps it
and, at teardown, checks that the etcd process is really gone (no leaked children).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client

from duro._etcd import EtcdProcess

__all__ = [
    "assert_eventually",
    "etcd",
    "etcd_client",
    "pid_alive",
    "running_etcd",
]


def pid_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@contextlib.asynccontextmanager
async def running_etcd(tmp: str | os.PathLike[str], **kwargs: object) -> AsyncIterator[EtcdProcess]:
    """Start etcd in ``tmp/etcd`` and stop it (and check it is gone) on exit."""
    proc = EtcdProcess(Path(tmp) / "etcd" / "data", log_path=Path(tmp) / "etcd" / "etcd.log",
                       unsafe_no_fsync=True, **kwargs)  # type: ignore[arg-type]
    await proc.start_async()
    pid = proc.pid
    try:
        yield proc
    finally:
        await proc.stop_async()
        assert pid is not None and not pid_alive(pid), f"etcd pid {pid} still alive"


async def assert_eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition not reached",
) -> None:
    """Poll *predicate* (sync or async) until true, or fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {timeout}s)")
        await asyncio.sleep(interval)


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdProcess]:
    """A fresh etcd per test."""
    async with running_etcd(tmp_path) as proc:
        yield proc


@pytest.fixture
async def etcd_client(etcd: EtcdProcess) -> AsyncIterator[Etcd3Client]:
    async with Etcd3Client([etcd.endpoint]) as client:
        yield client
