"""``DirectoryClient``: a router's view of the object directory (docs/directory.md).

* A bounded LRU cache of entries (``capacity``), filled on demand and corrected by redirects.
* Lookups that miss are **batched**: every resolve asked for in one loop turn travels in one
  ``Directory.Resolve`` call per node (the primary of each partition's replica group), and
  concurrent resolves of one object share one request.
* A partition with no group yet is assigned by the placement leader (``assign``) on first use;
  the partition map is followed by watch (``PartitionView``).
* While a partition's group has no serving primary (a failover), a resolve waits for the views
  to show one, up to ``failover_wait`` seconds, as calls do (``duro.client.router``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from duro import tls
from duro._pb import directory_pb2, directory_pb2_grpc
from duro._transport import channel_options
from duro.errors import InvalidArgumentError, UnavailableError
from duro.topology.directory_entry import Entry
from duro.topology.groups import GroupView
from duro.topology.partitions import (
    DirectorySettings,
    PartitionView,
    directory_settings_key,
    partition_of,
)
from duro.topology.watch import PrefixView

__all__ = ["DirectoryClient", "DirectoryStats"]

log = logging.getLogger("duro.client")

DEFAULT_CAPACITY = 100_000
MAX_ITEMS = 4096  # per Resolve call (the node's limit)
RETRY_PAUSE = 0.05
RPC_TIMEOUT = 10.0

AssignFn = Callable[[list[int]], Awaitable[list[int]]]


class DirectoryStats:
    __slots__ = ("hits", "misses", "resolves", "rpcs", "local", "evicted", "retries")

    def __init__(self) -> None:
        self.hits = self.misses = self.resolves = self.rpcs = self.evicted = self.retries = 0
        self.local = 0  # Resolve calls answered by this process's own partitions (a node's)


class _Want:
    __slots__ = ("oid", "binding", "create", "region", "hint", "future")

    def __init__(self, oid: bytes, binding: str, create: bool, region: str, hint: str,
                 future: asyncio.Future[Entry | None]) -> None:
        self.oid, self.binding, self.create = oid, binding, create
        self.region, self.hint, self.future = region, hint, future


class DirectoryClient:
    def __init__(
        self, etcd: Any, cluster: str, nodes: Any, groups: GroupView, *, assign: AssignFn,
        capacity: int = DEFAULT_CAPACITY, failover_wait: float = 10.0,
    ) -> None:
        if capacity < 1:
            raise ValueError("the directory cache needs room for at least one entry")
        self.cluster = cluster
        self.nodes = nodes
        self.groups = groups
        self.partitions = PartitionView(etcd, cluster)
        self._settings = PrefixView(
            etcd, directory_settings_key(cluster).rsplit("/", 1)[0] + "/",
            lambda name, raw, _r, _l: DirectorySettings.from_json(raw)
            if name == "directory" else None, name="directory-settings")
        self._assign = assign
        self.capacity = capacity
        self.failover_wait = failover_wait
        self._cache: OrderedDict[str, Entry] = OrderedDict()
        self._queue: list[_Want] = []
        self._inflight: dict[tuple[bytes, bool], asyncio.Future[Entry | None]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = DirectoryStats()
        # (address, resolve): set by a node, whose own partitions answer without gRPC
        self.here: tuple[str, Callable[[Any], Awaitable[Any]]] | None = None

    async def start(self, timeout: float | None = 30.0) -> None:
        await asyncio.gather(self.partitions.start(timeout), self._settings.start(timeout))

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.partitions.stop()
        await self._settings.stop()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    @property
    def settings(self) -> DirectorySettings:
        return self._settings.items.get("directory") or DirectorySettings()

    @property
    def known_settings(self) -> DirectorySettings | None:
        """The settings, or None until the placement leader has written them."""
        return self._settings.items.get("directory")

    async def wait_settings(self, timeout: float) -> DirectorySettings:
        """The cluster's directory settings, once the placement leader has written them."""
        await self._settings.wait_until(lambda: "directory" in self._settings.items, timeout)
        s = self._settings.items.get("directory")
        if s is None:
            raise UnavailableError("the cluster's directory settings are not written yet "
                                   "(is a placement service running?)")
        return s

    # -- the cache ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._cache)

    def lookup(self, oid_hex: str) -> Entry | None:
        entry = self._cache.get(oid_hex)
        if entry is not None:
            self._cache.move_to_end(oid_hex)
        return entry

    def put(self, entry: Entry) -> None:
        old = self._cache.get(entry.object_id)
        if old is not None and old.epoch > entry.epoch:
            return  # never replace a newer entry with an older answer
        self._cache[entry.object_id] = entry
        self._cache.move_to_end(entry.object_id)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
            self.stats.evicted += 1

    def invalidate(self, oid_hex: str) -> None:
        self._cache.pop(oid_hex, None)

    def entries(self) -> list[Entry]:
        return list(self._cache.values())

    # -- routing to a partition -------------------------------------------------------------------
    def primary_address(self, gid: int) -> str:
        """The address of group ``gid``'s serving primary ("" while it has none)."""
        g = self.groups.get(gid)
        if g is None:
            return ""
        info = self.nodes.nodes.get(g.primary)
        if info is None or (info.lease and info.lease != g.lease):
            return ""
        return info.address

    def _stub(self, address: str) -> directory_pb2_grpc.DirectoryStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = tls.channel(address, options=channel_options())
        return directory_pb2_grpc.DirectoryStub(ch)

    async def _partition_address(self, p: int, deadline: float) -> str:
        """The address serving partition ``p``, assigning it first if it has no group."""
        gid = self.partitions.group_of(p)
        if gid is None:
            gid = (await self._assign([p]))[0]
        while True:
            address = self.primary_address(gid)
            if address:
                return address
            if time.monotonic() > deadline:
                raise UnavailableError(
                    f"directory partition {p} (group {gid}) has no serving primary "
                    f"(waited {self.failover_wait:g} s for a failover); retry")
            await asyncio.sleep(RETRY_PAUSE)

    # -- resolve --------------------------------------------------------------------------------
    async def resolve(self, oid: bytes, binding: str = "", *, create: bool = True,
                      region: str = "", hint: str = "", fresh: bool = False) -> Entry | None:
        """The object's entry (from the cache unless ``fresh``), created if absent and
        ``create``; None if it has none."""
        if not fresh:
            entry = self.lookup(oid.hex())
            if entry is not None:
                self.stats.hits += 1
                return entry
        self.stats.misses += 1
        key = (oid, create)
        fut = self._inflight.get(key)
        if fut is None:
            fut = self._inflight[key] = asyncio.get_running_loop().create_future()
            self._queue.append(_Want(oid, binding, create, region, hint, fut))
            if len(self._queue) == 1:
                asyncio.get_running_loop().call_soon(self._flush)
        return await asyncio.shield(fut)

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._resolve_all(queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settle(self, w: _Want, result: Entry | None | BaseException) -> None:
        self._inflight.pop((w.oid, w.create), None)
        if w.future.done():
            return
        if isinstance(result, BaseException):
            w.future.set_exception(result)
            w.future.exception()  # retrieved even if every waiter was cancelled
        else:
            if result is not None:
                self.put(result)
            w.future.set_result(result)

    async def _resolve_all(self, wants: list[_Want]) -> None:
        deadline = time.monotonic() + self.failover_wait
        pending = wants
        try:
            n = self.settings.partitions
            if "directory" not in self._settings.items:
                n = (await self.wait_settings(self.failover_wait)).partitions
            unassigned = sorted({p for p in {partition_of(w.oid, n) for w in pending}
                                 if self.partitions.group_of(p) is None})
            if unassigned:
                await self._assign(unassigned)
                await self.partitions.wait_until(
                    lambda: all(self.partitions.group_of(p) is not None for p in unassigned), 5.0)
            while pending:
                by_address: dict[str, list[_Want]] = {}
                for w in pending:
                    address = await self._partition_address(partition_of(w.oid, n), deadline)
                    by_address.setdefault(address, []).append(w)
                results = await asyncio.gather(*(self._call(a, ws) for a, ws in
                                                 by_address.items()))
                pending = [w for retry in results for w in retry]
                if pending:
                    self.stats.retries += len(pending)
                    if time.monotonic() > deadline:
                        raise UnavailableError(
                            f"the directory did not answer for {len(pending)} objects within "
                            f"{self.failover_wait:g} s; retry")
                    await asyncio.sleep(RETRY_PAUSE)
        except BaseException as exc:
            err = exc if isinstance(exc, (UnavailableError, InvalidArgumentError)) else \
                UnavailableError(f"directory lookup failed: {exc!r}")
            for w in pending:
                self._settle(w, err)
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _call(self, address: str, wants: list[_Want]) -> list[_Want]:
        """One Resolve call per MAX_ITEMS; returns the wants to try again."""
        retry: list[_Want] = []
        for i in range(0, len(wants), MAX_ITEMS):
            chunk = wants[i:i + MAX_ITEMS]
            req = directory_pb2.ResolveRequest(items=[directory_pb2.ResolveItem(
                object_id=w.oid, binding=w.binding, create=w.create, caller_region=w.region,
                location_hint=w.hint) for w in chunk])
            try:
                if self.here is not None and address == self.here[0]:
                    self.stats.local += 1  # this process serves the partition: no gRPC
                    async with asyncio.timeout(RPC_TIMEOUT):
                        resp = await self.here[1](req)
                    if resp is None:
                        retry.extend(chunk)
                        continue
                else:
                    self.stats.rpcs += 1
                    resp = await self._stub(address).Resolve(req, timeout=RPC_TIMEOUT)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                log.debug("directory resolve at %s failed: %r", address, exc)
                retry.extend(chunk)  # a resolve is idempotent: asking again is safe
                continue
            for w, r in zip(chunk, resp.results):
                self.stats.resolves += 1
                if not r.error_code:
                    self._settle(w, Entry.from_pb(r.entry) if r.found else None)
                elif r.error_code == "invalid":
                    self._settle(w, InvalidArgumentError(r.error))
                else:  # not_here (a view lags), unassigned, unavailable: again, shortly
                    retry.append(w)
        return retry

    # -- writes of an owner ---------------------------------------------------------------------
    async def _partition_call(self, oid: bytes, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        deadline = time.monotonic() + self.failover_wait
        n = self.settings.partitions
        address = await self._partition_address(partition_of(oid, n), deadline)
        return await fn(self._stub(address))

    async def switch(self, oid: bytes, expected_group: int, expected_epoch: int,
                     new_group: int, new_region: str) -> directory_pb2.SwitchResponse:
        """A migration's compare-and-swap (its outcome is unknown if this raises)."""
        resp = await self._partition_call(oid, lambda stub: stub.Switch(
            directory_pb2.SwitchRequest(
                object_id=oid, expected_group=expected_group, expected_epoch=expected_epoch,
                new_group=new_group, new_region=new_region), timeout=5.0))
        if resp.found:
            self.put(Entry.from_pb(resp.entry))
        return resp

    async def forget(self, items: list[tuple[bytes, int, int]]) -> list[bool]:
        """Delete the entries of objects that hold nothing, if still (group, epoch)."""
        n = self.settings.partitions
        deadline = time.monotonic() + self.failover_wait
        by_address: dict[str, list[int]] = {}
        for i, (oid, _g, _e) in enumerate(items):
            try:
                address = await self._partition_address(partition_of(oid, n), deadline)
            except UnavailableError:
                continue
            by_address.setdefault(address, []).append(i)
        out = [False] * len(items)

        async def one(address: str, idx: list[int]) -> None:
            req = directory_pb2.ForgetRequest(items=[directory_pb2.ForgetItem(
                object_id=items[i][0], group=items[i][1], epoch=items[i][2]) for i in idx])
            try:
                resp = await self._stub(address).Forget(req, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError:
                return
            for i, ok in zip(idx, resp.forgotten):
                out[i] = ok
                if ok:
                    self.invalidate(items[i][0].hex())

        await asyncio.gather(*(one(a, idx) for a, idx in by_address.items()))
        return out

    async def import_entries(self, entries: list[Entry]) -> directory_pb2.ImportResponse:
        n = self.settings.partitions
        deadline = time.monotonic() + self.failover_wait
        by_address: dict[str, list[Entry]] = {}
        for e in entries:
            address = await self._partition_address(
                partition_of(bytes.fromhex(e.object_id), n), deadline)
            by_address.setdefault(address, []).append(e)
        total = directory_pb2.ImportResponse()
        for address, es in by_address.items():
            req = directory_pb2.ImportRequest()
            for e in es:
                e.to_pb(req.entries.add())
            resp = await self._stub(address).Import(req, timeout=60.0)
            total.created += resp.created
            total.existing += resp.existing
            total.errors.extend(resp.errors)
        return total
