"""Property-based tests of the value codec (duro._codec): every codec value survives a round
trip, anything else is refused with InvalidValueError, and bytes that are not an encoded value
give InvalidValueError, never another exception type. Small budgets: CI time (docs/security.md,
"Fuzzing")."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duro import _codec
from duro.errors import InvalidValueError

pytestmark = pytest.mark.timeout(60)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
keys = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10)
        | st.binary(max_size=10) | st.floats(allow_nan=False))
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.tuples(children, children)
    | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


def normal(value):
    """What decode gives back for ``value``: tuples become lists; NaN compared as a marker."""
    if isinstance(value, (list, tuple)):
        return [normal(v) for v in value]
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return "<nan>"
    return value


@FAST
@given(values)
def test_round_trip(value):
    data = _codec.encode(value)
    back = _codec.decode(data)
    assert normal(back) == normal(value)
    assert _codec.encode(back) == data  # and the decoded value encodes to the same bytes


@FAST
@given(st.binary(max_size=200))
def test_garbage_bytes_give_a_clear_error(data):
    try:
        value = _codec.decode(data)
    except InvalidValueError as exc:
        assert str(exc)  # says what is wrong
    else:
        _codec.encode(value)  # whatever decoded is a value the codec can send on


@FAST
@given(values, st.data())
def test_truncated_or_extended_encodings(value, data):
    enc = _codec.encode(value)
    cut = data.draw(st.integers(0, max(0, len(enc) - 1)))
    with pytest.raises(InvalidValueError):
        _codec.decode(enc[:cut])
    with pytest.raises(InvalidValueError):
        _codec.decode(enc + data.draw(st.binary(min_size=1, max_size=8)))


@settings(max_examples=50, deadline=None)
@given(st.integers(-128, 127).filter(lambda c: c != -1), st.binary(max_size=20))
def test_extension_types_are_refused(code, payload):
    ext8 = b"\xc7" + bytes([len(payload)]) + code.to_bytes(1, "big", signed=True) + payload
    with pytest.raises(InvalidValueError, match="extension type"):
        _codec.decode(ext8)
    if code >= 0:
        with pytest.raises(InvalidValueError, match="extension type"):
            _codec.decode(msgpack.packb([1, msgpack.ExtType(code, payload)]))


def test_deep_nesting_and_unhashable_keys_are_clear_errors():
    with pytest.raises(InvalidValueError, match="nested too deeply"):
        _codec.decode(b"\x91" * 100_000 + b"\xc0")
    with pytest.raises(InvalidValueError, match="unhashable"):
        _codec.decode(b"\x81\x91\x01\x02")  # {[1]: 2}
    with pytest.raises(InvalidValueError):
        _codec.encode(_nested(5000))  # beyond msgpack's nesting limit


def test_storage_values_that_would_not_read_back_are_refused():
    """msgpack encodes a little deeper than it decodes: a storage value must read back."""
    deepest = _nested(_codec.MAX_DEPTH - 1)
    data = _codec.encode_value(deepest)
    assert _codec.encode(_codec.decode(data)) == data
    too_deep = _nested(_codec.MAX_DEPTH)
    _codec.encode(too_deep)  # encodes (an RPC payload: the receiver refuses it clearly)...
    with pytest.raises(InvalidValueError, match="nested deeper"):
        _codec.encode_value(too_deep)  # ...but is never stored


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1),
                 st.builds(object), st.sets(st.integers(), min_size=1), st.complex_numbers()))
def test_values_outside_the_codec_are_refused(value):
    with pytest.raises(InvalidValueError):
        _codec.encode(value)
