"""``duro.v1.Gateway`` (``proto/duro/v1/gateway.proto``): call objects from any language.

``Invoke`` takes JSON arguments and answers a JSON result or a typed :class:`GatewayError` (the
duro error's code, message, ``retryable``, ``overloaded``, ``remote_type``); ``Fetch`` sends an
HTTP-shaped request to an object's ``fetch``. Both go through the edge's ``Router`` with the edge's
region.

One call, in order (docs/security.md, "Public entry points"):

1. **Credentials**: the metadata ``authorization: Bearer <token>`` must name a configured token
   (``duro.edge.tokens``), else the RPC fails with ``UNAUTHENTICATED``, before its bytes are read.
2. **The request**: its bytes count against the edge's body budget (``max_body_bytes_in_flight``,
   shared with HTTP request bodies) until the call is answered; past it the RPC fails with
   ``RESOURCE_EXHAUSTED`` and is not executed (one request alone is always admitted), so
   concurrent large arguments cannot grow the edge without bound. Bytes that are not an
   ``InvokeRequest``/``FetchRequest`` fail the RPC with ``INVALID_ARGUMENT``.
3. **The token's limits**: a binding or method the token is not allowed fails the RPC with
   ``PERMISSION_DENIED`` (whether or not the binding exists).
4. **What the app exposes** (``duro.toml`` ``[expose]``, ``duro._exposure``) and **the
   callable-method rule** (``duro._methods``): a binding that is not exposed answers ``not_found``
   as an unknown one does; a method that is not exposed or not callable (a staticmethod, ``mro``,
   ``_load``) answers ``method_not_found`` as a missing one does. Nothing reaches a node.
5. **Arguments**: ``args_json``/``kwargs_json`` must be strict JSON (``duro._json``: no
   ``NaN``/``Infinity``, bounded nesting), else ``invalid_argument``.

From step 4 on, refusals and the object's answers come back as an OK RPC whose message says which
(``error`` is a :class:`GatewayError`), as every duro error does; a non-OK status means the call
was refused before it was understood (steps 1-3) or the transport failed.

JSON mapping of results: msgpack values map to JSON directly; ``bytes`` become base64 strings; map
keys that are not strings become strings; a result JSON cannot carry (``NaN``, ``Infinity``)
answers ``invalid_value``.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, Awaitable, Callable, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from duro import _json as strict_json
from duro import _tracing
from duro._app import App, Binding
from duro._body import COLLECTED_BODY_LIMIT
from duro._exposure import FETCH
from duro._http import Request
from duro._methods import check_method, no_such_method
from duro._namespace import Env, Namespace, Stub, env_bindings
from duro._pb import gateway_pb2
from duro.edge.limits import ByteBudget
from duro.edge.metrics import EdgeMetrics
from duro.edge.tokens import Principal, TokenStore, Unauthenticated
from duro.errors import DuroError, InvalidArgumentError, InvalidValueError, to_wire

__all__ = ["GatewayServicer", "to_json", "SERVICE"]

log = logging.getLogger("duro.edge.gateway")

SERVICE = "duro.v1.Gateway"
M = TypeVar("M", bound=Message)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _stringify_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _stringify_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify_keys(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"), allow_nan=False)


def to_json(value: Any) -> str:
    try:
        try:
            return _dumps(value)
        except TypeError:
            return _dumps(_stringify_keys(value))
    except ValueError as exc:  # NaN or Infinity: not JSON
        raise InvalidValueError(f"the result cannot be sent as JSON: {exc}") from None
    except RecursionError:
        raise InvalidValueError("the result is nested too deeply for JSON") from None


def _error_pb(exc: BaseException) -> gateway_pb2.GatewayError:
    code, message, retryable, overloaded, remote_type = to_wire(exc)
    return gateway_pb2.GatewayError(code=code, message=message, retryable=retryable,
                                    overloaded=overloaded, remote_type=remote_type)


class _NotFound(DuroError):
    code = "not_found"


class GatewayServicer:
    """The Gateway's two RPCs; :meth:`register` adds them to a ``grpc.aio`` server."""

    def __init__(self, env: Env, metrics: EdgeMetrics, *, app: App, tokens: TokenStore,
                 budget: ByteBudget | None = None) -> None:
        self.env = env
        self.budget = budget if budget is not None else ByteBudget(64 << 20)
        self.metrics = metrics
        self.app = app
        self.tokens = tokens
        self._by_name = {name.lower(): name for name in env_bindings(env)}

    def register(self, server: aio.Server) -> None:
        # Requests arrive as bytes (no request_deserializer): bytes that are not a request are
        # the Gateway's to refuse with INVALID_ARGUMENT, not grpc's to fail with UNKNOWN.
        handlers = {
            "Invoke": grpc.unary_unary_rpc_method_handler(
                self.Invoke, response_serializer=gateway_pb2.InvokeResponse.SerializeToString),
            "Fetch": grpc.unary_unary_rpc_method_handler(
                self.Fetch, response_serializer=gateway_pb2.FetchResponse.SerializeToString),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    # -- the steps before any object -------------------------------------------------------------
    async def _admit(self, rpc: str, data: bytes, cls: type[M], context: aio.ServicerContext,
                     serve: Callable[[Principal, M], Awaitable[Message]]) -> Message:
        """Steps 1-2 (the caller's token, the budget, the parsed request), then ``serve``; or an
        aborted RPC."""
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else None
                break
        try:
            principal = self.tokens.authenticate(authorization)
        except Unauthenticated as exc:
            await self._abort(context, rpc, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        size = len(data)
        if not self.budget.take(size, alone=True):
            await self._abort(
                context, rpc, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this edge holds {self.budget.used} bytes of requests (limit "
                f"{self.budget.limit}); the {size}-byte request was not executed; retry later")
        try:
            try:
                request = cls.FromString(data)
            except (DecodeError, ValueError) as exc:
                await self._abort(context, rpc, grpc.StatusCode.INVALID_ARGUMENT,
                                  f"the request is not a duro.v1.{cls.__name__}: {exc}")
            return await serve(principal, request)
        finally:
            self.budget.give(size)

    async def _abort(self, context: aio.ServicerContext, rpc: str, code: grpc.StatusCode,
                     message: str) -> NoReturn:
        self.metrics.gateway_calls.labels(rpc=rpc, outcome=code.name.lower()).inc()
        log.debug("Gateway %s refused: %s %s", rpc, code.name, message)
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # it raises

    async def _permit(self, context: aio.ServicerContext, rpc: str, principal: Principal,
                      binding: str, method: str) -> None:
        """Step 3: the token's limits."""
        name = self._canonical(binding)
        if not principal.allows(name, method):
            await self._abort(context, rpc, grpc.StatusCode.PERMISSION_DENIED,
                              f"token {principal.name!r} may not call {name}.{method}")

    def _canonical(self, binding: str) -> str:
        return binding if binding in env_bindings(self.env) else self._by_name.get(
            binding.lower(), binding)

    def _binding(self, binding: str) -> Binding:
        """Step 4: the binding, if this Gateway exposes it."""
        name = self._canonical(binding)
        exposure = self.app.exposure
        if name not in self.app.bindings or not exposure.gateway_open(name):
            open_ = sorted(b for b in self.app.bindings if exposure.gateway_open(b))
            raise _NotFound(f"no binding {binding!r} on this Gateway (bindings: {open_})")
        return self.app.bindings[name]

    def _method(self, b: Binding, method: str) -> None:
        check_method(b.cls, method)  # "fetch" too: it is not an RPC method
        if not self.app.exposure.gateway_method_open(b.name, method):
            raise no_such_method(b.cls, method)

    def _stub(self, b: Binding, name: str, oid: str, hint: str) -> Stub:
        ns: Namespace = env_bindings(self.env)[b.name]
        if bool(name) == bool(oid):
            raise InvalidArgumentError("give exactly one of name and id")
        hint_ = hint or None
        if oid:
            return ns.get(ns.id_from_string(oid), location_hint=hint_)
        return ns.get_by_name(name, location_hint=hint_)

    async def _answer(self, rpc: str, run: Callable[[], Awaitable[Message]],
                      error: Callable[[gateway_pb2.GatewayError], Message],
                      context: aio.ServicerContext) -> Message:
        try:
            if _tracing.tracer is None:
                response = await run()
            else:  # a span, a child of the caller's `traceparent` metadata if it sent one
                with _tracing.span(f"gateway {rpc}", kind="server",
                                   parent=_tracing.extract(context.invocation_metadata())):
                    response = await run()
        except DuroError as exc:
            self.metrics.gateway_calls.labels(rpc=rpc, outcome=exc.code).inc()
            return error(_error_pb(exc))
        self.metrics.gateway_calls.labels(rpc=rpc, outcome="ok").inc()
        return response

    # -- the RPCs ---------------------------------------------------------------------------------
    async def Invoke(  # noqa: N802 (gRPC method name)
        self, data: bytes, context: aio.ServicerContext
    ) -> gateway_pb2.InvokeResponse:
        return await self._admit(  # type: ignore[return-value]
            "Invoke", data, gateway_pb2.InvokeRequest, context,
            lambda principal, request: self._invoke(principal, request, context))

    async def _invoke(self, principal: Principal, request: gateway_pb2.InvokeRequest,
                      context: aio.ServicerContext) -> gateway_pb2.InvokeResponse:
        await self._permit(context, "Invoke", principal, request.binding, request.method)

        async def run() -> gateway_pb2.InvokeResponse:
            b = self._binding(request.binding)
            self._method(b, request.method)
            args = _parse(request.args_json, list, "args_json", "a JSON array")
            kwargs = _parse(request.kwargs_json, dict, "kwargs_json", "a JSON object")
            stub = self._stub(b, request.name, request.id, request.location_hint)
            result = await stub.call(request.method, *args, **kwargs)
            return gateway_pb2.InvokeResponse(result_json=to_json(result))

        return await self._answer(  # type: ignore[return-value]
            "Invoke", run, lambda e: gateway_pb2.InvokeResponse(error=e), context)

    async def Fetch(  # noqa: N802
        self, data: bytes, context: aio.ServicerContext
    ) -> gateway_pb2.FetchResponse:
        return await self._admit(  # type: ignore[return-value]
            "Fetch", data, gateway_pb2.FetchRequest, context,
            lambda principal, request: self._fetch(principal, request, context))

    async def _fetch(self, principal: Principal, request: gateway_pb2.FetchRequest,
                     context: aio.ServicerContext) -> gateway_pb2.FetchResponse:
        await self._permit(context, "Fetch", principal, request.binding, FETCH)

        async def run() -> gateway_pb2.FetchResponse:
            b = self._binding(request.binding)
            if not self.app.exposure.gateway_method_open(b.name, FETCH):
                raise _NotFound(f"{b.name} objects are not reachable with Fetch on this Gateway")
            stub = self._stub(b, request.name, request.id, request.location_hint)
            headers = [(h.name, h.value) for h in request.headers
                       if h.name.lower() not in ("duro-socket", "upgrade")]
            try:
                req = Request(request.url or "/", method=request.method or "GET",
                              headers=headers, body=request.body)
            except ValueError as exc:  # a URL urlsplit refuses
                raise InvalidArgumentError(f"bad request: {exc}") from None
            resp = await stub.fetch(req)
            # A unary answer: a streamed body is collected (up to COLLECTED_BODY_LIMIT). Every
            # header line stays one HttpHeader, repeated names included (two Set-Cookie).
            body = await resp.read(COLLECTED_BODY_LIMIT)
            return gateway_pb2.FetchResponse(
                status=resp.status,
                headers=[gateway_pb2.HttpHeader(name=k, value=v)
                         for k, v in resp.headers.items()],
                body=body,
            )

        return await self._answer(  # type: ignore[return-value]
            "Fetch", run, lambda e: gateway_pb2.FetchResponse(error=e), context)


def _parse(text: str, kind: type, field: str, what: str) -> Any:
    if not text:
        return kind()
    try:
        value = strict_json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{field} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise InvalidArgumentError(f"{field} must be {what}, got {type(value).__name__}")
    return value
