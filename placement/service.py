"""The placement service: plain logic (:class:`PlacementService`) under a thin gRPC adapter.

One replica leads (elected through etcd). The leader is the replica groups' configuration manager
(``placement.groups``: creates, fails over, re-replicates, hands back; docs/replication.md), gives
directory partitions a group on first use and imports a directory from before partitions
(``placement.partitions``; docs/directory.md), and moves objects toward their callers
(``placement.rebalancer``). Objects are placed by their directory partitions, on the nodes
(``node.directory.service``), not here: placement throughput grows with the nodes.

A replica that does not lead answers ``AssignPartitions`` with FAILED_PRECONDITION and trailing
metadata ``duro-leader-id`` / ``duro-leader-address`` (UNAVAILABLE while no leader is known); it
does not forward. ``Status`` is answered by every replica.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any

import grpc
from etcd3aio import EtcdError
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from duro import tls
from duro._pb import placement_pb2, placement_pb2_grpc
from duro._transport import PORT_NOT_SHARED
from duro.client.directory import DirectoryClient
from duro.node.access import CALLERS
from duro.node.directory.service import legacy_entry
from duro.placement.config import PlacementConfig
from duro.placement.election import Election, LeaderInfo
from duro.placement.groups import GroupCollector, GroupManager
from duro.placement.partitions import PartitionManager
from duro.placement.planner import PlannerConfig
from duro.placement.rebalancer import Rebalancer
from duro.topology.etcdkv import etcd_client
from duro.topology.nodes import NodeInfo, NodeView
from duro.topology.replication_settings import ReplicationSettings

__all__ = ["NotLeader", "PlacementService", "PlacementServiceStatus"]

log = logging.getLogger("duro.placement")

_ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)
LEADER_ID_MD = "duro-leader-id"
LEADER_ADDRESS_MD = "duro-leader-address"
IMPORT_INTERVAL = 1.0


class NotLeader(Exception):
    """This replica does not lead; ``leader`` is the current leader if known."""

    def __init__(self, leader: LeaderInfo | None) -> None:
        where = f"{leader.leader_id} at {leader.address}" if leader else "unknown"
        super().__init__(f"not the placement leader; leader is {where}")
        self.leader = leader


class PlacementServiceStatus(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.assigned = Counter(
            "duro_placement_partitions_assigned", "directory partitions given a group",
            registry=registry)
        self.errors = Counter(
            "duro_placement_errors_total", "AssignPartitions failures", ["reason"],
            registry=registry)
        self.leader = Gauge("duro_placement_is_leader_bool", "1 if leading", registry=registry)
        self.nodes = Gauge("duro_placement_live_nodes_count", "live nodes", registry=registry)


class PlacementService:
    """One placement replica: election, live-node view, groups, partitions, gRPC server."""

    def __init__(self, config: PlacementConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.replica_id = config.effective_replica_id
        self.status = PlacementServiceStatus.CREATED
        self.registry = registry or CollectorRegistry()
        self.metrics = _Metrics(self.registry)
        self.address = config.listen
        self.metrics_port: int | None = None
        # One certificate per process (duro.tls): the placement identity, for etcd, the nodes
        # and this service's port; None: plaintext (insecure).
        self.tls = tls.configure(tls.from_settings(config.tls_ca, config.tls_cert, config.tls_key),
                                 expect=tls.Identity("placement"))
        self._client = etcd_client(config.etcd)
        self.nodes = NodeView(self._client, config.cluster,
                              on_update=lambda *_: self.metrics.nodes.set(len(self.nodes.nodes)))
        self.election: Election | None = None
        self._server: grpc.aio.Server | None = None
        self._http: Any = None
        self.rebalancer: Rebalancer | None = None
        self.groups: GroupManager | None = None
        self.partitions: PartitionManager | None = None
        self.directory: DirectoryClient | None = None
        self._background: list[asyncio.Task[None]] = []

    def _guard(self):  # noqa: ANN202
        e = self.election
        return e.guard if e is not None and e.is_leader() else None

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self.status = PlacementServiceStatus.STARTING
        await self._client.connect()
        await self.nodes.start()
        self._server = grpc.aio.server(
            options=[PORT_NOT_SHARED],
            interceptors=tls.authorizer({"/duro.v1.Placement/": CALLERS}, tls=self.tls))
        placement_pb2_grpc.add_PlacementServicer_to_server(_Servicer(self), self._server)
        host, _, port = self.config.listen.rpartition(":")
        bound = tls.add_port(self._server, f"{host}:{port}", tls=self.tls)
        self.address = f"{host}:{bound}"
        await self._server.start()
        self.election = Election(
            self._client,
            self.config.cluster,
            self.replica_id,
            self.config.advertise or self.address,
            ttl=self.config.leader_ttl,
            on_change=self._leadership_changed,
        )
        self.groups = GroupManager(
            self._client, self.config.cluster, self.nodes, guard=self._guard,
            settings=ReplicationSettings(self.config.replicas, self.config.min_in_sync),
            replica_id=self.replica_id, interval=self.config.group_interval,
            replace_after=self.config.replace_after,
        )
        await self.groups.start()
        self.partitions = PartitionManager(self._client, self.config.cluster, self.groups.groups,
                                           self._guard, self.config.partitions)
        await self.partitions.start()
        self.directory = DirectoryClient(self._client, self.config.cluster, self.nodes,
                                         self.groups.groups, assign=self.assign_partitions)
        await self.directory.start()
        await self.election.start()
        self.registry.register(GroupCollector(self.groups))
        self._background.append(asyncio.create_task(self._leader_duties(), name="placement"))
        if self.config.rebalance:
            cfg = self.config
            self.rebalancer = Rebalancer(
                self.nodes, self.election.is_leader,
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

    def _leadership_changed(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)

    async def stop(self, grace: float = 2.0) -> None:
        """Resign leadership first (a standby takes over at once), then drain and close."""
        if self.status in (PlacementServiceStatus.STOPPING, PlacementServiceStatus.STOPPED):
            return
        self.status = PlacementServiceStatus.STOPPING
        for t in self._background:
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.rebalancer is not None:
            await self.rebalancer.stop()
        if self.groups is not None:
            await self.groups.stop()
        if self.election is not None:
            await self.election.stop()
        if self._server is not None:
            await self._server.stop(grace)
        if self.directory is not None:
            await self.directory.stop()
        if self.partitions is not None:
            await self.partitions.stop()
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

    # ---- the leader's duties -------------------------------------------------------------
    async def _leader_duties(self) -> None:
        """While leading: the directory settings, then any legacy directory's import."""
        settings_for: int | None = None
        while True:
            await asyncio.sleep(0.1 if settings_for is None else IMPORT_INTERVAL)
            guard = self._guard()
            if guard is None:
                settings_for = None
                continue
            assert self.partitions is not None and self.directory is not None
            try:
                if settings_for != guard.create_revision:
                    await self.partitions.ensure_settings()
                    settings_for = guard.create_revision
                s = self.partitions.settings
                if s is not None and s.legacy and self.groups is not None:
                    groups = self.groups.groups.all()
                    await self.partitions.import_legacy(
                        self.directory, lambda oid, raw: legacy_entry(oid, raw, groups))
            except Exception as exc:  # etcd, or groups not there yet: next round
                log.info("placement: %r; again in a moment", exc)

    async def assign_partitions(self, partitions: list[int]) -> list[int]:
        if self._guard() is None or self.partitions is None:
            raise NotLeader(self.election.leader if self.election else None)
        before = len(self.partitions.view.items)
        groups = await self.partitions.assign(partitions)
        self.metrics.assigned.inc(len(self.partitions.view.items) - before)
        return groups

    async def status_info(self) -> placement_pb2.PlacementStatusResponse:
        election = self.election
        leader = election.leader if election else None
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
                for n in sorted(self.nodes.nodes.values(), key=_node_order)
            ],
        )


def _node_order(n: NodeInfo) -> str:
    return n.node_id


class _Servicer(placement_pb2_grpc.PlacementServicer):
    """gRPC adapter: translate requests and errors, nothing else."""

    def __init__(self, service: PlacementService) -> None:
        self._svc = service

    async def AssignPartitions(self, request, context):  # noqa: N802, ANN001, ANN201
        try:
            groups = await self._svc.assign_partitions(list(request.partitions))
        except NotLeader as exc:
            self._svc.metrics.errors.labels("not_leader").inc()
            await self._abort_not_leader(context, str(exc))
        except ValueError as exc:
            self._svc.metrics.errors.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (RuntimeError, *_ETCD_ERRORS) as exc:
            self._svc.metrics.errors.labels("unavailable").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return placement_pb2.AssignPartitionsResponse(groups=groups)

    async def _abort_not_leader(self, context: grpc.aio.ServicerContext, message: str) -> None:
        leader = self._svc.election.leader if self._svc.election else None
        if leader is None or leader.leader_id == self._svc.replica_id:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no placement leader right now")
        md = ((LEADER_ID_MD, leader.leader_id), (LEADER_ADDRESS_MD, leader.address))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message, trailing_metadata=md)

    async def Status(  # noqa: N802
        self, request: placement_pb2.PlacementStatusRequest, context: grpc.aio.ServicerContext
    ) -> placement_pb2.PlacementStatusResponse:
        return await self._svc.status_info()
