"""Writers that append unique ids to journal objects (tests/cluster/apps/journal) while a test
breaks the cluster, recording every operation in a :class:`~tests.helpers.history.History`."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from duro.errors import DuroError, FencedError
from tests.helpers.history import History

__all__ = ["Appenders", "final_logs"]


class Appenders:
    """``workers`` tasks, each appending to the objects in turn (one call at a time each).

    ``pad`` makes write ids that many characters long (larger groups: snapshots of several
    chunks). Errors are recorded: :class:`FencedError` (the write was refused before it was cut)
    as definitely failed, everything else as unknown (it may have executed).
    """

    def __init__(self, client: Any, names: list[str], history: History, *, workers: int = 4,
                 pad: int = 0, pause: float = 0.0, binding: str = "JOURNAL") -> None:
        self.client = client
        self.names = names
        self.history = history
        self.workers = workers
        self.pad = pad
        self.pause = pause
        self.binding = binding
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count()
        self.latencies: list[tuple[float, float]] = []  # (completed, seconds) of acked appends

    async def __aenter__(self) -> Appenders:
        self._tasks = [asyncio.ensure_future(self._run(w)) for w in range(self.workers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, worker: int) -> None:
        ns = self.client.namespace(self.binding)
        i = worker
        while not self._stop.is_set():
            name = self.names[i % len(self.names)]
            i += 1
            wid = f"w{worker}-{next(self._ids)}"
            if self.pad:
                wid = wid.ljust(self.pad, ".")
            op = self.history.invoke(name, "append", wid)
            try:
                n = await ns.get_by_name(name).append(wid)
            except FencedError as exc:
                self.history.fail(op, exc, definite=True)
                await asyncio.sleep(0.05)
            except DuroError as exc:
                self.history.fail(op, exc)
                await asyncio.sleep(0.05)
            else:
                self.history.ok(op, n)
                self.latencies.append((op.completed, op.completed - op.invoked))
            if self.pause:
                await asyncio.sleep(self.pause)

    def acked_after(self, t: float) -> int:
        return sum(1 for o in self.history.ops if o.ok and o.completed > t)

    async def until_acked_after(self, t: float, n: int = 10, timeout: float = 30.0) -> float:
        """Wait until ``n`` appends were acknowledged after ``t``; returns when the first was."""
        deadline = time.monotonic() + timeout
        while self.acked_after(t) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n} appends acknowledged within {timeout} s "
                                     f"({self.history.summary()})")
            await asyncio.sleep(0.05)
        return min(o.completed for o in self.history.ops if o.ok and o.completed > t)


async def final_logs(client: Any, names: list[str], *, timeout: float = 60.0,
                     binding: str = "JOURNAL") -> dict[str, list[str]]:
    """Every object's whole log, retrying while the cluster recovers."""
    out: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            try:
                out[name] = await client.namespace(binding).get_by_name(name).read()
                break
            except DuroError as exc:
                if not exc.retryable or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    return out
