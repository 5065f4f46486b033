"""The console's HTTP side (docs/console.md), mounted under ``/console/`` on the edge's admin
listener (edge/admin.py):

=================================  =============================================================
``GET /console/``                  the page (static/index.html) and its modules (``static/``)
``GET /console/api/snapshot``      the latest cluster snapshot with rates (snapshot.py)
``GET /console/api/events``        server-sent events: snapshots and changes as they happen
``GET /console/api/object``        the inspector: ``?binding=&name=`` or ``?id=`` (objects.py)
``GET /console/api/object/events`` server-sent events: that object, every ``object_interval`` s
``GET /console/api/session``       whether admin actions are available, and why not
``POST /console/api/migrate``      JSON ``{binding, name | id, to_node | to_region}``  (admin)
``POST /console/api/drain``        JSON ``{node}``: starts a drain, answers at once   (admin)
``POST /console/api/undrain``      JSON ``{node}``                                     (admin)
=================================  =============================================================

Reads are unauthenticated, like ``/health`` and ``/metrics`` beside them: the admin listener is
private (loopback by default). Actions need ``Authorization: Bearer <console admin token>``
(a token of ``console_admin_tokens_file``, checked like Gateway tokens: edge/tokens.py) and are
made with the admin certificate the edge is given for them (``console_admin_tls_cert``/``_key``;
without TLS, none is needed). Without a token file, actions are off and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib import resources
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from duro.console.feed import ConsoleFeed
from duro.console.objects import inspect_object, object_id_of
from duro.console.snapshot import NodeSampler, cluster_snapshot
from duro.errors import DuroError, InvalidArgumentError

__all__ = ["ConsoleWeb", "PREFIX"]

log = logging.getLogger("duro.console")

PREFIX = "/console"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_ACTION_BODY = 4096


def _static(name: str) -> tuple[bytes, str] | None:
    if "/" in name or name.startswith(".") or not name:
        return None
    suffix = name[name.rfind("."):]
    if suffix not in _TYPES:
        return None
    path = resources.files("duro.console") / "static" / name
    try:
        return path.read_bytes(), _TYPES[suffix]
    except (FileNotFoundError, IsADirectoryError):
        return None


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=_SECURITY_HEADERS)


class ConsoleWeb:
    """The console of one edge: its feed, its node channels, its routes.

    ``actions`` performs an admin action with the admin credential (edge/main.py makes it);
    ``authenticate(authorization) -> str`` returns who holds the bearer token or raises; either
    None turns actions off (``actions_off`` says why)."""

    def __init__(self, *, etcd: Any, router: Any, cluster: str, bindings: dict[str, str],
                 sampler: NodeSampler, actions: Any = None,
                 authenticate: Callable[[str | None], str] | None = None,
                 actions_off: str = "", interval: float = 1.0,
                 object_interval: float = 2.0) -> None:
        self.etcd, self.router, self.cluster = etcd, router, cluster
        self.bindings = bindings
        self.sampler = sampler
        self.actions = actions
        self.authenticate = authenticate
        self.actions_off = actions_off or ("" if actions and authenticate else
                                           "admin actions are not configured on this edge")
        self.object_interval = object_interval
        self.feed = ConsoleFeed(self.snapshot, interval=interval)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()

    async def snapshot(self) -> dict[str, Any]:
        return await cluster_snapshot(self.etcd, self.cluster, self.sampler)

    async def close(self) -> None:
        self._closed.set()
        await self.feed.close()
        for t in list(self._tasks):
            t.cancel()
        await self.sampler.close()

    # -- dispatch ----------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == PREFIX:
            raise web.HTTPFound(PREFIX + "/")
        rest = path[len(PREFIX) + 1:]
        if request.method in ("GET", "HEAD"):
            if rest in ("", "index.html"):
                return self._file("index.html")
            if rest.startswith("static/"):
                return self._file(rest[len("static/"):])
            if rest == "api/snapshot":
                msg = self.feed.last or {"type": "snapshot", "snapshot": await self.snapshot(),
                                         "rates": None}
                return web.json_response(msg, headers=_SECURITY_HEADERS)
            if rest == "api/events":
                return await self._events(request)
            if rest == "api/session":
                return web.json_response({"actions": not self.actions_off,
                                          "why_not": self.actions_off or None,
                                          "cluster": self.cluster,
                                          "bindings": sorted(self.bindings)},
                                         headers=_SECURITY_HEADERS)
            if rest == "api/object":
                try:
                    return web.json_response(await self._inspect(request.query),
                                             headers=_SECURITY_HEADERS)
                except InvalidArgumentError as exc:
                    return _error(400, "invalid_argument", str(exc))
            if rest == "api/object/events":
                return await self._object_events(request)
        elif request.method == "POST" and rest in ("api/migrate", "api/drain", "api/undrain"):
            return await self._action(request, rest[len("api/"):])
        elif rest.startswith("api/") or rest == "":
            return _error(405, "invalid_argument", f"{request.method} is not allowed here")
        return _error(404, "not_found", f"no console page {path!r}")

    def _file(self, name: str) -> web.Response:
        found = _static(name)
        if found is None:
            return _error(404, "not_found", f"no console file {name!r}")
        body, ctype = found
        return web.Response(body=body, headers={**_SECURITY_HEADERS, "Content-Type": ctype})

    async def _inspect(self, query: Any) -> dict[str, Any]:
        return await inspect_object(self.etcd, self.router, self.cluster, self.bindings,
                                    self.sampler, binding=query.get("binding", ""),
                                    name=query.get("name", ""), object_id=query.get("id", ""))

    # -- server-sent events ----------------------------------------------------------------
    async def _sse(self, request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**_SECURITY_HEADERS,
                                           "Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n\n")
        return resp

    @staticmethod
    async def _send(resp: web.StreamResponse, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":"), allow_nan=False, default=str)
        await resp.write(f"event: {message.get('type', 'message')}\ndata: {data}\n\n".encode())

    async def _events(self, request: web.BaseRequest) -> web.StreamResponse:
        resp = await self._sse(request)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            async with self.feed.subscribe() as messages:
                async for m in messages:
                    await self._send(resp, m)
        return resp

    async def _object_events(self, request: web.BaseRequest) -> web.StreamResponse:
        try:  # a bad query is an error before the stream starts
            object_id_of(self.bindings, request.query.get("binding", ""),
                         request.query.get("name", ""), request.query.get("id", ""))
        except InvalidArgumentError as exc:
            return _error(400, "invalid_argument", str(exc))
        resp = await self._sse(request)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while not self._closed.is_set():
                try:
                    info = await self._inspect(request.query)
                    await self._send(resp, {"type": "object", **info})
                except (DuroError, OSError) as exc:
                    await self._send(resp, {"type": "error", "message": str(exc)})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), self.object_interval)
        return resp

    # -- admin actions -----------------------------------------------------------------------
    async def _action(self, request: web.BaseRequest, name: str) -> web.Response:
        if self.actions_off:
            return _error(403, "permission_denied", self.actions_off)
        assert self.authenticate is not None and self.actions is not None
        try:
            who = self.authenticate(request.headers.get("Authorization"))
        except Exception as exc:  # edge.tokens.Unauthenticated
            return _error(401, "unauthenticated", str(exc))
        raw = b""
        while len(raw) <= MAX_ACTION_BODY:  # read() returns what has arrived: loop to the end
            chunk = await request.content.read(MAX_ACTION_BODY + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
        if len(raw) > MAX_ACTION_BODY:
            return _error(413, "invalid_argument", "the request body is too large")
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return _error(400, "invalid_argument", f"the body must be a JSON object: {exc}")
        log.info("console action %s by %s: %s", name, who, body)
        try:
            if name == "drain":
                node = str(body.get("node") or "")
                if not node:
                    raise InvalidArgumentError("give the node to drain")
                await self.actions.set_draining(node, True)  # before answering: visible at once
                task = asyncio.get_running_loop().create_task(self.actions.drain(node))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return web.json_response({"node": node, "draining": True, "started": True},
                                         status=202, headers=_SECURITY_HEADERS)
            if name == "undrain":
                node = str(body.get("node") or "")
                if not node:
                    raise InvalidArgumentError("give the node to undrain")
                return web.json_response(await self.actions.set_draining(node, False),
                                         headers=_SECURITY_HEADERS)
            oid = object_id_of(self.bindings, str(body.get("binding") or ""),
                               str(body.get("name") or ""), str(body.get("id") or ""))
            res = await self.actions.migrate(oid, to_node=body.get("to_node") or None,
                                             to_region=body.get("to_region") or None)
            return web.json_response(res, status=200 if res.get("outcome") == "released" else 409,
                                     headers=_SECURITY_HEADERS)
        except InvalidArgumentError as exc:
            return _error(400, "invalid_argument", str(exc))
        except DuroError as exc:
            return _error(503, "unavailable", str(exc))
