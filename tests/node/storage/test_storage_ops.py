"""docs/storage.md: every ``ctx.storage`` operation, its limits and its errors, through the
real runtime (stub -> input gate -> ctx.storage -> group commit -> RocksDB in tmp_path).

"Nothing written" is always checked on disk (``Testbed.storage`` after the event's output gate, and
after ``restart()``), and within the same event (the failed call left nothing in the write overlay).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from duro.errors import InvalidArgumentError, InvalidValueError
from duro.testing import Testbed

pytestmark = pytest.mark.timeout(60)


def op(name, *args, **kwargs):
    return [name, list(args), kwargs]


def oks(results):
    assert all("ok" in r for r in results), results
    return [r["ok"] for r in results]


async def run(stub, *steps):
    return await stub.run(list(steps))


# -- basic operations --------------------------------------------------------------------------

async def test_get_returns_default_for_missing_key(tb, kv):
    r = await run(kv, op("get", "nope"), op("get", "nope", 7), op("get", "nope", default="d"))
    assert oks(r) == [None, 7, "d"]


async def test_put_then_get_roundtrips_every_codec_type(tb, kv):
    values = {
        "none": None, "bool": True, "int": -(2**63), "uint": 2**64 - 1, "float": 1.5,
        "str": "héllo 中 😀", "bytes": b"\x00\xff", "list": [1, [2, "x"]],
        "dict": {"a": {"b": [1]}},
        "empty": "",
    }
    await run(kv, *[op("put", k, v) for k, v in values.items()])
    got = oks(await run(kv, *[op("get", k) for k in values]))
    assert got == list(values.values())
    assert tb.storage(kv) == dict(sorted(values.items(), key=lambda kv_: kv_[0].encode()))
    await tb.restart()
    assert tb.storage(kv) == dict(sorted(values.items(), key=lambda kv_: kv_[0].encode()))


async def test_tuple_is_stored_as_list(tb, kv):
    await run(kv, op("put", "t", (1, 2)))
    assert oks(await run(kv, op("get", "t"))) == [[1, 2]]


async def test_put_overwrites(tb, kv):
    await run(kv, op("put", "k", 1), op("put", "k", 2))
    assert oks(await run(kv, op("get", "k"))) == [2]
    assert tb.storage(kv) == {"k": 2}


async def test_get_many_returns_only_existing_keys_in_asked_order(tb, kv):
    await run(kv, op("put_many", {"a": 1, "c": 3, "b": 2}))
    [got] = oks(await run(kv, op("get_many", ["c", "missing", "a"])))
    assert got == {"c": 3, "a": 1}
    assert list(got) == ["c", "a"]
    assert oks(await run(kv, op("get_many", []))) == [{}]


async def test_put_many_writes_all_keys(tb, kv):
    entries = {f"k{i:03}": i for i in range(128)}
    assert oks(await run(kv, op("put_many", entries))) == [None]
    assert tb.storage(kv) == entries


async def test_delete_returns_whether_key_existed(tb, kv):
    await run(kv, op("put", "a", 1))
    r = oks(await run(
        kv, op("delete", "a"), op("delete", "a"), op("delete", "never"), op("get", "a")
    ))
    assert r == [True, False, False, None]
    assert tb.storage(kv) == {}


async def test_delete_sees_uncommitted_put_in_same_event(tb, kv):
    r = oks(await run(kv, op("put", "x", 1), op("delete", "x"), op("get", "x", "gone")))
    assert r == [None, True, "gone"]
    assert tb.storage(kv) == {}


async def test_delete_many_returns_count_of_existing(tb, kv):
    await run(kv, op("put_many", {"a": 1, "b": 2, "c": 3}))
    r = oks(await run(kv, op("delete_many", ["a", "c", "zz", "a"]), op("delete_many", [])))
    assert r == [2, 0]
    assert tb.storage(kv) == {"b": 2}


async def test_delete_many_counts_duplicate_key_once(tb, kv):
    """Cloudflare's delete(keys[]) returns the number of keys that existed and were deleted."""
    await run(kv, op("put", "a", 1))
    assert oks(await run(kv, op("delete_many", ["a", "a"]))) == [1]


async def test_delete_all_removes_every_key_and_the_alarm(tb, kv):
    await run(kv, op("put_many", {"a": 1, "b": 2}), op("set_alarm", 4_000_000_000))
    assert tb.alarm(kv) == 4_000_000_000
    r = oks(await run(kv, op("delete_all"), op("get", "a"), op("list"), op("get_alarm")))
    assert r == [None, None, {}, None]
    assert tb.storage(kv) == {}
    assert tb.alarm(kv) is None
    await tb.restart()
    assert tb.storage(kv) == {}
    assert tb.alarm(kv) is None
    assert oks(await run(tb.env.KV.get(kv.id), op("get_alarm"), op("list"))) == [None, {}]


async def test_delete_all_then_put_in_same_event_keeps_only_new_writes(tb, kv):
    await run(kv, op("put_many", {"old1": 1, "old2": 2}))
    r = oks(await run(kv, op("delete_all"), op("put", "new", 3), op("list"), op("get", "old1")))
    assert r[2:] == [{"new": 3}, None]
    assert tb.storage(kv) == {"new": 3}


async def test_delete_all_does_not_touch_other_objects(tb, kv):
    other = tb.env.KV.get_by_name("other")
    await run(other, op("put", "a", "keep"))
    await run(kv, op("put", "a", "drop"), op("delete_all"))
    assert tb.storage(other) == {"a": "keep"}
    assert tb.storage(kv) == {}


# -- list --------------------------------------------------------------------------------------

KEYS = ["a", "aa", "ab", "b", "ba", "bb", "c"]


@pytest.fixture
async def listed(tb, kv):
    await run(kv, op("put_many", {k: k.upper() for k in KEYS}))
    return kv


async def keys_of(stub, **kwargs):
    [got] = oks(await run(stub, op("list", **kwargs)))
    return list(got)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, KEYS),
        ({"prefix": "a"}, ["a", "aa", "ab"]),
        ({"prefix": "b"}, ["b", "ba", "bb"]),
        ({"prefix": "ab"}, ["ab"]),
        ({"prefix": "x"}, []),
        ({"start": "aa"}, ["aa", "ab", "b", "ba", "bb", "c"]),  # inclusive
        ({"start": "ab0"}, ["b", "ba", "bb", "c"]),  # need not exist
        ({"start_after": "aa"}, ["ab", "b", "ba", "bb", "c"]),  # exclusive
        ({"start_after": "a"}, ["aa", "ab", "b", "ba", "bb", "c"]),
        ({"end": "b"}, ["a", "aa", "ab"]),  # exclusive
        ({"end": "ba"}, ["a", "aa", "ab", "b"]),
        ({"start": "aa", "end": "ba"}, ["aa", "ab", "b"]),
        ({"start_after": "aa", "end": "ba"}, ["ab", "b"]),
        ({"start": "b", "end": "b"}, []),
        ({"start": "c", "end": "a"}, []),
        ({"reverse": True}, KEYS[::-1]),
        ({"limit": 2}, ["a", "aa"]),
        ({"limit": 100}, KEYS),
        ({"reverse": True, "limit": 2}, ["c", "bb"]),  # the LAST keys of the range
        ({"prefix": "b", "reverse": True}, ["bb", "ba", "b"]),
        ({"prefix": "b", "limit": 2}, ["b", "ba"]),
        ({"prefix": "b", "start": "ba"}, ["ba", "bb"]),
        ({"prefix": "b", "start_after": "b"}, ["ba", "bb"]),
        ({"prefix": "b", "end": "bb"}, ["b", "ba"]),
        ({"prefix": "b", "start": "a"}, ["b", "ba", "bb"]),  # start before the prefix
        ({"prefix": "a", "end": "z"}, ["a", "aa", "ab"]),  # end after the prefix
        ({"prefix": "a", "start": "b"}, []),  # start after the prefix
        ({"start": "aa", "end": "bb", "reverse": True}, ["ba", "b", "ab", "aa"]),
        ({"start_after": "aa", "end": "bb", "reverse": True, "limit": 2}, ["ba", "b"]),
        ({"prefix": "b", "start_after": "b", "end": "bb", "reverse": True, "limit": 5}, ["ba"]),
    ],
)
async def test_list_range_semantics(listed, kwargs, expected):
    assert await keys_of(listed, **kwargs) == expected


async def test_list_returns_values(listed):
    [got] = oks(await run(listed, op("list", prefix="a")))
    assert got == {"a": "A", "aa": "AA", "ab": "AB"}


async def test_list_start_and_start_after_together_is_an_error(listed):
    [r] = await run(listed, op("list", start="a", start_after="a"))
    assert r["err"] == "InvalidArgumentError" and r["at_call"]


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "2"])
async def test_list_bad_limit_is_an_error(listed, limit):
    [r] = await run(listed, op("list", limit=limit))
    assert r["err"] == "InvalidArgumentError" and r["at_call"]


async def test_list_orders_by_utf8_bytes_with_non_ascii_keys(tb, kv):
    # "\uff61" sorts before "😀" in UTF-8 (ef bd a1 < f0 9f 98 80) but after it in UTF-16
    # (ff61 > d83d): the order must be the UTF-8 one.
    keys = ["😀", "z", "中", "\u007f", "é", "a", "\uff61", "A", "e", "ée", "~"]
    await run(kv, op("put_many", {k: i for i, k in enumerate(keys)}))
    expected = sorted(keys, key=lambda k: k.encode("utf-8"))
    assert expected.index("\uff61") < expected.index("😀")
    assert await keys_of(kv) == expected
    assert await keys_of(kv, reverse=True) == expected[::-1]
    assert await keys_of(kv, prefix="é") == ["é", "ée"]
    assert await keys_of(kv, start="é", end="😀") == [k for k in expected if "é" <= k < "😀"]
    assert list(tb.storage(kv)) == expected
    await tb.restart()
    assert await keys_of(tb.env.KV.get(kv.id)) == expected


async def test_list_merges_uncommitted_writes_with_committed_ones(tb, kv):
    """Writes of the same turn (not yet committed, not awaited) are listed with the committed
    keys, deletes hide committed keys, and the order/limit/reverse still hold."""
    await run(kv, op("put_many", {"b": 1, "d": 1, "f": 1, "h": 1}))
    assert list(tb.storage(kv)) == ["b", "d", "f", "h"]
    r = oks(await run(
        kv,
        op("put", "a", 2), op("put", "e", 2), op("put", "z", 2),  # new keys
        op("put", "d", 2),  # overwrite a committed key
        op("delete", "f"),  # delete a committed key
        op("list"),
        op("list", reverse=True),
        op("list", limit=3),
        op("list", reverse=True, limit=3),
        op("list", start="c", end="h"),
        op("list", start_after="e"),
    ))
    assert r[5] == {"a": 2, "b": 1, "d": 2, "e": 2, "h": 1, "z": 2}
    assert list(r[6]) == ["z", "h", "e", "d", "b", "a"]
    assert list(r[7]) == ["a", "b", "d"]
    assert list(r[8]) == ["z", "h", "e"]
    assert r[9] == {"d": 2, "e": 2}
    assert list(r[10]) == ["h", "z"]
    assert tb.storage(kv) == {"a": 2, "b": 1, "d": 2, "e": 2, "h": 1, "z": 2}


async def test_list_after_delete_all_in_same_event_hides_committed_keys(tb, kv):
    await run(kv, op("put_many", {"a": 1, "b": 1}))
    r = oks(await run(
        kv, op("delete_all"), op("put", "c", 2), op("list"), op("list", reverse=True)
    ))
    assert r[2:] == [{"c": 2}, {"c": 2}]


async def test_empty_and_maximum_length_keys(tb, kv):
    longest = "é" * 1024  # exactly 2048 UTF-8 bytes
    r = await run(kv, op("put", "", 0), op("put", longest, 1), op("get", ""), op("get", longest))
    assert oks(r) == [None, None, 0, 1]
    assert tb.storage(kv) == {"": 0, longest: 1}


# -- limits and bad input: raised at the call, and nothing of that call is written --------------

BAD_KEYS = [
    ("x" * 2049, "2049 bytes"),
    ("é" * 1024 + "a", "2049 UTF-8 bytes"),
    ("$SUR", "lone surrogate"),  # built on the object's side (see apps/kv.py)
    ("$LOWSUR", "lone low surrogate"),
    ("$INT", "int"),
    ("$BYTES", "bytes"),
    ("$NONE", "None"),
]

BAD_VALUES = [
    ({"$bad": "object"}, "object()"),
    ({"$bad": "set"}, "set"),
    ({"$bad": "bigint"}, "2**64"),
    ({"nested": [{"$bad": "object"}]}, "nested object()"),
    (b"x" * (128 * 1024), "over 128 KiB encoded"),
]


async def assert_nothing_written(tb, stub, before):
    assert tb.storage(stub) == before
    await tb.restart()
    assert tb.storage(stub) == before


@pytest.mark.parametrize("key, why", BAD_KEYS, ids=[w for _, w in BAD_KEYS])
@pytest.mark.parametrize(
    "operation", ["get", "put", "delete", "get_many", "put_many", "delete_many"]
)
async def test_bad_key_raises_at_call_and_writes_nothing(tb, kv, key, why, operation):
    await run(kv, op("put", "keep", 1))
    step = {
        "get": op("get", key),
        "put": op("put", key, 1),
        "delete": op("delete", key),
        "get_many": op("get_many", ["keep", key]),
        "put_many": None,
        "delete_many": op("delete_many", ["keep", key]),
    }[operation]
    if operation == "put_many":
        step = op("put_many", {"good": 1, key: 2, "good2": 3})
    r = await run(kv, step, op("get_many", ["keep", "good", "good2"]))
    assert r[0]["err"] == "InvalidArgumentError" and r[0]["at_call"], r
    assert r[1] == {"ok": {"keep": 1}}  # nothing of the failed call is in the overlay either
    await assert_nothing_written(tb, kv, {"keep": 1})


async def test_put_many_non_str_key(tb, kv):
    [r] = await run(kv, op("put_many", {1: "a"}))  # msgpack keeps the int key
    assert r["err"] == "InvalidArgumentError" and r["at_call"]
    await assert_nothing_written(tb, kv, {})


@pytest.mark.parametrize("key", ["x" * 2049, "$SUR", "$INT"])
async def test_bad_key_in_list_bounds_is_an_error(tb, kv, key):
    for kwargs in ({"prefix": key}, {"start": key}, {"start_after": key}, {"end": key}):
        [r] = await run(kv, op("list", **kwargs))
        assert r["err"] == "InvalidArgumentError" and r["at_call"], kwargs


@pytest.mark.parametrize("value, why", BAD_VALUES, ids=[w for _, w in BAD_VALUES])
async def test_bad_value_in_put_raises_at_call_and_writes_nothing(tb, kv, value, why):
    await run(kv, op("put", "keep", 1))
    r = await run(kv, op("put", "k", value), op("get", "k", "absent"))
    assert r[0]["err"] == "InvalidValueError" and r[0]["at_call"], r
    assert issubclass(InvalidValueError, InvalidArgumentError)
    assert r[1] == {"ok": "absent"}
    await assert_nothing_written(tb, kv, {"keep": 1})


@pytest.mark.parametrize("value, why", BAD_VALUES, ids=[w for _, w in BAD_VALUES])
async def test_put_many_with_one_bad_value_writes_nothing(tb, kv, value, why):
    await run(kv, op("put", "keep", 1))
    entries = {"a": 1, "b": value, "c": 3}
    r = await run(kv, op("put_many", entries), op("get_many", ["a", "b", "c"]))
    assert r[0]["err"] == "InvalidValueError" and r[0]["at_call"], r
    assert r[1] == {"ok": {}}
    await assert_nothing_written(tb, kv, {"keep": 1})


async def test_put_does_not_overwrite_when_new_value_is_bad(tb, kv):
    await run(kv, op("put", "k", "old"))
    r = await run(kv, op("put", "k", {"$bad": "set"}), op("get", "k"))
    assert r[0]["err"] == "InvalidValueError"
    assert r[1] == {"ok": "old"}
    await assert_nothing_written(tb, kv, {"k": "old"})


async def test_value_at_exactly_the_limit_is_accepted(tb, kv):
    limit = 128 * 1024
    ok_value = b"x" * (limit - 5)  # bin32 header: 5 bytes -> exactly the limit encoded
    r = await run(kv, op("put", "max", ok_value), op("put", "over", b"x" * (limit - 4)))
    assert r[0] == {"ok": None}
    assert r[1]["err"] == "InvalidValueError"
    assert list(tb.storage(kv)) == ["max"]


async def test_value_limit_is_configurable(tmp_path):
    app = Path(__file__).parent / "apps" / "kv.py"
    async with Testbed(app=app, data_dir=tmp_path / "d", max_value_bytes=1000) as tb:
        kv = tb.env.KV.get_by_name("small")
        r = await run(kv, op("put", "ok", b"x" * 997), op("put", "big", b"x" * 998),
                      op("put_many", {"a": 1, "big": "y" * 2000}))
        assert r[0] == {"ok": None}
        assert r[1]["err"] == "InvalidValueError" and "1000" in r[1]["msg"]
        assert r[2]["err"] == "InvalidValueError"
        await assert_nothing_written(tb, kv, {"ok": b"x" * 997})


async def test_more_than_128_keys_raises_and_writes_nothing(tb, kv):
    await run(kv, op("put", "keep", 1))
    keys = [f"k{i}" for i in range(129)]
    r = await run(
        kv,
        op("put_many", {k: 1 for k in keys}),
        op("get_many", keys),
        op("delete_many", ["keep", *keys[:128]]),
        op("list"),
    )
    assert [x.get("err") for x in r[:3]] == ["InvalidArgumentError"] * 3
    assert all(x["at_call"] for x in r[:3])
    assert r[3] == {"ok": {"keep": 1}}
    await assert_nothing_written(tb, kv, {"keep": 1})


@pytest.mark.parametrize("keys", ["abc", b"abc", 5, {"$bad": "set"}])
async def test_multi_key_calls_need_a_list_of_keys(tb, kv, keys):
    r = await run(kv, op("get_many", keys), op("delete_many", keys), op("put_many", keys))
    assert [x.get("err") for x in r] == ["InvalidArgumentError"] * 3, r


async def test_storage_error_propagates_to_the_caller(tb, kv):
    with pytest.raises(InvalidArgumentError):
        await kv.run_raising("put", ["x" * 3000, 1], {})
    with pytest.raises(InvalidValueError):
        await tb.env.KV.get(kv.id).run_raising("put", ["k", {"$bad": "object"}], {})
    assert tb.storage(kv) == {}
