"""``duro._wire``: the one translation between duro values and the node protobufs."""

from __future__ import annotations

import grpc
import pytest

from duro import _codec
from duro._http import Request
from duro._namespace import Call, CallKind
from duro._wire import (
    RedirectError,
    call_from_pb,
    call_to_pb,
    error_from_pb,
    error_from_status,
    error_to_pb,
    result_error,
    result_ok,
    result_value,
    status_for_error,
)
from duro.errors import (
    CallTimeoutError,
    DuroError,
    InvalidArgumentError,
    InvalidIdError,
    ObjectError,
    OverloadedError,
    StorageLimitError,
    UnavailableError,
)


def make_call(**kw: object) -> Call:
    fields: dict[str, object] = dict(
        binding="COUNTER",
        object_id=bytes(range(32)),
        kind=CallKind.RPC,
        method="increment",
        payload=_codec.encode([[2], {"by": 3}]),
    )
    fields.update(kw)
    return Call(**fields)  # type: ignore[arg-type]


def test_call_round_trip_keeps_every_field() -> None:
    call = make_call(caller_region="eu-west", location_hint="ap-south", epoch=12, hops=2)
    call.meta["in_process_only"] = True
    pb = call_to_pb(call, 41)
    assert pb.seq == 41
    back = call_from_pb(pb)
    call.meta.clear()
    assert back == call


def test_empty_location_hint_is_none() -> None:
    assert call_from_pb(call_to_pb(make_call(), 1)).location_hint is None


@pytest.mark.parametrize("kind", list(CallKind))
def test_every_kind_round_trips(kind: CallKind) -> None:
    payload = {
        CallKind.RPC: _codec.encode([[], {}]),
        CallKind.FETCH: Request("/x", method="POST", body=b"hi").to_wire(),
        CallKind.ALARM: _codec.encode([0]),
    }[kind]
    call = make_call(kind=kind, payload=payload, method="" if kind is not CallKind.RPC else "m")
    assert call_from_pb(call_to_pb(call, 1)).kind is kind


def test_bad_id_is_an_invalid_id_error() -> None:
    pb = call_to_pb(make_call(), 1)
    pb.object_id = b"x"
    with pytest.raises(InvalidIdError, match="32 bytes"):
        call_from_pb(pb)


def test_unknown_kind_is_invalid() -> None:
    pb = call_to_pb(make_call(), 1)
    pb.kind = 9  # type: ignore[assignment]
    with pytest.raises(InvalidArgumentError, match="kind 9"):
        call_from_pb(pb)


def test_redirect_round_trips_with_owner() -> None:
    err = error_from_pb(error_to_pb(RedirectError(node_id="n7", address="10.0.0.7:7000", epoch=4)))
    assert isinstance(err, RedirectError) and isinstance(err, UnavailableError)
    assert (err.node_id, err.address, err.epoch, err.retryable) == ("n7", "10.0.0.7:7000", 4, True)
    assert err.code == "redirect" and "n7" in str(err)


def test_unknown_code_stays_visible() -> None:
    pb = error_to_pb(DuroError("x"))
    pb.code = "from_the_future"
    pb.retryable = True
    err = error_from_pb(pb)
    assert type(err) is DuroError and err.code == "from_the_future" and err.retryable


def test_results() -> None:
    assert result_value(result_ok(1, b"\x01")) == b"\x01"
    with pytest.raises(ObjectError) as info:
        result_value(result_error(2, KeyError("k")))
    assert info.value.remote_type == "KeyError"


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, UnavailableError, True),
        (grpc.StatusCode.CANCELLED, UnavailableError, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, CallTimeoutError, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, OverloadedError, False),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError, False),
        (grpc.StatusCode.INTERNAL, DuroError, False),
        (None, DuroError, False),
    ],
)
def test_status_table(status: grpc.StatusCode | None, cls: type, retryable: bool) -> None:
    err = error_from_status(status, "details here", address="h:1")
    assert type(err) is cls and err.retryable is retryable
    assert "details here" in str(err) and "h:1" in str(err)


def test_status_for_error() -> None:
    assert status_for_error(RedirectError()) is grpc.StatusCode.UNAVAILABLE
    assert status_for_error(InvalidIdError("x")) is grpc.StatusCode.INVALID_ARGUMENT
    assert status_for_error(OverloadedError()) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for_error(StorageLimitError("quota")) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for_error(ObjectError("x")) is grpc.StatusCode.UNKNOWN
    assert status_for_error(DuroError("x")) is grpc.StatusCode.INTERNAL


def test_etcd_endpoints_with_host_names_are_resolved() -> None:
    """etcd3aio refuses host names (compose / Kubernetes service names): duro resolves them."""
    from duro.topology.etcdkv import resolve_endpoint

    assert resolve_endpoint("127.0.0.1:2379") == "127.0.0.1:2379"
    assert resolve_endpoint("localhost:2379") in ("127.0.0.1:2379", "[::1]:2379")
    import pytest

    with pytest.raises(ValueError, match="host:port"):
        resolve_endpoint("no-port")
