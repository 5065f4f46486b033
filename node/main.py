"""The host node process: RocksDB, the object runtime, the gRPC server, metrics, membership.

Start order: identity → storage → runtime → gRPC server → (cluster) membership registration.
Stop order (SIGTERM/SIGINT or ``stop()``): deregister → stop accepting and drain in-flight calls →
flush and evict every object → close RocksDB.
"""

from __future__ import annotations

import enum
import gc
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from duro import _tracing, tls
from duro._app import App, load_app
from duro._log import set_process_context
from duro._metrics import start_metrics_server, stop_metrics_server
from duro._runner import stop_on_signals
from duro.node.config import NodeConfig
from duro.node.metrics import NodeCollector
from duro.node.runtime.host import ObjectHost
from duro.node.runtime.websockets import SocketHub
from duro.node.server import HealthStatus, NodeGrpcServer
from duro.node.storage.engine import StorageEngine

__all__ = ["NodeProcess", "run_node", "node_identity"]

log = logging.getLogger("duro.node")


class Status(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def node_identity(data_dir: Path, configured: str = "") -> str:
    """The node's id: configured, else kept in ``data_dir/node_id`` across restarts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "node_id"
    if path.exists():
        stored = path.read_text().strip()
        if configured and configured != stored:
            raise ValueError(
                f"data dir {data_dir} belongs to node {stored!r}, not {configured!r}"
            )
        return stored
    node_id = configured or "node-" + uuid.uuid4().hex[:12]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n")
    os.replace(tmp, path)
    return node_id


class NodeProcess:
    """Everything one host node runs; ``start()``, idempotent ``stop()``, ``async with``."""

    def __init__(self, config: NodeConfig, app: App | None = None) -> None:
        self.config = config
        self.app = app or load_app(config.app)
        self.node_id = node_identity(Path(config.data_dir), config.node_id)
        # One certificate per process (duro.tls): this node's, for its gRPC port, its replication
        # stream, etcd and every connection it makes; None: plaintext.
        self.tls = tls.configure(config.tls, expect=tls.Identity("node", self.node_id))
        self.status = Status.CREATED
        self.engine: StorageEngine | None = None
        self.host: ObjectHost | None = None
        self.server: NodeGrpcServer | None = None
        self.cluster = None  # duro.node.cluster.NodeCluster when config.etcd is set
        self.metrics_port: int | None = None
        self.registry = CollectorRegistry()
        self.edge: Any = None  # duro.edge.main.EdgeProcess when config.edge (co-located edge)

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.config.advertise or self.server.address

    def _health(self) -> HealthStatus:
        status = "serving"
        if self.status is Status.STOPPING:
            status = "draining"
        elif self.cluster is not None and not self.cluster.serving:
            status = "fenced"
        active = self.host.active_count if self.host is not None else 0
        return HealthStatus(node_id=self.node_id, status=status, active_objects=active)

    async def start(self) -> None:
        cfg = self.config
        if cfg.gc_threshold > 0:
            # Modules and app code live forever: move them out of the collector's sight, and
            # collect less often (measured in bench/RESULTS.md, issue 2, "Where the time goes").
            gc.collect()
            gc.freeze()
            gc.set_threshold(cfg.gc_threshold, 20, 20)
        self.engine = StorageEngine(Path(cfg.data_dir) / "rocksdb", sync=cfg.sync_wal)
        ownership = outgoing = None
        if cfg.etcd:
            from duro.node.cluster import NodeCluster  # the cluster layer: etcd, placement

            self.cluster = NodeCluster(cfg, self.node_id, self.app)
            ownership, outgoing = self.cluster.ownership, self.cluster.router
        self.host = ObjectHost(
            self.engine, self.app.bindings, cfg, vars=self.app.vars,
            ownership=ownership, outgoing=outgoing, namespace_class=self.app.namespace_class,
            deleted_classes=self.app.deleted_namespaces(),
        )
        await self.host.start()
        # Client WebSockets reach this node's objects through edges (hibernation API).
        self.host.sockets = SocketHub(self.host)
        self.server = NodeGrpcServer(
            self.host, cfg.listen, health=self._health, sockets=self.host.sockets,
            extra=[self.cluster.add_to] if self.cluster is not None else [],
            tls_material=self.tls, max_call_bytes_in_flight=cfg.max_call_bytes_in_flight,
        )
        await self.server.start()
        if cfg.metrics_port >= 0:  # before registering: the registration names its address
            self.registry.register(NodeCollector(self.host, self.node_id, self.cluster,
                                                 self.server.servicer))
            host = cfg.listen.rsplit(":", 1)[0] or "127.0.0.1"
            self.metrics_port = start_metrics_server(host, cfg.metrics_port, self.registry)
        if self.cluster is not None:
            await self.cluster.start(self.address, self.host, metrics_port=self.metrics_port or 0)
            # Calls this process makes to objects it serves skip the wire (client/router.py).
            self.cluster.router.local = (self.address, self.server.servicer.invoke_local)
            self.cluster.router.local_fetch = self.server.servicer.invoke_local_fetch
            if cfg.edge:
                self.edge = self._colocated_edge()
                await self.edge.start()
        self.status = Status.RUNNING
        log.info(
            "node %s serving app %r on %s (region %s, data %s, wal %s)",
            self.node_id, self.app.name, self.address, cfg.region, cfg.data_dir,
            "synced" if cfg.sync_wal else "UNSYNCED (process-crash durable only)",
        )

    def _colocated_edge(self) -> Any:
        """This region's edge in this process, routing with the node's Router (so calls to this
        node's objects stay in-process) under the node's certificate."""
        from duro.edge.config import load_edge_config
        from duro.edge.main import EdgeProcess, quiet_access_log

        cfg = self.config
        assert self.cluster is not None
        edge_cfg = load_edge_config(cfg.edge_config, overrides={
            "app": cfg.app, "etcd": cfg.etcd, "cluster": cfg.cluster, "region": cfg.region,
            "edge_id": f"node:{self.node_id}", "tls_ca": cfg.tls_ca, "tls_cert": cfg.tls_cert,
            "tls_key": cfg.tls_key, "log_level": cfg.log_level,
        })
        quiet_access_log(edge_cfg)
        return EdgeProcess(edge_cfg, self.app, router=self.cluster.router)

    async def stop(self, grace: float = 5.0) -> None:
        if self.status in (Status.STOPPING, Status.STOPPED):
            return
        self.status = Status.STOPPING
        if self.edge is not None:  # clients first: close their sockets (1001), stop HTTP
            await self.edge.stop(grace)
        if self.cluster is not None:
            await self.cluster.stop()
        if self.server is not None:
            await self.server.stop(grace)
        if self.host is not None:
            if self.host.sockets is not None:
                await self.host.sockets.close()
            await self.host.close(grace)
        if self.engine is not None:
            self.engine.close()
        if self.metrics_port is not None:
            stop_metrics_server(self.metrics_port)
        self.status = Status.STOPPED
        log.info("node %s stopped", self.node_id)

    async def __aenter__(self) -> NodeProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_node(config: NodeConfig, *, ready_line: bool = True) -> None:
    """Run a node until SIGTERM or SIGINT, then stop it gracefully."""
    stop = stop_on_signals()
    node = NodeProcess(config)
    set_process_context(node_id=node.node_id, region=config.region)
    _tracing.configure("duro-node", instance=node.node_id)  # DURO_TRACING; off by default
    await node.start()
    if ready_line:
        # One machine-readable line for supervisors and tests.
        edge = node.edge
        extra = (f" http={edge.http_address} grpc={edge.grpc_address or '-'} "
                 f"admin={edge.admin_address or '-'} edge_id={edge.edge_id}" if edge else "")
        print(f"DURO-NODE-READY node_id={node.node_id} address={node.address} "
              f"metrics_port={node.metrics_port or 0}{extra}", flush=True)
    try:
        await stop.wait()
    finally:
        await node.stop()
        _tracing.shutdown()
