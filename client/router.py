"""``Router``: send a call to the node that serves its object, wherever the caller is.

Used by ``duro.client`` (external callers), by nodes (calls between objects) and by edges. It keeps
two watch-fed views from etcd — the replica groups (group → primary and its lease; ``GroupView``,
docs/replication.md) and the live nodes (node → address, lease; ``NodeView``) — and the
directory client (object → replica group, epoch: a bounded cache filled by batched lookups at the
directory's partitions, ``duro.client.directory``, docs/directory.md). One call:

1. look the object up in the directory cache; if absent, resolve it at its partition (which
   creates the entry, placing the object, on its first call);
2. find its group's primary; while the group has none that is live under the lease the
   configuration names (its node died and the group is failing over), wait for the views to show
   the new one, up to ``failover_wait`` seconds, then fail with a retryable ``UnavailableError``;
3. send the call on the long-lived stream to the primary (``ConnectionPool``), carrying the epoch;
   when the primary is the node this router runs in (:attr:`Router.local`, set by the node), call
   it in-process instead: the co-located edge's calls and calls between objects of one node skip
   protobuf, TLS and the loopback socket, and get the same answers (``NodeServicer.invoke_local``);
4. on a redirect from the node (it is not the owner by its newer view, or not serving yet), go
   where the redirect says (at most ``max_hops`` times), or wait for the views to move and route
   again. A redirect means the call did not run, so following it is always safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc
from etcd3aio import Etcd3Client

from duro import tls
from duro._namespace import Call
from duro._pb import placement_pb2, placement_pb2_grpc
from duro._transport import placement_channel_options
from duro._wire import RedirectError
from duro.client.connection import ConnectionPool
from duro.client.directory import DirectoryClient
from duro.client.latency import LatencyMatrix
from duro.errors import UnavailableError
from duro.topology.directory_entry import Entry
from duro.topology.etcdkv import etcd_client, get_value
from duro.topology.groups import GroupView
from duro.topology.keys import leader_key
from duro.topology.nodes import NodeView

T = TypeVar("T")

__all__ = ["Router", "app_key", "RouterStats"]

log = logging.getLogger("duro.client")

MAX_HOPS = 4
FAILOVER_WAIT = 10.0  # seconds a call waits for its group to have a serving primary again
RETRY_PAUSE = 0.05


def app_key(cluster: str) -> str:
    """Where nodes publish the app's bindings (binding name → namespace class)."""
    return f"/duro/{cluster}/app/bindings"


class RouterStats:
    __slots__ = ("cache_hits", "cache_misses", "redirects", "placements", "unavailable", "local")

    def __init__(self) -> None:
        self.local = 0  # hops taken in-process (Router.local)
        self.cache_hits = 0
        self.cache_misses = 0
        self.redirects = 0
        self.placements = 0
        self.unavailable = 0


class Router:
    """An :class:`~duro._namespace.Invoker` for the whole cluster."""

    def __init__(
        self,
        etcd: str | Etcd3Client,
        *,
        cluster: str = "duro",
        region: str = "",
        pool: ConnectionPool | None = None,
        max_hops: int = MAX_HOPS,
        call_timeout: float | None = 30.0,
        failover_wait: float = FAILOVER_WAIT,
        cache_entries: int = 100_000,
    ) -> None:
        self._own_client = not isinstance(etcd, Etcd3Client)
        self.etcd = etcd_client(etcd) if isinstance(etcd, str) else etcd
        self.cluster = cluster
        self.region = region
        self.pool = pool or ConnectionPool()
        self.max_hops = max_hops
        self.call_timeout = call_timeout
        self.failover_wait = failover_wait
        self.nodes = NodeView(self.etcd, cluster)
        self.groups = GroupView(self.etcd, cluster)
        self.directory = DirectoryClient(self.etcd, cluster, self.nodes, self.groups,
                                         assign=self.assign_partitions, capacity=cache_entries,
                                         failover_wait=failover_wait)
        self._addresses: dict[str, str] = {}  # node id -> last address seen (also once gone)
        self.nodes.callbacks.append(self._on_node)
        self.groups.callbacks.append(self._on_group)
        self.stats = RouterStats()
        self.latency = LatencyMatrix.from_env()
        self._placement: tuple[str, Any] | None = None  # (address, stub)
        # One channel per placement address, closed only in close(): other calls may still have
        # a Place RPC in flight on a channel when the leader changes (closing it cancels them).
        self._placement_channels: dict[str, grpc.aio.Channel] = {}
        self._placement_lock = asyncio.Lock()
        self._started = False
        # (address, invoke) of the node this router runs in, set by that node: calls whose owner
        # is at ``address`` go to ``invoke(call, timeout)`` in-process (docs/architecture.md).
        self.local: tuple[str, Callable[..., Awaitable[bytes]]] | None = None
        # The same node's fetch with streamed bodies (``NodeServicer.invoke_local_fetch``).
        self.local_fetch: Callable[..., Awaitable[tuple[bytes, Any]]] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        if self._started:
            return
        if self._own_client:
            await self.etcd.connect()
        await asyncio.gather(self.nodes.start(timeout), self.groups.start(timeout),
                             self.directory.start(timeout))
        self._started = True

    async def close(self) -> None:
        await self.directory.stop()
        await self.nodes.stop()
        await self.groups.stop()
        await self.pool.close()
        self._placement = None
        channels, self._placement_channels = list(self._placement_channels.values()), {}
        for ch in channels:
            await ch.close()
        if self._own_client:
            await self.etcd.close()

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def published_bindings(self) -> dict[str, str]:
        value = await get_value(self.etcd, app_key(self.cluster))
        if value is None:
            return {}
        return dict(json.loads(value))

    # -- the call path ------------------------------------------------------------------------
    async def invoke(self, call: Call) -> bytes:
        return await self._route(call, self._send)

    async def invoke_fetch(self, call: Call, body: AsyncIterator[bytes] | None
                           ) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """A FETCH whose request and response bodies may stream (``NodeConnection.invoke_fetch``,
        or the node's own ``invoke_local_fetch`` in process; docs/http.md). Redirects are
        followed as for :meth:`invoke`: a node refuses a call before its object reads any of the
        body."""
        call.stream_response = True

        def send(address: str, call: Call) -> Awaitable[tuple[bytes, AsyncIterator[bytes] | None]]:
            local = self.local_fetch
            if local is not None and self.local is not None and self.local[0] == address:
                self.stats.local += 1
                return local(call, body, self.call_timeout)
            return self.pool.get(address).invoke_fetch(call, body, timeout=self.call_timeout)

        return await self._route(call, send)

    async def _route(self, call: Call, send: Callable[[str, Call], Awaitable[T]]) -> T:
        """``send(address, call)`` to the object's owner, following redirects and failovers."""
        oid = call.object_id.hex()
        if not call.caller_region:
            call.caller_region = self.region
        entry = self.directory.lookup(oid)
        if entry is None:
            self.stats.cache_misses += 1
            entry = await self.place(call)
        else:
            self.stats.cache_hits += 1
        call.epoch = entry.epoch
        owner = self.owner_of(entry)
        node_id, address = owner if owner is not None else await self.await_owner(entry, None)
        hops = 0
        deadline: float | None = None
        while True:
            call.hops = hops
            try:
                if self.latency is None:
                    return await send(address, call)
                return await self._delayed(node_id, address, call, send)
            except RedirectError as r:
                self.stats.redirects += 1
                hops += 1
                if r.epoch > entry.epoch or not r.address:
                    self.directory.invalidate(oid)  # stale: the next call asks the partition
                call.epoch = max(call.epoch, r.epoch)
                if r.address and r.address != address and hops <= self.max_hops:
                    address, node_id = r.address, r.node_id
                    continue
                # Not served there now (the group is failing over, or its new primary is still
                # reconciling): the call did not run. Wait for the views to move, route again.
                loop = asyncio.get_running_loop()
                if deadline is None:
                    deadline = loop.time() + self.failover_wait
                if loop.time() > deadline:
                    raise UnavailableError(
                        f"object {oid[:16]}…: no node served it within {self.failover_wait:g} s "
                        f"(last: {r})") from None
                await asyncio.sleep(RETRY_PAUSE)
                entry = self.directory.lookup(oid) or await self.place(call)
                node_id, address = await self.await_owner(entry, deadline)

    def _send(self, address: str, call: Call) -> Awaitable[bytes]:
        """One hop: in-process when ``address`` is this router's own node, else its stream."""
        local = self.local
        if local is not None and local[0] == address:
            self.stats.local += 1
            return local[1](call, self.call_timeout)
        return self.pool.invoke(address, call, timeout=self.call_timeout)

    def owner_of(self, entry: Entry) -> tuple[str, str] | None:
        """(node id, address) of the node serving the entry's object now, as far as the views
        know; None while its group has no primary registered under the configuration's lease."""
        node_id = entry.node
        if entry.group:
            g = self.groups.get(entry.group)
            if g is None:
                return None
            info = self.nodes.nodes.get(g.primary)
            if info is None or (info.lease and info.lease != g.lease):
                return None
            return g.primary, info.address
        info = self.nodes.nodes.get(node_id)
        return (node_id, info.address) if info is not None else None

    def _on_node(self, node_id: str, _old: object, new: object) -> None:
        if new is not None:
            self._addresses[node_id] = new.address  # type: ignore[attr-defined]

    def _on_group(self, _name: str, old: object, new: object) -> None:
        """A group failed over because its primary lost its lease (dead, stopped, partitioned):
        calls still waiting on that node will not be answered by a serving primary. Break the
        connection, so they fail now — "may or may not have executed" — instead of after the
        call timeout (a SIGSTOPped node keeps its TCP connections open)."""
        if old is None or new is None or old.primary == new.primary:  # type: ignore[attr-defined]
            return
        gone = old.primary  # type: ignore[attr-defined]
        info = self.nodes.nodes.get(gone)
        if info is not None and info.lease == old.lease:  # type: ignore[attr-defined]
            return  # a planned handover: the old primary is alive and answers its calls
        address = self._addresses.get(gone)
        if address and address in self.pool:
            asyncio.get_running_loop().create_task(self.pool.discard(address))

    def owner_address(self, entry: Entry) -> str:
        owner = self.owner_of(entry)
        return owner[1] if owner is not None else ""

    async def await_owner(self, entry: Entry, deadline: float | None) -> tuple[str, str]:
        """Wait (polling the views) until the entry's object has a serving primary."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.failover_wait
        while True:
            owner = self.owner_of(entry)
            if owner is not None:
                return owner
            if loop.time() > deadline:
                self.stats.unavailable += 1
                where = f"group {entry.group}" if entry.group else f"node {entry.node!r}"
                raise UnavailableError(
                    f"object {entry.object_id[:16]}… lives in {where}, which has no live primary "
                    f"(waited {self.failover_wait:g} s for a failover); retry")
            await asyncio.sleep(RETRY_PAUSE)

    async def _delayed(self, node_id: str, address: str, call: Call,
                       send: Callable[[str, Call], Awaitable[T]]) -> T:
        """One hop with the simulated one-way delay each way (see duro.client.latency)."""
        assert self.latency is not None
        info = self.nodes.nodes.get(node_id)
        delay = self.latency.one_way(self.region, info.region) if info else 0.0
        if delay:
            await asyncio.sleep(delay)
        try:
            return await send(address, call)
        finally:
            if delay:
                await asyncio.sleep(delay)

    async def place(self, call: Call) -> Entry:
        """The object's entry from its directory partition, created (the object placed) if it
        has none. Lookups of one loop turn travel together (``DirectoryClient``)."""
        entry = await self.directory.resolve(
            call.object_id, call.binding, create=True, region=call.caller_region,
            hint=call.location_hint or "", fresh=True)
        assert entry is not None
        self.stats.placements += 1
        return entry

    async def assign_partitions(self, partitions: list[int]) -> list[int]:
        """Ask the placement leader to give these directory partitions a group (their groups)."""
        last: Exception | None = None
        for _attempt in range(10):
            stub = await self._placement_stub()
            try:
                resp = await stub.AssignPartitions(
                    placement_pb2.AssignPartitionsRequest(partitions=partitions), timeout=10.0)
                return list(resp.groups)
            except grpc.aio.AioRpcError as exc:
                last = exc
                self._placement = None
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    addr = dict(exc.trailing_metadata() or ()).get("duro-leader-address")
                    if addr:
                        await self._set_placement(str(addr))
                        continue
                await asyncio.sleep(0.2)
        raise UnavailableError(f"placement service unavailable: {last}")

    async def _placement_stub(self) -> Any:
        if self._placement is not None:
            return self._placement[1]
        async with self._placement_lock:  # many first calls at once: one leader lookup
            if self._placement is not None:
                return self._placement[1]
            return await self._resolve_placement()

    async def _resolve_placement(self) -> Any:
        try:
            value = await get_value(self.etcd, leader_key(self.cluster))
        except Exception as exc:
            raise UnavailableError(f"cannot read the placement leader from etcd: {exc}") from None
        if value is None:
            raise UnavailableError("no placement leader is elected right now; retry")
        await self._set_placement(json.loads(value)["address"])
        assert self._placement is not None
        return self._placement[1]

    async def _set_placement(self, address: str) -> None:
        channel = self._placement_channels.get(address)
        if channel is None:
            channel = self._placement_channels[address] = tls.channel(
                address, role="placement", options=placement_channel_options())
        self._placement = (address, placement_pb2_grpc.PlacementStub(channel))

