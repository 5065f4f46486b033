"""The edge's HTTP entry (aiohttp): static files, the worker's ``fetch``, or the default route.

One request, in order:

0. Admission (docs/security.md): at most ``max_requests`` requests at once and at most
   ``max_body_bytes_in_flight`` body bytes held (503 beyond); the body must arrive in time (408)
   and fit ``max_body_bytes`` (413); connections and request heads are bounded by
   ``duro.edge.listener``. Health and metrics are not here: they are on the admin listener
   (``duro.edge.admin``); every path of this port belongs to the app.
1. ``GET /`` and ``/static/<file>`` serve the app's static directory (``static_dir``, default
   ``<app>/static`` or the first ``<app>/*/static``).
2. The request becomes a :class:`duro.Request` (absolute URL, headers, body; for the default
   route only its wire form, encoded once, with no Request/Response objects). A WebSocket upgrade
   (``Upgrade: websocket``) gets a socket id from the :class:`~duro.edge.sockets.SocketManager`,
   carried to the object in the ``Duro-Socket`` header (a client's own ``Duro-Socket`` header is
   dropped, so it cannot be forged).
3. The app's worker ``fetch(request, env)`` runs if the app defines one; else the default route
   ``/<binding lower-cased>/<name>/<rest>`` calls ``env.<BINDING>.get_by_name(name).fetch(request)``
   (``/<binding>/@<64 hex digits>/<rest>`` addresses an object by id; a percent-encoded name
   must decode to UTF-8, else 400, so that two spellings never reach one object).
4. Every call goes through the edge's ``Router`` with the edge's region (new objects are placed in
   this region; a client creating objects too fast gets 429, ``duro.edge.admission``). A 101
   answer completes the upgrade (``SocketManager.serve``); errors become JSON
   ``{"error": {"code", "message", "retryable", "overloaded"}}`` with a matching HTTP status.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import unquote, urlsplit

from aiohttp import web
from multidict import CIMultiDict

from duro import _codec, _tracing
from duro._app import App
from duro._http import Request, Response
from duro._namespace import Call, CallKind, Env, Namespace, env_bindings
from duro._transport import SOCKET_HEADER
from duro.edge.admission import NewObjectsLimitError, current_client
from duro.edge.config import EdgeConfig
from duro.edge.limits import ByteBudget
from duro.edge.bodies import BodyError, ClientBody
from duro.edge.listener import EdgeServer
from duro.edge.metrics import EdgeMetrics
from duro.edge.sockets import EdgeSocket, SocketManager
from duro.errors import DuroError, InvalidArgumentError, to_wire

__all__ = ["EdgeHttp", "error_status", "find_static_dir"]

log = logging.getLogger("duro.edge.http")
access_log = logging.getLogger("duro.edge.access")

# duro error code -> HTTP status
_STATUS = {
    "invalid_argument": 400, "invalid_id": 400, "invalid_value": 400, "config_error": 400,
    "method_not_found": 404, "not_found": 404, "object_error": 500, "overloaded": 503,
    "object_reset": 503, "unavailable": 503, "fenced": 503, "redirect": 503, "broken_stub": 503,
    "timeout": 504, "storage_limit": 507,  # 507 Insufficient Storage (RFC 4918)
    "rate_limited": 429,
}
# Hop-by-hop and framing headers aiohttp computes itself.
_SKIP_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive",
                          "upgrade"}


def error_status(exc: DuroError) -> int:
    return _STATUS.get(exc.code, 500)


def error_response(code: str, message: str, status: int, *, retryable: bool = False,
                   overloaded: bool = False, remote_type: str = "") -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, "retryable": retryable,
                            "overloaded": overloaded}
    if remote_type:
        body["remote_type"] = remote_type
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response({"error": body}, status=status, headers=headers)


def _overloaded(message: str) -> web.Response:
    return error_response("overloaded", message, 503, retryable=True, overloaded=True)


def find_static_dir(app: App, configured: str) -> Path | None:
    if configured:
        return Path(configured).resolve()
    own = app.root / "static"
    if own.is_dir():
        return own
    for sub in sorted(p for p in app.root.iterdir() if p.is_dir()):
        if (sub / "static" / "index.html").is_file():
            return sub / "static"
    return None


class EdgeHttp:
    """The aiohttp application of one edge."""

    def __init__(
        self, app: App, env: Env, sockets: SocketManager, config: EdgeConfig,
        metrics: EdgeMetrics, *, edge_id: str,
    ) -> None:
        self.app = app
        self.env = env
        self.sockets = sockets
        self.config = config
        self.metrics = metrics
        self.edge_id = edge_id
        # The default route reaches only the bindings duro.toml exposes (``[expose.X] http``);
        # one not exposed answers 404 exactly as one that does not exist (docs/security.md).
        self.routes: dict[str, Namespace] = {
            name.lower(): ns for name, ns in env_bindings(env).items() if app.exposure.http_open(name)
        }
        self.static = find_static_dir(app, config.static_dir)
        self._status_counters: dict[int, Any] = {}
        self._upstream = metrics.upstream_seconds.labels(kind="fetch")
        self.bodies = ByteBudget(config.max_body_bytes_in_flight)
        self.requests = 0  # being handled now (an upgraded WebSocket no longer counts)
        self.server: EdgeServer | None = None
        metrics.http_requests_in_flight.set_function(lambda: self.requests)
        metrics.http_body_bytes_in_flight.set_function(lambda: self.bodies.used)

    def make_server(self, max_connections: int, **handler_args: Any) -> EdgeServer:
        """aiohttp's low-level server: no router or middlewares (every request comes here), which
        saves time per request and memory per open WebSocket; with the connection cap and the
        request-head deadline of :class:`~duro.edge.listener.EdgeServer`."""
        cfg = self.config
        refused = self.metrics.refused

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any,
                         task: Any) -> web.BaseRequest:
            # (the body is read by ClientBody, which enforces max_body_bytes itself)
            return web.BaseRequest(message, payload, protocol, writer, task, protocol._loop,
                                   client_max_size=cfg.max_body_bytes)

        self.server = EdgeServer(
            self.handle, request_factory=make_request, max_connections=max_connections,
            header_timeout=cfg.header_timeout, idle_timeout=cfg.idle_timeout,
            on_refused=lambda reason: refused.labels(reason=reason).inc(), **handler_args)
        self.metrics.http_connections.set_function(lambda: self.server.open if self.server else 0)
        return self.server

    # -- one request --------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.server is not None:
            self.server.head_received(request.protocol)
        if self.requests >= self.config.max_requests:
            self.metrics.refused.labels(reason="requests").inc()
            resp: Any = _overloaded("this edge handles its maximum of requests at once; retry")
            self._count(resp.status)
            if self.server is not None:
                self.server.answered(request.protocol)
            return resp
        self.requests += 1
        current_client.set(request.remote or "")
        try:
            try:
                if _tracing.tracer is None:
                    resp = await self._handle(request)
                else:
                    resp = await self._handle_traced(request)
            except web.HTTPException as exc:
                resp = exc
            except ConnectionError:  # the client went away mid-request: nobody to answer
                resp = error_response("invalid_argument", "connection lost", 400)
                resp.force_close()
            except Exception:  # the edge's own bug: answer 500, keep serving
                log.exception("edge failed on %s %s", request.method, request.path)
                resp = error_response("internal", "edge error", 500)
        finally:
            self.requests -= 1
        if isinstance(resp, EdgeSocket):
            # Upgraded: serve the socket from here, so that _handle's frame (the request's
            # copy, headers, body, the object's answer) is freed for the socket's lifetime.
            self._count(101)
            return await self.sockets.serve(request, resp)
        self._count(resp.status)
        if self.server is not None:
            self.server.answered(request.protocol)
        return resp

    def _count(self, status: int) -> None:
        counter = self._status_counters.get(status)
        if counter is None:
            counter = self._status_counters[status] = self.metrics.http_requests.labels(
                status=str(status))
        counter.inc()

    async def _handle_traced(self, request: web.BaseRequest) -> web.StreamResponse | EdgeSocket:
        """``_handle`` in a span (tracing on), a child of the client's ``traceparent`` if any."""
        attrs = {"http.request.method": request.method, "url.path": request.path,
                 "duro.edge.id": self.edge_id, "duro.region": self.config.region}
        with _tracing.span(f"edge {request.method}", kind="server", attributes=attrs,
                           parent=_tracing.extract(request.headers)) as span:
            resp = await self._handle(request)
            status = 101 if isinstance(resp, EdgeSocket) else resp.status
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            return resp

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse | EdgeSocket:
        path = request.path
        if self.static is not None and request.method in ("GET", "HEAD"):
            static = self._static(path)
            if static is not None:
                return static
        rh = request.headers
        # Every header line, repeated names included, in order (duro.Headers is multi-valued):
        # the default route encodes these pairs as they are, with no Request object. A client's
        # own Duro-Socket is dropped: it cannot be forged.
        items = [(k, v) for k, v in rh.items() if k.lower() != "duro-socket"]
        sock = None
        if rh.get("Upgrade", "").lower() == "websocket":
            sock = self.sockets.new_socket()
            items.append((SOCKET_HEADER, self.sockets.upgrade_mark(sock)))
        client_body: ClientBody | None = None
        try:
            body: bytes | bytearray = b""
            stream: AsyncIterator[bytes] | None = None  # a body larger than stream_threshold
            if request.body_exists:
                cfg = self.config
                client_body = ClientBody(request, max_bytes=cfg.max_body_bytes,
                                         budget=self.bodies, timeout=cfg.body_timeout,
                                         min_rate=cfg.body_min_rate)
                try:
                    body = await client_body.buffer(cfg.stream_threshold)
                except BodyError as exc:
                    return self._body_refused(exc)
                if not client_body.complete:
                    stream, body = client_body.stream(bytes(body)), b""
            url = f"{request.scheme}://{request.host}{request.raw_path}"
            started = time.perf_counter()
            resp_stream: AsyncIterator[bytes] | None = None
            try:
                if self.app.worker_fetch is not None:
                    req = Request(url, method=request.method, headers=items,
                                  body=stream if stream is not None else bytes(body))
                    body = b""
                    resp = await self._worker(req)
                    status, headers = resp.status, resp.headers.items()
                    if resp.streamed:
                        resp_body, resp_stream = b"", resp.__aiter__()
                    else:
                        resp_body = resp.body
                else:
                    # One msgpack encode of exactly what Request.to_wire() would produce.
                    payload = _codec.encode(
                        [url, request.method.upper(), items, body])
                    body = b""  # only its encoded copy travels on
                    answer, resp_stream = await self._default_route(url, payload, stream)
                    status, headers, resp_body, *_ = _codec.decode(answer)
                out = None if status == 101 else _to_aiohttp(
                    status, headers, resp_body, streamed=resp_stream is not None)
            except DuroError as exc:
                if resp_stream is not None:  # e.g. a head aiohttp cannot send: drop its body
                    await _close(resp_stream)
                if client_body is not None and client_body.error is not None:
                    return self._body_refused(client_body.error)  # the client's fault first
                code, message, retryable, overloaded, remote_type = to_wire(exc)
                resp = error_response(code, message, error_status(exc), retryable=retryable,
                                      overloaded=overloaded, remote_type=remote_type)
                if isinstance(exc, NewObjectsLimitError):
                    resp.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.5)))
                return resp
            finally:
                self._upstream.observe(time.perf_counter() - started)
            if status == 101:
                if resp_stream is not None:
                    await _close(resp_stream)
                if sock is not None:
                    served = sock
                    sock = None  # handle() serves it
                    return served
                return error_response("invalid_argument",
                                      "the object answered 101 to a request that is not a "
                                      "WebSocket upgrade", 502)
            if resp_stream is not None:
                assert out is not None
                return await _stream_out(request, out, resp_stream, self.server)
            return out
        finally:
            if client_body is not None:
                client_body.release()
            if sock is not None:  # not upgraded: forget the socket id
                sock.closed = True
                self.sockets.sockets.pop(sock.sid, None)

    def _body_refused(self, exc: BodyError) -> web.Response:
        self.metrics.refused.labels(reason=exc.code).inc()
        resp = error_response(exc.code, exc.message, exc.status, retryable=exc.status == 503,
                              overloaded=exc.status == 503)
        if exc.status != 503:
            resp.force_close()  # the rest of the body is not read
        return resp

    async def _worker(self, req: Request) -> Response:
        assert self.app.worker_fetch is not None
        resp = await self.app.worker_fetch(req, self.env)
        if not isinstance(resp, Response):
            raise InvalidArgumentError(
                f"the worker's fetch must return a duro.Response, got {type(resp).__name__}"
            )
        return resp

    async def _default_route(self, url: str, payload: bytes, stream: AsyncIterator[bytes] | None
                             ) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """``/<binding>/<name>/<rest>``: the object's encoded answer to the encoded request (and
        its streamed body); ``stream`` is the request's body when it streams."""
        try:
            path = urlsplit(url).path or "/"  # as Request.path (urlsplit caches repeated URLs)
        except ValueError as exc:  # e.g. a Host header "[" (an unclosed IPv6 literal)
            raise InvalidArgumentError(f"the request's URL is not valid: {exc}") from None
        parts = path.split("/", 3)
        if len(parts) < 3 or not parts[1]:
            known = ", ".join(f"/{b}/<name>/..." for b in sorted(self.routes))
            raise _NotFound(f"no route for {path!r}; this app serves {known}")
        ns = self.routes.get(parts[1].lower())
        if ns is None:
            raise _NotFound(f"unknown binding {parts[1]!r}; known: {sorted(self.routes)}")
        try:  # strict: two names must never decode to one (x%ff and x%fe, as U+FFFD)
            name = unquote(parts[2], errors="strict")
        except UnicodeDecodeError:
            raise InvalidArgumentError(
                f"{path!r}: the object name is not valid UTF-8 once percent-decoded") from None
        if not name:
            raise InvalidArgumentError(f"{path!r}: the object name is empty")
        oid = ns.id_from_string(name[1:]) if name.startswith("@") else ns.id_from_name(name)
        # What stub.fetch(req) does, without its two tasks per call (this is the hot path).
        call = Call(binding=ns.binding, object_id=oid.raw, kind=CallKind.FETCH,
                    payload=payload, caller_region=ns.caller_region, name=oid.name)
        return await ns.invoker.invoke_fetch(call, stream)

    def health(self) -> dict[str, Any]:
        """What the admin listener's ``/health`` answers."""
        return {
            "edge_id": self.edge_id, "region": self.config.region, "status": "serving",
            "sockets": len(self.sockets.sockets), "requests": self.requests,
            "connections": self.server.open if self.server is not None else 0,
            "nodes": {a: link.connected for a, link in self.sockets.links.items()},
        }

    def _static(self, path: str) -> web.StreamResponse | None:
        assert self.static is not None
        if path in ("/", "/index.html"):
            rel = "index.html"
        elif path.startswith("/static/"):
            rel = path[len("/static/"):]
        else:
            return None
        file = (self.static / rel).resolve()
        if not file.is_relative_to(self.static) or not file.is_file():
            return None if path == "/" else error_response("not_found", "no such file", 404)
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return web.FileResponse(file, headers={"Content-Type": ctype})


class _NotFound(DuroError):
    code = "not_found"


def _to_aiohttp(status: int, headers: list, body: bytes, *, streamed: bool = False
                ) -> web.StreamResponse:
    """An aiohttp response from a duro response's parts (``Response.to_wire``'s order); for a
    streamed body, a StreamResponse that :func:`_stream_out` writes."""
    if type(status) is not int or not 100 <= status <= 599:
        raise InvalidArgumentError(f"status must be an int in 100..599, got {status!r}")
    if type(body) is not bytes:
        body = Response(body).body  # as Response.from_wire: str -> UTF-8, else refused
    hdrs: CIMultiDict[str] = CIMultiDict()
    typed = False
    for name, value in headers:
        low = name.lower()
        if low not in _SKIP_RESPONSE_HEADERS:
            hdrs.add(name, value)  # repeated names stay repeated (two Set-Cookie lines)
        if low == "content-type":
            typed = True
    if streamed:  # (Workers give a streamed body no Content-Type of their own either)
        return web.StreamResponse(status=status, headers=hdrs)
    if body and not typed:
        # As Workers do for `new Response(string)`: duro's Response does not keep the body's type.
        hdrs["Content-Type"] = "text/plain;charset=UTF-8"
    return web.Response(status=status, body=body, headers=hdrs)


async def _stream_out(request: web.BaseRequest, out: web.StreamResponse,
                      chunks: AsyncIterator[bytes], server: EdgeServer | None
                      ) -> web.StreamResponse:
    """Send a streamed body chunk by chunk as the object produces it (chunked encoding); the
    client's pace pushes back through ``write`` to the node. A body that fails midway cuts the
    connection (no final chunk), so the client sees it incomplete rather than short. A client
    that goes away cancels this (``EdgeServer.streaming``), which ends the node's stream and
    closes the object's generator."""
    if server is not None:
        server.streaming(request.protocol, asyncio.current_task())
    try:
        await out.prepare(request)
        async for chunk in chunks:
            await out.write(chunk)
        await out.write_eof()
    except Exception as exc:  # the head is sent: the only signal left is a cut connection
        if isinstance(exc, DuroError):
            log.info("streamed response to %s %s failed midway: %s", request.method,
                     request.path, exc)
        elif not isinstance(exc, ConnectionError):
            log.exception("streamed response to %s %s failed midway", request.method,
                          request.path)
        if request.transport is not None:
            request.transport.close()
    finally:
        if server is not None:
            server.streaming(request.protocol, None)
        await _close(chunks)
    return out


async def _close(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
