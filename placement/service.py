"""The placement service: plain logic (:class:`PlacementService`) under a thin gRPC adapter.

``Place`` is answered by the leader only. A non-leader replica answers FAILED_PRECONDITION with
trailing metadata ``duro-leader-id`` / ``duro-leader-address`` (UNAVAILABLE while no leader is
known); it does not forward, so that a caller pays one extra round trip once and then talks to
the leader directly. ``Status`` is answered by every replica.

Throughput: concurrent ``Place`` calls for new objects are batched into etcd transactions of up to
127 nested create-if-absent operations, with up to ``max_inflight_txns`` transactions in flight.
Batches form naturally: a request waits only while every transaction slot is busy, never for a
timer. An object that someone else created first (a lost race) gets the winner's entry back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from etcd3aio import EtcdError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from duro._pb import placement_pb2, placement_pb2_grpc
from duro.node.membership import NodeInfo
from duro.placement.config import PlacementConfig
from duro.client.etcdkv import etcd_client
from duro.node.replication.settings import ReplicationSettings
from duro.placement.directory import Directory, Entry, NotLeaderError
from duro.placement.election import Election, LeaderInfo
from duro.placement.groups import GroupCollector, GroupManager, primary_gone
from duro.placement.planner import PlannerConfig
from duro.placement.rebalancer import Rebalancer
from duro.placement.nodes import NodeView
from duro.placement.policy import Candidate, NoLiveNodeError, choose_node

__all__ = ["NotLeader", "Placed", "PlacementService", "PlacementServiceStatus"]

log = logging.getLogger("duro.placement")

_ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)
LEADER_ID_MD = "duro-leader-id"
LEADER_ADDRESS_MD = "duro-leader-address"


class NotLeader(Exception):
    """This replica does not lead; ``leader`` is the current leader if known."""

    def __init__(self, leader: LeaderInfo | None) -> None:
        where = f"{leader.leader_id} at {leader.address}" if leader else "unknown"
        super().__init__(f"not the placement leader; leader is {where}")
        self.leader = leader


@dataclass(frozen=True, slots=True)
class Placed:
    entry: Entry
    address: str  # "" if the owner is not live now
    created: bool
    node: str = ""  # the node serving it now (its group's primary)


class PlacementServiceStatus(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "duro_placement_decisions_total", "Place answers", ["result"], registry=registry
        )
        self.errors = Counter(
            "duro_placement_errors_total", "Place failures", ["reason"], registry=registry
        )
        self.txn_seconds = Histogram(
            "duro_placement_txn_duration_seconds", "etcd create transaction latency",
            registry=registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )  # fmt: skip
        self.batch = Histogram(
            "duro_placement_batch_size_objects", "objects per create transaction",
            registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 127),
        )  # fmt: skip
        self.leader = Gauge("duro_placement_is_leader_bool", "1 if leading", registry=registry)
        self.nodes = Gauge("duro_placement_live_nodes_count", "live nodes", registry=registry)


class PlacementService:
    """One placement replica: election, live-node view, batched directory writes, gRPC server."""

    def __init__(self, config: PlacementConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.replica_id = config.effective_replica_id
        self.status = PlacementServiceStatus.CREATED
        self.registry = registry or CollectorRegistry()
        self.metrics = _Metrics(self.registry)
        self.address = config.listen
        self.metrics_port: int | None = None
        self._client = etcd_client(config.etcd)
        self.directory = Directory(self._client, config.cluster)
        self.nodes = NodeView(self._client, config.cluster, on_update=self._node_updated)
        self.election: Election | None = None
        self._server: grpc.aio.Server | None = None
        self._http: Any = None
        self._pending: dict[str, tuple[Entry, list[asyncio.Future[tuple[Entry, bool]]]]] = {}
        self._kick = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._assigned: dict[str, int] = {}  # placements since the node's last load report
        self.rebalancer: Rebalancer | None = None
        self.groups: GroupManager | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self.status = PlacementServiceStatus.STARTING
        await self._client.connect()
        await self.nodes.start()
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        placement_pb2_grpc.add_PlacementServicer_to_server(_Servicer(self), self._server)
        host, _, port = self.config.listen.rpartition(":")
        bound = self._server.add_insecure_port(f"{host}:{port}")
        self.address = f"{host}:{bound}"
        await self._server.start()
        self.election = Election(
            self._client,
            self.config.cluster,
            self.replica_id,
            self.config.advertise or self.address,
            ttl=self.config.leader_ttl,
            on_change=lambda leading: self.metrics.leader.set(1 if leading else 0),
        )
        await self.election.start()
        election = self.election
        self.groups = GroupManager(
            self._client, self.config.cluster, self.nodes,
            guard=lambda: election.guard if election.is_leader() else None,
            settings=ReplicationSettings(self.config.replicas, self.config.min_in_sync),
            replica_id=self.replica_id, interval=self.config.group_interval,
            replace_after=self.config.replace_after,
        )
        await self.groups.start()
        self.registry.register(GroupCollector(self.groups))
        self._workers = [
            asyncio.create_task(self._batch_worker(), name=f"placement-txn-{i}")
            for i in range(self.config.max_inflight_txns)
        ]
        if self.config.rebalance:
            cfg = self.config
            election = self.election
            self.rebalancer = Rebalancer(
                self.nodes, election.is_leader,
                PlannerConfig(
                    min_share=cfg.min_share, min_calls=cfg.min_calls, min_dwell=cfg.min_dwell,
                    cooldown=cfg.cooldown, max_moves=cfg.max_moves,
                    disabled_bindings=frozenset(b for b in cfg.no_migrate.split(",") if b),
                ),
                interval=cfg.rebalance_interval,
            )
            self.rebalancer.start()
        if self.config.metrics_port is not None:
            server, _thread = start_http_server(
                self.config.metrics_port, self.config.metrics_host, registry=self.registry
            )
            self._http = server
            self.metrics_port = int(server.server_port)
        self.status = PlacementServiceStatus.RUNNING
        log.info("placement %s listening on %s", self.replica_id, self.address)

    async def stop(self, grace: float = 2.0) -> None:
        """Resign leadership first (a standby takes over at once), then drain and close."""
        if self.status in (PlacementServiceStatus.STOPPING, PlacementServiceStatus.STOPPED):
            return
        self.status = PlacementServiceStatus.STOPPING
        if self.rebalancer is not None:
            await self.rebalancer.stop()
        if self.groups is not None:
            await self.groups.stop()
        if self.election is not None:
            await self.election.stop()
        if self._server is not None:
            await self._server.stop(grace)
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for _, futs in self._pending.values():
            for f in futs:
                if not f.done():
                    f.set_exception(NotLeader(None))
        self._pending.clear()
        await self.nodes.stop()
        await self._client.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.status = PlacementServiceStatus.STOPPED

    async def __aenter__(self) -> PlacementService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- logic ---------------------------------------------------------------------------
    def _node_updated(self, node_id: str, info: NodeInfo | None) -> None:
        self._assigned.pop(node_id, None)  # a fresh load report supersedes our estimate
        self.metrics.nodes.set(len(self.nodes.nodes))

    def _candidates(self) -> Iterator[Candidate]:
        """Nodes that serve a replica group now (its primary, with its lease)."""
        for n in self.nodes.nodes.values():
            if n.draining or n.node_id not in self._led:
                continue  # being emptied by `duro drain`, or leading no group: no new objects
            load = n.load + self._assigned.get(n.node_id, 0)
            yield Candidate(n.node_id, n.region, n.zone, load, n.capacity)

    @property
    def _led(self) -> dict[str, int]:
        """node id -> the group new objects placed on it go to (its home group if it leads it,
        else the lowest gid it leads)."""
        out: dict[str, int] = {}
        nodes = self.nodes.nodes
        groups = self.groups.groups.all() if self.groups is not None else []
        for g in sorted(groups, key=lambda g: (g.home != g.primary, g.gid)):
            if g.primary not in out and primary_gone(g, nodes) is None:
                out[g.primary] = g.gid
        return out

    def _placed(self, entry: Entry, created: bool) -> Placed:
        """The answer for ``entry``, with the node serving its object now ("" if none)."""
        node_id = entry.node
        if entry.group and self.groups is not None:
            g = self.groups.groups.get(entry.group)
            node_id = g.primary if g is not None else ""
        info = self.nodes.nodes.get(node_id)
        return Placed(entry, info.address if info else "", created, node_id)

    async def place(
        self, binding: str, object_id_hex: str, caller_region: str = "", location_hint: str = ""
    ) -> Placed:
        """Return the object's entry, creating it on a chosen live node if it has none."""
        election = self.election
        if election is None or not election.is_leader():
            raise NotLeader(election.leader if election else None)
        led = self._led
        try:
            node_id = choose_node(list(self._candidates()), caller_region, location_hint)
        except NoLiveNodeError:
            existing = await self.directory.get(object_id_hex)
            if existing is None:
                raise
            return self._placed(existing, False)
        region = self.nodes.nodes[node_id].region
        self._assigned[node_id] = self._assigned.get(node_id, 0) + 1
        want = Entry(object_id_hex, sys.intern(binding), "", 1, region, group=led[node_id])
        entry, created = await self._submit(want)
        if not created:
            self._assigned[node_id] = max(0, self._assigned.get(node_id, 0) - 1)
        self.metrics.decisions.labels("created" if created else "existing").inc()
        return self._placed(entry, created)

    def _submit(self, entry: Entry) -> asyncio.Future[tuple[Entry, bool]]:
        fut: asyncio.Future[tuple[Entry, bool]] = asyncio.get_running_loop().create_future()
        slot = self._pending.get(entry.object_id)
        if slot is None:
            self._pending[entry.object_id] = (entry, [fut])
        else:
            slot[1].append(fut)  # same object twice in flight: one create, both get its answer
        self._kick.set()
        return fut

    async def _batch_worker(self) -> None:
        while True:
            await self._kick.wait()
            if not self._pending:
                self._kick.clear()
                continue
            batch = []
            for oid in list(self._pending)[: self.config.max_batch]:
                batch.append(self._pending.pop(oid))
            await self._run_batch(batch)

    async def _run_batch(
        self, batch: list[tuple[Entry, list[asyncio.Future[tuple[Entry, bool]]]]]
    ) -> None:
        election = self.election
        guard = election.guard if election is not None and election.is_leader() else None
        t0 = time.perf_counter()
        try:
            if guard is None:
                raise NotLeader(election.leader if election else None)
            results: list[tuple[Entry, bool]] = await self.directory.create_many(
                [e for e, _ in batch], guard=guard
            )
        except (NotLeader, NotLeaderError, *_ETCD_ERRORS) as exc:
            err: Exception = exc
            if isinstance(exc, NotLeaderError):
                err = NotLeader(None)
            for _, futs in batch:
                for f in futs:
                    if not f.done():
                        f.set_exception(err)
            return
        self.metrics.txn_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch.observe(len(batch))
        for (_, futs), (entry, created) in zip(batch, results, strict=True):
            for i, f in enumerate(futs):
                if not f.done():
                    f.set_result((entry, created and i == 0))

    async def status_info(self) -> placement_pb2.PlacementStatusResponse:
        election = self.election
        leader = election.leader if election else None
        count = await self.directory.count()
        return placement_pb2.PlacementStatusResponse(
            replica_id=self.replica_id,
            is_leader=bool(election and election.is_leader()),
            leader_id=leader.leader_id if leader else "",
            leader_address=leader.address if leader else "",
            nodes=[
                placement_pb2.NodeStatus(
                    node_id=n.node_id, address=n.address, region=n.region, zone=n.zone,
                    capacity=max(0, n.capacity), load=max(0, n.load),
                )  # fmt: skip
                for n in sorted(self.nodes.nodes.values(), key=lambda n: n.node_id)
            ],
            object_count=count,
        )


class _Servicer(placement_pb2_grpc.PlacementServicer):
    """gRPC adapter: translate requests and errors, nothing else."""

    def __init__(self, service: PlacementService) -> None:
        self._svc = service

    async def Place(  # noqa: N802 - gRPC method name
        self, request: placement_pb2.PlaceRequest, context: grpc.aio.ServicerContext
    ) -> placement_pb2.PlaceResponse:
        result = await self._place_one(request)
        if result.error_code == "not_leader":
            await self._abort_not_leader(context, result.error)
        if result.error_code:
            status = (grpc.StatusCode.INVALID_ARGUMENT if result.error_code == "invalid"
                      else grpc.StatusCode.UNAVAILABLE)
            await context.abort(status, result.error)
        return result.placed

    async def PlaceMany(  # noqa: N802
        self, request: placement_pb2.PlaceManyRequest, context: grpc.aio.ServicerContext
    ) -> placement_pb2.PlaceManyResponse:
        results = await asyncio.gather(*(self._place_one(r) for r in request.requests))
        for r in results:
            if r.error_code == "not_leader":
                await self._abort_not_leader(context, r.error)
        return placement_pb2.PlaceManyResponse(results=results)

    async def _abort_not_leader(self, context: grpc.aio.ServicerContext, message: str) -> None:
        leader = self._svc.election.leader if self._svc.election else None
        if leader is None or leader.leader_id == self._svc.replica_id:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no placement leader right now")
        md = ((LEADER_ID_MD, leader.leader_id), (LEADER_ADDRESS_MD, leader.address))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message, trailing_metadata=md)

    async def _place_one(self, request: placement_pb2.PlaceRequest) -> placement_pb2.PlaceResult:
        """One placement, with its failure as an error code (shared by Place and PlaceMany)."""
        metrics = self._svc.metrics
        if len(request.object_id) != 32 or not request.binding:
            metrics.errors.labels("invalid").inc()
            why = "object_id must be 32 bytes" if request.binding else "binding is required"
            return placement_pb2.PlaceResult(error_code="invalid", error=why)
        try:
            placed = await self._svc.place(
                request.binding, request.object_id.hex(), request.caller_region, request.location_hint
            )
        except NotLeader as exc:
            metrics.errors.labels("not_leader").inc()
            return placement_pb2.PlaceResult(error_code="not_leader", error=str(exc))
        except NoLiveNodeError as exc:
            metrics.errors.labels("no_live_node").inc()
            return placement_pb2.PlaceResult(error_code="no_live_node", error=str(exc))
        except _ETCD_ERRORS as exc:
            metrics.errors.labels("etcd").inc()
            return placement_pb2.PlaceResult(error_code="etcd", error=f"etcd unavailable: {exc}")
        e = placed.entry
        return placement_pb2.PlaceResult(placed=placement_pb2.PlaceResponse(
            node_id=placed.node, address=placed.address, epoch=e.epoch, region=e.region,
            created=placed.created, replicas=list(e.replicas), group=e.group,
        ))

    async def Status(  # noqa: N802
        self, request: placement_pb2.PlacementStatusRequest, context: grpc.aio.ServicerContext
    ) -> placement_pb2.PlacementStatusResponse:
        try:
            return await self._svc.status_info()
        except _ETCD_ERRORS as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"etcd unavailable: {exc}")
            raise  # unreachable: abort raises
