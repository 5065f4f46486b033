"""duro._json: JSON from untrusted callers as JavaScript's JSON.parse reads it, and its users
(Request.json(), `duro call`; the Gateway's through its listener in
tests/edge/test_gateway_security.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duro import Request
from duro import _json as strict_json
from duro.cli import _parse_json_args

pytestmark = pytest.mark.timeout(30)

REFUSED = ["NaN", "[NaN]", "Infinity", "-Infinity", '{"a": [1, -Infinity]}', "[1e999]",
           "-1e400", "[" * 100_000, "[" * 5000 + "]" * 5000, '{"a":' * 5000 + "1" + "}" * 5000,
           "", "[1,", "{'a': 1}", b"\xff\xfe[1]", b'"\xc3"']


@pytest.mark.parametrize("text", REFUSED, ids=lambda t: repr(t)[:20])
def test_refused_with_a_value_error(text):
    with pytest.raises(ValueError):
        strict_json.loads(text)
    with pytest.raises(ValueError):
        Request("http://x/", method="POST", body=text).json()


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text()
                    | st.floats(allow_nan=False, allow_infinity=False),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
                    max_leaves=20))
def test_every_json_value_reads_as_json_loads_reads_it(value):
    text = json.dumps(value)
    assert strict_json.loads(text) == json.loads(text)
    assert strict_json.loads(text.encode()) == json.loads(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60) | st.binary(max_size=60))
def test_anything_else_is_a_value_error(text):
    try:
        strict_json.loads(text)
    except ValueError:
        pass


def test_duro_call_arguments_are_strict():
    assert _parse_json_args('[1, {"by": 2}]') == ([1, {"by": 2}], {})
    assert _parse_json_args('{"by": 2}') == ([], {"by": 2})
    with pytest.raises(SystemExit, match="NaN"):
        _parse_json_args("[NaN]")
