"""The edge process: ``duro edge``. One region's HTTP/WebSocket entry and gRPC ``Gateway``.

Start order: app → Router (etcd: directory and live nodes) → socket links to the nodes → HTTP
server → Gateway → admin listener (health, metrics). Stop order (SIGTERM/SIGINT or ``stop()``):
stop accepting HTTP, close every client WebSocket with 1001 (going away) so objects see
``web_socket_close``, stop the Gateway (grace), close the node links and the Router, stop the
admin listener.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import enum
import logging
import resource
import uuid
from pathlib import Path
from typing import Sequence

from aiohttp import web
from grpc import aio

from duro import _tracing, tls
from duro._app import App, load_app
from duro._config import add_dataclass_flags, flags_from_args
from duro._namespace import Env, Namespace
from duro._runner import stop_on_signals
from duro._transport import PORT_NOT_SHARED, message_limits
from duro.client.router import Router
from duro.client import _bindings_of
from duro.edge import access_log
from duro.edge.admin import AdminServer
from duro.edge.admission import EdgeInvoker
from duro.edge.console import make_console
from duro.edge.config import ENV_PREFIX, EdgeConfig, load_edge_config, split_hostport
from duro.edge.gateway import GatewayServicer
from duro.edge.http import EdgeHttp
from duro.edge.limits import ClientBuckets
from duro.edge.metrics import EdgeMetrics
from duro.edge.sockets import SocketManager
from duro.edge.tokens import TokenStore

__all__ = ["EdgeProcess", "run_edge", "main", "quiet_access_log"]

log = logging.getLogger("duro.edge")

_FD_RESERVE = 256  # descriptors kept for node streams, etcd, files and refusing connections


def return_freed_memory(threshold: int = 1 << 20) -> None:
    """Give large buffers (request bodies, WebSocket messages) back to the OS once freed.

    glibc serves allocations above its mmap threshold from their own mappings, unmapped on free,
    but raises the threshold to the size of each such block freed (up to 32 MiB): after one
    15 MiB body, the next ones come from the heap and stay in the process after they are freed
    (eight concurrent 15 MiB bodies once left an edge at ~630 MiB). A fixed threshold keeps every
    allocation above 1 MiB in its own mapping. Not glibc: nothing to do.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD (also turns the dynamic threshold off)
    except (OSError, AttributeError):
        pass


def open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (as Go's runtime does: an
    edge holds a descriptor per client) and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


class Status(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class EdgeProcess:
    """Everything one edge runs; ``start()``, idempotent ``stop(grace)``, ``async with``.

    Given a ``router``, the edge is **co-located** in a host node's process (``duro node --edge``,
    docs/architecture.md): it routes with the node's Router, whose calls to objects of that node
    stay in-process, and runs under the node's certificate (the process configured it; the node
    may attach socket streams only as the edge ``node:<its id>``, node/socket_server.py). The
    router's lifecycle is then the node's.
    """

    def __init__(self, config: EdgeConfig, app: App | None = None, *,
                 router: Router | None = None) -> None:
        self.config = config
        self.app = app or load_app(config.app)
        self._own_router = router is None
        if router is None:
            # With TLS the edge is the edge its certificate names (nodes accept its socket stream
            # only under that id, node/socket_server.py).
            cert = config.tls.load() if config.tls is not None else None
            self.edge_id = (config.edge_id or (cert.identity.id if cert is not None else "")
                            or f"edge-{config.region}-{uuid.uuid4().hex[:8]}")
            tls.configure(config.tls, expect=tls.Identity("edge", self.edge_id))
        else:
            if not config.edge_id:
                raise ValueError("a co-located edge needs its edge_id (node:<node id>)")
            self.edge_id = config.edge_id
        self.status = Status.CREATED
        self.metrics = EdgeMetrics()
        self.router = router or Router(config.etcd, cluster=config.cluster, region=config.region,
                                       call_timeout=config.call_timeout,
                                       cache_entries=config.directory_cache)
        # Calls from HTTP clients pass the per-client limit on new objects (edge/admission.py).
        buckets = (ClientBuckets(config.new_objects_per_second, config.new_objects_burst)
                   if config.new_objects_per_second > 0 else None)
        refused = self.metrics.refused.labels(reason="new_objects")
        self.invoker = EdgeInvoker(self.router, buckets, on_refused=refused.inc)
        self.env = Env(
            {name: Namespace(name, self.app.namespace_class(b.class_name), self.invoker,
                             caller_region=config.region)
             for name, b in self.app.bindings.items()},
            dict(self.app.vars),
        )
        self.sockets = SocketManager(self.edge_id, self.router, config, self.metrics)
        self.http = EdgeHttp(self.app, self.env, self.sockets, config, self.metrics,
                             edge_id=self.edge_id)
        # The Gateway's credentials (docs/security.md); a bad tokens file stops the edge here,
        # before it listens on anything.
        self.gateway_tokens = TokenStore(config.gateway_tokens_file, config.gateway_tokens,
                                         known_bindings=self.app.bindings)
        self._runner: web.ServerRunner | None = None
        self._grpc: aio.Server | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.max_connections = 0
        self.admin = (AdminServer(config.admin_listen, self.http.health, self.metrics.registry,
                                  console=make_console(config, self.router,
                                                       _bindings_of(self.app)))
                      if config.admin_listen else None)

    @property
    def http_address(self) -> str:
        return f"{split_hostport(self.config.http_listen)[0]}:{self.http_port}"

    @property
    def admin_address(self) -> str:
        return self.admin.address if self.admin is not None else ""

    @property
    def grpc_address(self) -> str:
        if not self.grpc_port:
            return ""
        return f"{split_hostport(self.config.grpc_listen)[0]}:{self.grpc_port}"

    async def start(self) -> None:
        cfg = self.config
        return_freed_memory()
        if self._own_router:
            await self.router.start()
        await self.sockets.start()
        limit = open_file_limit()
        self.max_connections = cfg.max_connections or max(1, limit - _FD_RESERVE)
        if self.max_connections > limit - 16:
            log.warning("max_connections %d is close to this process's limit of %d open files: "
                        "clients may be refused by the kernel instead of with 503",
                        self.max_connections, limit)
        server = self.http.make_server(
            self.max_connections,
            access_log=logging.getLogger(access_log.LOGGER_NAME) if cfg.access_log else None,
            access_log_class=access_log.BufferedAccessLogger,
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        host, port = split_hostport(cfg.http_listen)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if cfg.grpc_listen:
            server = aio.server(options=[PORT_NOT_SHARED, *message_limits()])
            if not self.gateway_tokens.principals:
                log.warning("the Gateway has no tokens: every call is refused (UNAUTHENTICATED);"
                            " see --gateway-tokens-file and docs/security.md")
            GatewayServicer(self.env, self.metrics, app=self.app, tokens=self.gateway_tokens,
                            budget=self.http.bodies).register(server)
            self.grpc_port = server.add_insecure_port(cfg.grpc_listen)
            if not self.grpc_port:
                raise OSError(f"cannot bind the Gateway to {cfg.grpc_listen}")
            await server.start()
            self._grpc = server
        if self.admin is not None:
            await self.admin.start()
        self.status = Status.RUNNING
        log.info("edge %s (region %s) serving app %r: HTTP %s, gRPC %s, admin %s (at most %d "
                 "connections)", self.edge_id, cfg.region, self.app.name, self.http_address,
                 self.grpc_address or "off", self.admin_address or "off", self.max_connections)

    async def stop(self, grace: float = 5.0) -> None:
        if self.status in (Status.STOPPING, Status.STOPPED):
            return
        self.status = Status.STOPPING
        if self._runner is not None:
            # Stop accepting first; WebSocket handlers end when their sockets close below.
            for site in list(self._runner.sites):
                await site.stop()
        await self.sockets.close(grace)
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.admin is not None:  # the console reads through the router: stop it first
            await self.admin.stop()
        if self._own_router:
            await self.router.close()
        access_log.flush()
        self.status = Status.STOPPED
        log.info("edge %s stopped", self.edge_id)

    async def __aenter__(self) -> EdgeProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_edge(config: EdgeConfig, *, ready_line: bool = True) -> None:
    """Run an edge until SIGTERM or SIGINT, then stop it gracefully."""
    stop = stop_on_signals()
    edge = EdgeProcess(config)
    _tracing.configure("duro-edge", instance=edge.edge_id)  # DURO_TRACING; off by default
    try:
        await edge.start()
        if ready_line:
            # One machine-readable line for supervisors (duro dev) and tests.
            print(f"DURO-EDGE-READY edge_id={edge.edge_id} region={config.region} "
                  f"http={edge.http_address} grpc={edge.grpc_address or '-'} "
                  f"admin={edge.admin_address or '-'}", flush=True)
        await stop.wait()
    finally:
        await edge.stop()
        _tracing.shutdown()


def quiet_access_log(config: EdgeConfig) -> None:
    """``access_log = false`` silences the access log; otherwise it follows the process's log
    level (INFO and below write it, WARNING does not; edge/access_log.py)."""
    logging.getLogger(access_log.LOGGER_NAME).setLevel(
        logging.NOTSET if config.access_log else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duro edge", description="run one edge")
    parser.add_argument("--config", help="TOML file with edge settings")
    add_dataclass_flags(parser, EdgeConfig, env_prefix=ENV_PREFIX)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from duro._log import configure_logging, set_process_context
    from duro._runner import run as _run

    args = build_parser().parse_args(argv)
    config = load_edge_config(Path(args.config) if args.config else None,
                              overrides=flags_from_args(args))
    configure_logging(config.log_level, config.log_json)
    set_process_context(region=config.region)
    quiet_access_log(config)
    _run(run_edge(config))
    return 0
