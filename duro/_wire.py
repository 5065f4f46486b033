"""The one translation between duro's values and the node protocol (``proto/duro/v1/node.proto``).

Everything that crosses a gRPC boundary goes through this module, in both directions:

* :class:`~duro._namespace.Call` ↔ ``node_pb2.Call``: :func:`call_to_pb`, :func:`call_from_pb`
  (which validates what arrives: a 32-byte id, a known kind, a decodable payload of the right
  shape, and refuses anything else with :class:`~duro.errors.InvalidArgumentError`);
* :class:`~duro.errors.DuroError` ↔ ``node_pb2.Error``: :func:`error_to_pb`, :func:`error_from_pb`,
  built on :func:`duro.errors.to_wire` / :func:`~duro.errors.from_wire`, plus :class:`RedirectError`
  (the node does not own the object; it names the owner);
* results: :func:`result_ok`, :func:`result_error`, :func:`result_value`;
* transport failures: one table of ``grpc.StatusCode`` ↔ duro errors (:func:`error_from_status`,
  :func:`status_for_error`). A status is a failure of the transport (or of a whole stream), never
  an object's answer: objects answer with a ``Result``.

Only gRPC adapters (``duro.node.server``, ``duro.client.connection``, the edge's Gateway) import
this module, and only this module and those adapters import ``duro._pb``.
"""

from __future__ import annotations

from typing import Any

import grpc
import msgpack

from duro._namespace import Call, CallKind, is_public_method
from duro._pb import node_pb2
from duro.errors import (
    CallTimeoutError,
    DuroError,
    InvalidArgumentError,
    InvalidIdError,
    InvalidValueError,
    MethodNotFoundError,
    ObjectError,
    OverloadedError,
    StorageLimitError,
    UnavailableError,
    from_wire,
    to_wire,
)

__all__ = [
    "RedirectError",
    "OBJECT_ID_BYTES",
    "call_to_pb",
    "call_from_pb",
    "check_payload",
    "error_to_pb",
    "error_from_pb",
    "result_ok",
    "result_error",
    "result_value",
    "error_from_status",
    "status_for_error",
]

OBJECT_ID_BYTES = 32

_KINDS: dict[int, CallKind] = {int(k): k for k in CallKind}


class RedirectError(UnavailableError):
    """The node does not own the object; ``node_id``/``address`` own it as of ``epoch``.

    Retryable: a router follows it (bounded hops) to the named owner. ``address`` may be empty when
    the node knows it is not the owner but not who is (the caller re-resolves through the
    directory).
    """

    code = "redirect"

    def __init__(
        self, message: str = "", *, node_id: str = "", address: str = "", epoch: int = 0
    ) -> None:
        if not message:
            owner = f"node {node_id or '?'} at {address or '?'}"
            message = f"object is owned by {owner} (epoch {epoch})"
        super().__init__(message)
        self.node_id = node_id
        self.address = address
        self.epoch = epoch


# ---------------------------------------------------------------------------------------------
# Calls


def call_to_pb(call: Call, seq: int) -> node_pb2.Call:
    """Encode ``call`` with the stream-unique ``seq``. ``call.meta`` stays in process."""
    pb = node_pb2.Call(
        seq=seq,
        binding=call.binding,
        object_id=call.object_id,
        kind=int(call.kind),
        method=call.method,
        payload=call.payload,
        caller_region=call.caller_region,
        location_hint=call.location_hint or "",
        epoch=call.epoch,
        hops=call.hops,
        stream_response=call.stream_response,
    )
    if call.name is not None:
        pb.name = call.name  # optional: absent (None) and "" (a valid name) stay apart
    return pb


def call_from_pb(pb: node_pb2.Call, *, validate_payload: bool = True) -> Call:
    """Decode and validate a call from the wire; raise :class:`InvalidArgumentError` if bad."""
    if len(pb.object_id) != OBJECT_ID_BYTES:
        raise InvalidIdError(
            f"object_id must be {OBJECT_ID_BYTES} bytes, got {len(pb.object_id)}"
        )
    kind = _KINDS.get(pb.kind)
    if kind is None:
        raise InvalidArgumentError(f"unknown call kind {pb.kind}")
    if not pb.binding:
        raise InvalidArgumentError("call has no binding")
    if kind is CallKind.RPC and not is_public_method(pb.method):
        raise MethodNotFoundError(  # as the node would answer (duro._methods)
            f"{pb.method!r} cannot be called through a stub: names starting with '_' and the "
            f"runtime's handlers (fetch, alarm, web_socket_*) are not RPC methods"
        )
    if validate_payload:
        check_payload(kind, pb.payload)
    return Call(
        binding=pb.binding,
        object_id=pb.object_id,
        kind=kind,
        method=pb.method,
        payload=pb.payload,
        caller_region=pb.caller_region,
        location_hint=pb.location_hint or None,
        epoch=pb.epoch,
        hops=pb.hops,
        name=pb.name if pb.HasField("name") else None,
        stream_response=pb.stream_response,
    )


def check_payload(kind: CallKind, payload: bytes) -> None:
    """Check that ``payload`` decodes to the shape its kind needs (see :class:`Call`).

    Cheap next to a call (one msgpack decode of a small value); it turns garbage from a foreign
    client into an ``invalid_argument`` answer instead of an error deep inside the runtime.
    """
    try:
        value: Any = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise InvalidValueError(f"{kind.name} payload is not valid msgpack: {exc}") from None
    if kind is CallKind.RPC:
        ok = (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], list)
            and isinstance(value[1], dict)
            and all(isinstance(k, str) for k in value[1])
        )
        shape = "[args: list, kwargs: dict[str, ...]]"
    elif kind is CallKind.FETCH:
        ok = (
            isinstance(value, list)
            and len(value) == 4
            and isinstance(value[0], str)
            and isinstance(value[1], str)
            and isinstance(value[2], list)
            and isinstance(value[3], bytes)
        )
        shape = "[url, method, headers, body]"
    else:
        ok = isinstance(value, list) and len(value) == 1 and isinstance(value[0], int)
        shape = "[retry_count: int]"
    if not ok:
        raise InvalidValueError(f"{kind.name} payload must be msgpack {shape}")


# ---------------------------------------------------------------------------------------------
# Errors and results


def error_to_pb(exc: BaseException) -> node_pb2.Error:
    """Describe any exception; a non-duro one becomes ``object_error`` (see errors.to_wire)."""
    code, message, retryable, overloaded, remote_type = to_wire(exc)
    pb = node_pb2.Error(
        code=code,
        message=message,
        retryable=retryable,
        overloaded=overloaded,
        remote_type=remote_type,
    )
    if isinstance(exc, RedirectError):
        pb.redirect.node_id = exc.node_id
        pb.redirect.address = exc.address
        pb.redirect.epoch = exc.epoch
    return pb


def error_from_pb(pb: node_pb2.Error) -> DuroError:
    """Rebuild the error a node answered with (flags as sent; unknown codes stay visible)."""
    if pb.code == RedirectError.code:
        r = pb.redirect
        err: DuroError = RedirectError(
            pb.message, node_id=r.node_id, address=r.address, epoch=r.epoch
        )
        err.retryable = pb.retryable
        err.overloaded = pb.overloaded
        return err
    return from_wire(pb.code, pb.message, pb.retryable, pb.overloaded, pb.remote_type)


def result_ok(seq: int, value: bytes) -> node_pb2.Result:
    return node_pb2.Result(seq=seq, value=value)


def result_error(seq: int, exc: BaseException) -> node_pb2.Result:
    return node_pb2.Result(seq=seq, error=error_to_pb(exc))


def result_value(pb: node_pb2.Result) -> bytes:
    """The value of a result, or raise the error it carries."""
    if pb.HasField("error"):
        raise error_from_pb(pb.error)
    return pb.value


# ---------------------------------------------------------------------------------------------
# Transport failures: the one grpc.StatusCode <-> duro error table

_S = grpc.StatusCode

# status -> (error class, retryable). Transport-level failures where the request may not have
# reached the node are retryable; the caller's message says whether the call may have run.
_FROM_STATUS: dict[grpc.StatusCode, tuple[type[DuroError], bool]] = {
    _S.UNAVAILABLE: (UnavailableError, True),
    _S.CANCELLED: (UnavailableError, True),
    _S.ABORTED: (UnavailableError, True),
    _S.DEADLINE_EXCEEDED: (CallTimeoutError, False),
    _S.RESOURCE_EXHAUSTED: (OverloadedError, False),
    _S.INVALID_ARGUMENT: (InvalidArgumentError, False),
    _S.OUT_OF_RANGE: (InvalidArgumentError, False),
    _S.FAILED_PRECONDITION: (InvalidArgumentError, False),
    _S.NOT_FOUND: (MethodNotFoundError, False),
    _S.UNIMPLEMENTED: (DuroError, False),
    _S.UNKNOWN: (DuroError, False),
    _S.INTERNAL: (DuroError, False),
    _S.DATA_LOSS: (DuroError, False),
    _S.UNAUTHENTICATED: (DuroError, False),
    _S.PERMISSION_DENIED: (DuroError, False),
}

# duro error -> status, most specific class first (for adapters that must answer with a status,
# e.g. the edge's Gateway towards non-Python clients).
_TO_STATUS: tuple[tuple[type[DuroError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, _S.INVALID_ARGUMENT),
    (MethodNotFoundError, _S.NOT_FOUND),
    (OverloadedError, _S.RESOURCE_EXHAUSTED),
    (StorageLimitError, _S.RESOURCE_EXHAUSTED),
    (UnavailableError, _S.UNAVAILABLE),
    (CallTimeoutError, _S.DEADLINE_EXCEEDED),
    (ObjectError, _S.UNKNOWN),
)


def error_from_status(
    code: grpc.StatusCode | None, details: str = "", *, address: str = ""
) -> DuroError:
    """Translate a failed RPC's status into a duro error (retryability from the table)."""
    cls, retryable = _FROM_STATUS.get(code, (DuroError, False)) if code else (DuroError, False)
    where = f" ({address})" if address else ""
    name = code.name if code is not None else "no status"
    message = f"node transport failed{where}: {name}: {details or 'no details'}"
    err = cls(message)
    err.retryable = retryable
    return err


def status_for_error(exc: BaseException) -> grpc.StatusCode:
    for cls, status in _TO_STATUS:
        if isinstance(exc, cls):
            return status
    return _S.UNKNOWN if not isinstance(exc, DuroError) else _S.INTERNAL
