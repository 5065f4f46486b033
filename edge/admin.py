"""The edge's admin listener (``admin_listen``, 127.0.0.1:8789 by default): ``GET /health``,
``GET /metrics`` and the console under ``/console/`` (duro.console, docs/console.md), apart from
the public HTTP port.

Health lists node addresses and metrics describe traffic: neither is for the public, so they
live on a listener of their own that a deployment keeps private (loopback by default; in
Kubernetes the pod's address, for the kubelet's probes and Prometheus, behind the
NetworkPolicy). It answers on the edge's event loop, so a health check also finds a loop that
is stuck.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from duro.edge.config import split_hostport

__all__ = ["AdminServer"]

log = logging.getLogger("duro.edge.admin")


class AdminServer:
    """``/health`` (JSON from ``health()``) and ``/metrics`` (Prometheus text of ``registry``)."""

    def __init__(self, listen: str, health: Callable[[], dict[str, Any]],
                 registry: CollectorRegistry, console: Any = None) -> None:
        self.listen = listen
        self.console = console  # a duro.console.web.ConsoleWeb, or None
        self._health = health
        self._registry = registry
        self._runner: web.ServerRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{split_hostport(self.listen)[0]}:{self.port}" if self.port else ""

    async def start(self) -> None:
        runner = web.ServerRunner(web.Server(self._handle), handle_signals=False,
                                  shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        host, port = split_hostport(self.listen)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            self._runner = None
            raise
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.console is not None:
            await self.console.close()  # ends its event streams, so cleanup need not wait
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.console is not None and (request.path == "/console"
                                         or request.path.startswith("/console/")):
            return await self.console.handle(request)
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": {"code": "invalid_argument",
                                                "message": "the admin listener is read-only"}},
                                     status=405)
        if request.path == "/health":
            return web.json_response(self._health())
        if request.path == "/metrics":
            return web.Response(body=generate_latest(self._registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})
        return web.json_response({"error": {"code": "not_found", "message":
                                            "the admin listener serves /health, /metrics "
                                            "and /console/"}},
                                 status=404)
