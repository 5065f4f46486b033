"""The node's alarm scheduler.

Alarms are stored with their object and indexed by time in the object's replica group
(``node/storage/layout.py``), so after a restart the scheduler reads only the index entries due
within the next window, never every object. It follows the groups this node serves as primary
(``add_group`` / ``remove_group``): an alarm fires on its group's primary only.
Wake-ups are at-least-once: a due alarm is delivered as an ALARM event; the activation re-reads the
stored alarm and runs ``alarm()`` only if it is still due, and deletes it (or schedules a retry)
through the ordinary, durable write path. A crash anywhere before that commit leaves the alarm in
place, and it fires again after restart.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Awaitable, Callable

from duro._wire import RedirectError
from duro.errors import DuroError
from duro.node.storage import layout
from duro.node.storage.engine import StorageEngine
from duro.node.storage.object_storage import now_ms

__all__ = ["AlarmScheduler"]

log = logging.getLogger("duro.node.runtime")

RETRY_UNAVAILABLE_MS = 1000
REDIRECT_RETRIES = 30

FireFn = Callable[[str, bytes], Awaitable[object]]


class AlarmScheduler:
    """Fires due alarms; ``schedule`` is called after an alarm change is durable."""

    def __init__(
        self, engine: StorageEngine, fire: FireFn, *, window_s: float = 60.0, concurrency: int = 64
    ) -> None:
        self._engine = engine
        self._fire = fire
        self._window_ms = int(window_s * 1000)
        self._heap: list[tuple[int, bytes, str, int]] = []  # (when, object id, binding, group)
        self._queued: set[tuple[bytes, int]] = set()  # (object id, time) in the heap
        self._scanned_until = 0
        self.groups: set[int] = set()
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()
        self.fired = 0
        self.retried = 0
        self._redirected: dict[bytes, int] = {}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="duro-alarms")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for t in list(self._inflight):
            t.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)

    def add_group(self, gid: int) -> None:
        """Fire this group's alarms from now on (this node became its primary)."""
        if gid in self.groups:
            return
        self.groups.add(gid)
        if self._scanned_until:
            self._scan_group(gid, 0, self._scanned_until)

    def remove_group(self, gid: int) -> None:
        """Stop firing this group's alarms (this node is no longer its primary)."""
        self.groups.discard(gid)
        kept = [e for e in self._heap if e[3] != gid]
        if len(kept) != len(self._heap):
            self._heap = kept
            heapq.heapify(self._heap)
            self._queued = {(e[1], e[0]) for e in kept}

    def schedule(self, object_id: bytes, binding: str, when_ms: int, gid: int = 0) -> None:
        if when_ms >= self._scanned_until or gid not in self.groups:
            return  # the index scan will find it when its window comes
        if (object_id, when_ms) in self._queued:
            return
        self._queued.add((object_id, when_ms))
        heapq.heappush(self._heap, (when_ms, object_id, binding, gid))
        self._wake.set()

    def _scan(self, until_ms: int) -> None:
        start, self._scanned_until = self._scanned_until, until_ms
        for gid in list(self.groups):
            self._scan_group(gid, start, until_ms)

    def _scan_group(self, gid: int, lo_ms: int, hi_ms: int) -> None:
        for key, value in self._engine.scan(*layout.alarm_index_range(gid, lo_ms, hi_ms)):
            when, oid = layout.parse_alarm_index_key(key)
            self.schedule(oid, value.decode(), when, gid)

    async def _run(self) -> None:
        self._scanned_until = 0
        while True:
            now = now_ms()
            if now + self._window_ms // 2 >= self._scanned_until:
                self._scan(now + self._window_ms)
            while self._heap and self._heap[0][0] <= now:
                when, oid, binding, gid = heapq.heappop(self._heap)
                self._queued.discard((oid, when))
                t = asyncio.get_running_loop().create_task(self._fire_one(binding, oid, gid))
                self._inflight.add(t)
                t.add_done_callback(self._inflight.discard)
            next_at = self._scanned_until - self._window_ms // 2
            if self._heap:
                next_at = min(next_at, self._heap[0][0])
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, (next_at - now_ms()) / 1000))
            except asyncio.TimeoutError:
                pass

    async def _fire_one(self, binding: str, oid: bytes, gid: int) -> None:
        async with self._sem:
            try:
                await self._fire(binding, oid)
                self.fired += 1
                self._redirected.pop(oid, None)
            except asyncio.CancelledError:
                raise
            except RedirectError:
                # Not served here (yet): a copy that just arrived by migration, whose switch is
                # still on its way, or a stale copy (a leftover). Look again a few times.
                tries = self._redirected.get(oid, 0) + 1
                if tries <= REDIRECT_RETRIES:
                    self._redirected[oid] = tries
                    self.schedule(oid, binding, now_ms() + RETRY_UNAVAILABLE_MS, gid)
                else:
                    self._redirected.pop(oid, None)
                    log.debug("alarm of %s: not the owner here; skipped", oid.hex())
                return
            except DuroError as exc:
                if exc.retryable:
                    # The object could not run here right now (node still joining, fenced,
                    # object reset): the alarm is still stored, so try again shortly.
                    self.retried += 1
                    self.schedule(oid, binding, now_ms() + RETRY_UNAVAILABLE_MS, gid)
                else:
                    log.debug("alarm of %s failed: %r", oid.hex(), exc)
            except Exception as exc:  # the object's exception: its retry is already scheduled
                log.debug("alarm of %s failed: %r", oid.hex(), exc)
