"""The per-object storage quota (docs/storage.md, "Limits"), through the real runtime (stub ->
input gate -> ctx.storage -> group commit -> RocksDB), and through a node process over gRPC.

Usage is counted exactly (a key's UTF-8 bytes plus its encoded value), so every test checks the
boundary to the byte: a write that reaches the quota exactly succeeds, one byte more is refused
with ``StorageLimitError``, and the refused call leaves nothing behind. The usage record on disk
is compared with a count of the object's keys after every step that changes it.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import duro.client
from duro._app import ConfigError
from duro.errors import StorageLimitError
from duro.node.storage import layout, usage
from duro.testing import Testbed
from tests.helpers.node_process import start_node, stop_node
from tests.helpers.storage_quota import assert_room, size, value_of

pytestmark = pytest.mark.timeout(120)

APP = Path(__file__).parent / "apps" / "limits"
QUOTA = 1000


def on_disk(tb: Testbed, stub) -> tuple[int | None, int]:  # noqa: ANN001
    """(the usage record, a count of the keys) of an object, from RocksDB."""
    oid = stub.id.raw
    raw = tb.engine.get(layout.usage_key(0, oid))
    counted = sum(size(k, v) for k, v in tb.storage(stub).items())
    return (None if raw is None else usage.decode(raw)), counted


def assert_record_exact(tb: Testbed, stub) -> int:  # noqa: ANN001
    record, counted = on_disk(tb, stub)
    if counted == 0:
        assert record is None, "an object that stores nothing keeps a usage record"
    else:
        assert record == counted, f"usage record {record} != {counted} bytes stored"
    return counted


@pytest.fixture
async def tb(tmp_path):
    async with Testbed(app=APP, data_dir=tmp_path / "d", max_storage_bytes=QUOTA) as t:
        yield t


async def test_usage_counts_keys_and_encoded_values_to_the_byte(tb):
    s = tb.env.STORE.get_by_name("exact")
    await s.put("a", "x" * 100)
    await s.put_many({"é": [1, 2, 3], "c": {"k": None}})
    used = size("a", "x" * 100) + size("é", [1, 2, 3]) + size("c", {"k": None})
    assert assert_record_exact(tb, s) == used
    await assert_room(s, QUOTA - used)
    # Filled to the byte: the write that reaches the quota exactly is allowed.
    await s.put("fill", value_of(QUOTA - used, "fill"))
    assert assert_record_exact(tb, s) == QUOTA
    with pytest.raises(StorageLimitError) as err:
        await s.put("z", None)
    assert err.value.code == "storage_limit" and not err.value.retryable
    assert "1000 bytes" in str(err.value) and "Nothing of it was written" in str(err.value)
    assert "z" not in tb.storage(s)


async def test_refused_call_writes_nothing_and_the_object_goes_on(tb):
    s = tb.env.STORE.get_by_name("nothing")
    await s.put("keep", value_of(600, "keep"))
    # put_many: all or nothing, also when only its last key crosses the quota.
    with pytest.raises(StorageLimitError):
        await s.put_many({"m1": value_of(100, "m1"), "m2": value_of(100, "m2"),
                          "m3": value_of(201, "m3")})
    assert sorted(tb.storage(s)) == ["keep"]
    # In one event: the writes before the refused call stay, the call itself writes nothing.
    res = await s.put_then_fail({"ok1": value_of(150, "ok1")}, "big", value_of(251, "big"))
    assert res["err"] == "StorageLimitError"
    assert sorted(tb.storage(s)) == ["keep", "ok1"]
    assert assert_record_exact(tb, s) == 750
    # Not reset: the object answers and its in-memory state is intact.
    assert await s.ping() == "pong"
    await assert_room(s, 250)


async def test_overwrites_and_deletes_give_room_back(tb):
    s = tb.env.STORE.get_by_name("room")
    await s.put_many({"a": value_of(400, "a"), "b": value_of(300, "b"), "c": value_of(200, "c")})
    await assert_room(s, 100)
    await s.put("a", value_of(250, "a"))  # overwrite smaller: 150 back
    await assert_room(s, 250)
    await s.put("a", value_of(400, "a"))  # and bigger again: only the difference is charged
    await assert_room(s, 100)
    with pytest.raises(StorageLimitError):
        await s.put("a", value_of(501, "a"))  # an overwrite past the quota is refused too
    assert tb.storage(s)["a"] == value_of(400, "a")
    assert await s.delete("b") is True
    await assert_room(s, 400)
    assert await s.delete("b") is False  # deleting what is gone changes nothing
    await assert_room(s, 400)
    assert await s.delete_many(["c", "c", "missing"]) == 1
    await assert_room(s, 600)
    assert assert_record_exact(tb, s) == 400
    await s.delete_all()
    assert assert_record_exact(tb, s) == 0
    await assert_room(s, QUOTA)


async def test_transaction_over_the_quota_is_not_applied(tb):
    s = tb.env.STORE.get_by_name("txn")
    await s.put("base", value_of(500, "base"))
    # Refused at the put that crosses the quota; the transaction's earlier writes go with it.
    res = await s.txn([["put", ["t1", value_of(300, "t1")]], ["put", ["t2", value_of(201, "t2")]]])
    assert res["err"] == "StorageLimitError"
    assert sorted(tb.storage(s)) == ["base"]
    # A transaction that makes room first fits: its own deletes count.
    res = await s.txn([["delete", ["base"]], ["put", ["t1", value_of(700, "t1")]],
                       ["put", ["t2", value_of(300, "t2")]]])
    assert res == {"ok": True}
    assert sorted(tb.storage(s)) == ["t1", "t2"]
    assert assert_record_exact(tb, s) == QUOTA
    # delete_all in a transaction: only what it writes afterwards counts.
    res = await s.txn([["delete_all", []], ["put", ["n", value_of(QUOTA, "n")]]])
    assert res == {"ok": True}
    assert sorted(tb.storage(s)) == ["n"]
    res = await s.txn([["delete_all", []], ["put", ["n", value_of(QUOTA + 1, "n")]]])
    assert res["err"] == "StorageLimitError"
    assert sorted(tb.storage(s)) == ["n"] and assert_record_exact(tb, s) == QUOTA


async def test_transaction_is_checked_again_against_writes_made_outside_it(tb):
    s = tb.env.STORE.get_by_name("outside")
    await s.put("base", value_of(400, "base"))
    # Each write fits on its own view (400 + 500 and 400 + 500), together they do not: the
    # transaction is refused when it ends, the write made outside it stays.
    res = await s.txn_with_outside_write({"t": value_of(500, "t")}, {"o": value_of(500, "o")})
    assert res["err"] == "StorageLimitError" and "not applied" in res["msg"]
    assert sorted(tb.storage(s)) == ["base", "o"]
    assert assert_record_exact(tb, s) == 900
    # The transaction overwrites the outside write: charged against what the storage holds.
    res = await s.txn_with_outside_write({"o": value_of(550, "o")}, {"o": value_of(10, "o")})
    assert res == {"ok": True}
    assert tb.storage(s)["o"] == value_of(550, "o")
    assert assert_record_exact(tb, s) == 950


async def test_accounting_survives_a_restart(tb):
    s = tb.env.STORE.get_by_name("restart")
    await s.put_many({"a": value_of(300, "a"), "b": value_of(300, "b")})
    await s.delete("a")
    await tb.restart()
    assert assert_record_exact(tb, s) == 300
    await assert_room(s, 700)
    await tb.evict(s.id)
    await assert_room(s, 700)


async def test_an_object_written_before_usage_records_is_counted_once(tmp_path):
    async with Testbed(app=APP, data_dir=tmp_path / "d", max_storage_bytes=QUOTA) as tb:
        s = tb.env.STORE.get_by_name("legacy")
        await s.put_many({"a": value_of(300, "a"), "b": value_of(200, "b")})
        # As a node of the previous version left it: the keys, and no usage record.
        import rocksdict
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.delete(layout.usage_key(0, s.id.raw))
        tb.engine.write(batch)
        await tb.restart()
        assert on_disk(tb, s) == (None, 500)
        await assert_room(s, 500)
        assert assert_record_exact(tb, s) == 500  # recorded with the first write


async def test_a_lowered_quota_refuses_growth_but_never_shrinking(tmp_path):
    data = tmp_path / "d"
    async with Testbed(app=APP, data_dir=data, max_storage_bytes=QUOTA) as tb:
        s = tb.env.STORE.get_by_name("lowered")
        await s.put_many({"a": value_of(500, "a"), "b": value_of(500, "b")})
    async with Testbed(app=APP, data_dir=data, max_storage_bytes=600) as tb:
        s = tb.env.STORE.get_by_name("lowered")
        with pytest.raises(StorageLimitError):
            await s.put("c", None)
        await s.put("a", value_of(400, "a"))  # smaller: allowed although still over 600
        assert await s.delete("b") is True
        await assert_room(s, 200)


async def test_no_quota_when_zero_and_negative_is_a_config_error(tmp_path):
    async with Testbed(app=APP, data_dir=tmp_path / "d", max_storage_bytes=0) as tb:
        s = tb.env.STORE.get_by_name("unlimited")
        await s.fill("k", 0, 300, "x" * 100)
        assert assert_record_exact(tb, s) == 300 * size("k00000000", "x" * 100)
    with pytest.raises((ConfigError, ValueError), match="max_storage_bytes"):
        Testbed(app=APP, data_dir=tmp_path / "e", max_storage_bytes=-1)
    from duro.node.config import RuntimeConfig
    assert RuntimeConfig().max_storage_bytes == 10_000_000_000  # Cloudflare's 10 GB (10^9)


async def test_record_equals_a_recount_after_random_operations(tmp_path):
    """Random puts, overwrites, deletes, delete_all and transactions, each checked on disk."""
    rng = random.Random(1234)
    async with Testbed(app=APP, data_dir=tmp_path / "d", max_storage_bytes=1500) as tb:
        s = tb.env.STORE.get_by_name("random")
        keys = [f"k{i}" for i in range(16)]

        def val() -> object:
            kind = rng.choices(["str", "int", "list", "dict"], [6, 1, 1, 2])[0]
            return {"str": lambda: "x" * rng.randrange(0, 500),
                    "int": lambda: rng.randrange(-10**9, 10**9),
                    "list": lambda: [1, "two", None],
                    "dict": lambda: {"n": "y" * rng.randrange(0, 50)}}[kind]()

        refused = 0
        for step in range(300):
            kind = rng.choices(["put", "put_many", "delete", "delete_many", "txn", "delete_all",
                                "restart"], [30, 15, 15, 10, 20, 2, 3])[0]
            try:
                if kind == "put":
                    await s.put(rng.choice(keys), val())
                elif kind == "put_many":
                    await s.put_many({k: val() for k in rng.sample(keys, 3)})
                elif kind == "delete":
                    await s.delete(rng.choice(keys))
                elif kind == "delete_many":
                    await s.delete_many(rng.sample(keys, 4))
                elif kind == "delete_all":
                    await s.delete_all()
                elif kind == "restart":
                    await tb.restart()
                else:
                    ops = [["put", [rng.choice(keys), val()]] if rng.random() < 0.7
                           else ["delete", [rng.choice(keys)]] for _ in range(4)]
                    res = await s.txn(ops)
                    refused += "err" in res
            except StorageLimitError:
                refused += 1
            used = assert_record_exact(tb, s)
            assert used <= 1500, (step, kind, used)
        assert refused > 10, refused  # the quota was actually reached, many times


# -- through a node process --------------------------------------------------------------------

async def test_quota_through_a_node_process_across_restarts(tmp_path):
    data = tmp_path / "n1"
    proc, address = start_node(APP, data, "--max-storage-bytes", "5000")
    try:
        async with duro.client.connect(node=address, app=APP) as c:
            s = c.namespace("STORE").get_by_name("over-grpc")
            await s.fill("k", 0, 40, "x" * 100)  # 40 * (9 + 102) = 4440 bytes
            used = 40 * size("k00000000", "x" * 100)
            with pytest.raises(StorageLimitError) as err:
                await s.put("big", value_of(5000 - used + 1, "big"))
            assert err.value.code == "storage_limit" and not err.value.retryable
            assert await s.get("big") is None
    finally:
        stop_node(proc)
    proc, address = start_node(APP, data, "--max-storage-bytes", "5000")
    try:
        async with duro.client.connect(node=address, app=APP) as c:
            s = c.namespace("STORE").get_by_name("over-grpc")
            await assert_room(s, 5000 - used)
            assert await s.get("k00000039") == "x" * 100
    finally:
        stop_node(proc)
