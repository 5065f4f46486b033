"""``duro.v1.Gateway`` (``proto/duro/v1/gateway.proto``): call objects from any language.

``Invoke`` takes JSON arguments and answers a JSON result or a typed :class:`GatewayError` (the
duro error's code, message, ``retryable``, ``overloaded``, ``remote_type``); ``Fetch`` sends an
HTTP-shaped request to an object's ``fetch``. Both go through the edge's ``Router`` with the edge's
region. Object answers and duro errors always come back as an OK RPC whose message says which; a
non-OK gRPC status means the transport failed (or the request could not be parsed at all).

JSON mapping of results: msgpack values map to JSON directly; ``bytes`` become base64 strings; map
keys that are not strings become strings.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from grpc import aio

from duro._http import Request
from duro._namespace import Env, Namespace, Stub
from duro._pb import gateway_pb2, gateway_pb2_grpc
from duro.edge.metrics import EdgeMetrics
from duro.errors import DuroError, InvalidArgumentError, to_wire

__all__ = ["GatewayServicer", "to_json"]

log = logging.getLogger("duro.edge.gateway")


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


def to_json(value: Any) -> str:
    try:
        return json.dumps(value, default=_json_default, separators=(",", ":"))
    except TypeError:
        return json.dumps(_stringify_keys(value), default=_json_default, separators=(",", ":"))


def _error_pb(exc: BaseException) -> gateway_pb2.GatewayError:
    code, message, retryable, overloaded, remote_type = to_wire(exc)
    return gateway_pb2.GatewayError(code=code, message=message, retryable=retryable,
                                    overloaded=overloaded, remote_type=remote_type)


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, env: Env, metrics: EdgeMetrics) -> None:
        self.env = env
        self.metrics = metrics
        self._by_name = {name.lower(): ns for name, ns in env._bindings.items()}

    def _stub(self, binding: str, name: str, oid: str, hint: str) -> Stub:
        ns: Namespace | None = self.env._bindings.get(binding) or self._by_name.get(binding.lower())
        if ns is None:
            raise InvalidArgumentError(
                f"unknown binding {binding!r}; known: {sorted(self.env._bindings)}"
            )
        if bool(name) == bool(oid):
            raise InvalidArgumentError("give exactly one of name and id")
        hint_ = hint or None
        if oid:
            return ns.get(ns.id_from_string(oid), location_hint=hint_)
        return ns.get_by_name(name, location_hint=hint_)

    async def Invoke(  # noqa: N802 (gRPC method name)
        self, request: gateway_pb2.InvokeRequest, context: aio.ServicerContext
    ) -> gateway_pb2.InvokeResponse:
        try:
            args = _parse(request.args_json, list, "args_json", "a JSON array")
            kwargs = _parse(request.kwargs_json, dict, "kwargs_json", "a JSON object")
            stub = self._stub(request.binding, request.name, request.id, request.location_hint)
            result = await stub.call(request.method, *args, **kwargs)
        except DuroError as exc:
            self.metrics.gateway_calls.labels(rpc="Invoke", outcome=exc.code).inc()
            return gateway_pb2.InvokeResponse(error=_error_pb(exc))
        self.metrics.gateway_calls.labels(rpc="Invoke", outcome="ok").inc()
        return gateway_pb2.InvokeResponse(result_json=to_json(result))

    async def Fetch(  # noqa: N802
        self, request: gateway_pb2.FetchRequest, context: aio.ServicerContext
    ) -> gateway_pb2.FetchResponse:
        try:
            stub = self._stub(request.binding, request.name, request.id, request.location_hint)
            headers = [(h.name, h.value) for h in request.headers
                       if h.name.lower() not in ("duro-socket", "upgrade")]
            req = Request(request.url or "/", method=request.method or "GET", headers=headers,
                          body=request.body)
            resp = await stub.fetch(req)
        except DuroError as exc:
            self.metrics.gateway_calls.labels(rpc="Fetch", outcome=exc.code).inc()
            return gateway_pb2.FetchResponse(error=_error_pb(exc))
        self.metrics.gateway_calls.labels(rpc="Fetch", outcome="ok").inc()
        return gateway_pb2.FetchResponse(
            status=resp.status,
            headers=[gateway_pb2.HttpHeader(name=k, value=v) for k, v in resp.headers.items()],
            body=resp.body,
        )


def _parse(text: str, kind: type, field: str, what: str) -> Any:
    if not text:
        return kind()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{field} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise InvalidArgumentError(f"{field} must be {what}, got {type(value).__name__}")
    return value


