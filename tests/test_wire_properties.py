"""``duro._wire``, property-based: every call and error survives the wire exactly, and bytes from
a foreign client that are not a valid call get a clear duro error, never anything else."""

from __future__ import annotations

import os

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from duro import _codec
from duro._namespace import Call, CallKind, is_public_method
from duro._pb import node_pb2
from duro._wire import (
    RedirectError,
    call_from_pb,
    call_to_pb,
    check_payload,
    error_from_pb,
    error_from_status,
    error_to_pb,
    result_error,
    result_ok,
    result_value,
)
from duro.errors import DuroError, InvalidArgumentError, InvalidValueError

SETTINGS = settings(max_examples=int(os.environ.get("DURO_FUZZ_EXAMPLES", "150")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
names = st.text(min_size=1, max_size=40)
methods = st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True).filter(is_public_method)


@st.composite
def calls(draw: st.DrawFn) -> Call:
    kind = draw(st.sampled_from(list(CallKind)))
    if kind is CallKind.RPC:
        payload = _codec.encode([draw(st.lists(values, max_size=4)),
                                 draw(st.dictionaries(st.text(max_size=10), values, max_size=4))])
        method = draw(methods)
    elif kind is CallKind.FETCH:
        headers = draw(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)),
                                max_size=4))
        payload = _codec.encode([draw(st.text(max_size=60)), draw(st.sampled_from(
            ["GET", "POST", "PUT"])), [list(h) for h in headers], draw(st.binary(max_size=200))])
        method = ""
    else:
        payload = _codec.encode([draw(st.integers(0, 1000))])
        method = ""
    return Call(binding=draw(names), object_id=draw(st.binary(min_size=32, max_size=32)),
                kind=kind, method=method, payload=payload,
                caller_region=draw(st.text(max_size=12)),
                location_hint=draw(st.none() | st.text(min_size=1, max_size=12)),
                epoch=draw(st.integers(0, 2 ** 64 - 1)), hops=draw(st.integers(0, 2 ** 32 - 1)))


@SETTINGS
@given(call=calls(), seq=st.integers(0, 2 ** 64 - 1))
def test_a_call_survives_the_wire(call, seq):
    raw = call_to_pb(call, seq).SerializeToString()
    pb = node_pb2.Call.FromString(raw)
    assert pb.seq == seq
    assert call_from_pb(pb) == call


@SETTINGS
@given(garbage=st.binary(max_size=300))
def test_garbage_bytes_are_refused_clearly(garbage):
    try:
        pb = node_pb2.Call.FromString(garbage)
    except DecodeError:
        return  # the gRPC layer answers these itself
    try:
        call_from_pb(pb)
    except DuroError as exc:
        assert exc.code in ("invalid_argument", "invalid_id", "invalid_value",
                            "method_not_found"), exc
        assert str(exc)


@SETTINGS
@given(call=calls(), payload=st.binary(max_size=200))
def test_a_payload_of_the_wrong_shape_is_invalid_value(call, payload):
    try:
        value = _codec.decode(payload)
    except DuroError:
        value = None
    assume(not (isinstance(value, list) and len(value) in (1, 2, 4)))
    with pytest.raises(InvalidValueError):
        check_payload(call.kind, payload)


@SETTINGS
@given(code=st.sampled_from(["invalid_argument", "invalid_id", "invalid_value", "not_found",
                             "method_not_found", "object_error", "overloaded", "object_reset",
                             "unavailable", "fenced", "timeout", "broken_stub", "internal",
                             "some_future_code"]),
       message=st.text(max_size=80), remote=st.text(max_size=20),
       retryable=st.booleans(), overloaded=st.booleans(), seq=st.integers(0, 2 ** 64 - 1))
def test_an_error_survives_the_wire(code, message, remote, retryable, overloaded, seq):
    pb = node_pb2.Error(code=code, message=message, retryable=retryable,
                        overloaded=overloaded, remote_type=remote)
    err = error_from_pb(node_pb2.Error.FromString(pb.SerializeToString()))
    assert isinstance(err, DuroError)
    assert (err.code, err.message, err.retryable, err.overloaded) == (
        code, message, retryable, overloaded)
    again = error_to_pb(err)
    assert (again.code, again.message, again.retryable, again.overloaded) == (
        code, message, retryable, overloaded)
    with pytest.raises(DuroError) as raised:
        result_value(node_pb2.Result.FromString(result_error(seq, err).SerializeToString()))
    assert raised.value.code == code


@SETTINGS
@given(node=st.text(max_size=20), address=st.text(max_size=30),
       epoch=st.integers(0, 2 ** 64 - 1), value=st.binary(max_size=100),
       seq=st.integers(0, 2 ** 64 - 1))
def test_redirects_and_values_survive_the_wire(node, address, epoch, value, seq):
    err = error_from_pb(error_to_pb(RedirectError(node_id=node, address=address, epoch=epoch)))
    assert isinstance(err, RedirectError)
    assert (err.node_id, err.address, err.epoch) == (node, address, epoch)
    assert result_value(node_pb2.Result.FromString(
        result_ok(seq, value).SerializeToString())) == value


@SETTINGS
@given(code=st.sampled_from(list(grpc.StatusCode)), details=st.text(max_size=50))
def test_every_status_is_a_duro_error(code, details):
    err = error_from_status(code, details)
    assert isinstance(err, DuroError) and code.name in str(err)


def test_invalid_argument_is_what_garbage_gets():
    # One concrete case of the property above, for the reader: an id of the wrong length.
    with pytest.raises(InvalidArgumentError, match="32 bytes"):
        call_from_pb(node_pb2.Call(binding="X", object_id=b"short", kind=0, method="m",
                                   payload=_codec.encode([[], {}])))
