"""``PrefixView``: a small etcd prefix (nodes, replica groups) kept in memory by watch.

The prefixes this is for hold one key per node or per group, so on any interruption (etcd
restart, compaction, a watch that etcd3aio re-created on its own) the view simply re-reads the
prefix and watches again from that read's revision; it reports every key that appeared, changed
or vanished meanwhile. Not for the object directory, which can be large.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end

from duro.topology.etcdkv import describe_etcd_error, watch

__all__ = ["PrefixView", "ETCD_ERRORS"]

log = logging.getLogger("duro.topology.watch")

ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)

T = TypeVar("T")
Parse = Callable[[str, bytes, int, int], "T | None"]  # (name, value, mod_revision, lease)


class PrefixView(Generic[T]):
    """``items`` maps the key's name (what follows the prefix) to its parsed value.

    ``parse(name, value, mod_revision, lease)`` returns the item, or None for a value it cannot
    read (logged and skipped). ``on_update(name, old, new)`` callbacks run on the event loop for
    every change (``new`` None: deleted); they must not block.
    """

    def __init__(self, client: Etcd3Client, prefix: str, parse: Parse, *, name: str = "view") -> None:
        self._client = client
        self.prefix = prefix
        self._parse = parse
        self._name = name
        self.items: dict[str, T] = {}
        self.callbacks: list[Callable[[str, T | None, T | None], None]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.revision = 0

    async def start(self, timeout: float | None = 30.0) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name=self._name)
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, fut in self._waiters:
            fut.cancel()
        self._waiters.clear()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` holds after some update (or now); False on timeout."""
        if predicate():
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _set(self, name: str, new: T | None) -> None:
        old = self.items.get(name)
        if new is None:
            if old is None:
                return
            del self.items[name]
        else:
            if old == new:
                return
            self.items[name] = new
        for cb in list(self.callbacks):
            try:
                cb(name, old, new)
            except Exception:
                log.exception("%s: update callback failed", self._name)
        if self._waiters:
            for pred, fut in list(self._waiters):
                if not fut.done() and pred():
                    fut.set_result(None)

    def _parsed(self, key: bytes, value: bytes, mod_revision: int, lease: int) -> tuple[str, T | None]:
        name = key.decode()[len(self.prefix):]
        try:
            return name, self._parse(name, value, mod_revision, lease)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable value at %s: %r", self._name, key.decode(), exc)
            return name, None

    async def _follow(self) -> None:
        end = prefix_range_end(self.prefix)
        failing = False
        while True:
            try:
                resp = await self._client.kv.get(self.prefix, end, timeout=5.0)
                if failing:
                    log.warning("%s: etcd answers again", self._name)
                    failing = False
                seen: dict[str, T] = {}
                for kv in resp.kvs:
                    name, item = self._parsed(kv.key, kv.value, kv.mod_revision, kv.lease)
                    if item is not None:
                        seen[name] = item
                for gone in set(self.items) - set(seen):
                    self._set(gone, None)
                for name, item in seen.items():
                    self._set(name, item)
                self.revision = int(resp.header.revision)
                self._ready.set()
                stream = watch(self._client, self.prefix, end, start_revision=self.revision + 1)
                created = False
                async with contextlib.aclosing(stream):
                    async for w in stream:
                        if w.compact_revision > 0 or w.canceled or (w.created and created):
                            break  # re-read: cheap for a handful of keys
                        created = created or w.created
                        for ev in w.events:
                            if ev.type == 1:  # DELETE
                                self._set(ev.kv.key.decode()[len(self.prefix):], None)
                            else:
                                name, item = self._parsed(ev.kv.key, ev.kv.value,
                                                          ev.kv.mod_revision, ev.kv.lease)
                                if item is not None:
                                    self._set(name, item)
                            self.revision = max(self.revision, int(ev.kv.mod_revision))
            except asyncio.CancelledError:
                raise
            except ETCD_ERRORS as exc:
                # One line per outage, not one per retry: the rest at debug level.
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "%s: etcd error (%s); re-reading every 0.2 s until it answers",
                        self._name, describe_etcd_error(exc))
                failing = True
                await asyncio.sleep(0.2)
