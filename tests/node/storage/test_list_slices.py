"""``list()`` of a huge object (docs/storage.md, "list() of a large range"): read in slices, so
the node keeps serving other objects; still a snapshot as of the call; still behind the object's
input gate; and capped by ``max_list_bytes`` with an error that says how to paginate.

The first test runs a real node process with one object of 1,000,000 keys (~110 MB) and calls
another object while a ``list()`` of all of it runs: without slices that ``list()`` holds the
node's event loop for its whole duration (seconds), and the other object's call waits for it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import duro.client
from duro import _codec
from duro.errors import StorageLimitError
from duro.testing import Testbed
from tests.helpers.node_process import start_node, stop_node

APP = Path(__file__).parent / "apps" / "limits"

BIG_KEYS = 1_000_000
VALUE = "v" * 100  # 9-byte keys + 102-byte values: ~111 MB of keys and values


def key(prefix: str, i: int) -> str:
    return f"{prefix}{i:08d}"


@pytest.mark.timeout(600)
async def test_other_objects_answer_while_a_huge_list_runs(tmp_path):
    proc, address = start_node(APP, tmp_path / "n1")
    try:
        async with duro.client.connect(node=address, app=APP) as c:
            ns = c.namespace("STORE")
            big, other = ns.get_by_name("big"), ns.get_by_name("other")
            step = 50_000
            for start in range(0, BIG_KEYS, step):
                await big.fill("k", start, step, VALUE)
            assert await other.ping() == "pong"

            listing = asyncio.ensure_future(big.count())
            await asyncio.sleep(0.3)  # the list is running on the node by now
            latencies = []
            answered_during = 0  # pings answered before the list's own answer came back
            while not listing.done():
                t0 = time.perf_counter()
                assert await other.ping() == "pong"
                latencies.append(time.perf_counter() - t0)
                answered_during += not listing.done()
            result = await listing

            assert result == {"n": BIG_KEYS, "first": key("k", 0), "last": key("k", BIG_KEYS - 1),
                              "seconds": result["seconds"]}
            # The list was long enough to matter, and other calls were answered meanwhile,
            # each within a generous bound (without slices: after the whole list, seconds).
            assert result["seconds"] > 0.5, result
            assert answered_during >= 10, (answered_during, result)
            assert max(latencies) < 0.5, (max(latencies), len(latencies), result)
    finally:
        stop_node(proc)


# -- in process (Testbed): semantics --------------------------------------------------------------

MID_KEYS = 60_000  # a list of these takes several slices of 5 ms


@pytest.fixture
async def tb(tmp_path):
    async with Testbed(app=APP, data_dir=tmp_path / "d", sync_wal=False) as t:
        yield t


async def test_a_sliced_list_is_a_snapshot_as_of_the_call(tb):
    s = tb.env.STORE.get_by_name("snap")
    await s.fill("k", 0, MID_KEYS, "orig")
    res = await s.list_while_writing("k", MID_KEYS)
    assert res["sliced"], "the list fitted in one slice: the test would prove nothing"
    assert res["rounds_during_list"] > 0, "nothing wrote during the list"
    assert res["listed"] == {key("k", i): "orig" for i in range(MID_KEYS)}
    # The background writes did happen (after the snapshot).
    after = await s.listing(prefix="k")
    assert after != res["listed"] and "changed" in after.values()


async def test_no_other_event_of_the_object_runs_inside_a_sliced_list(tb):
    s = tb.env.STORE.get_by_name("gate")
    await s.fill("k", 0, MID_KEYS, "x")
    counting = asyncio.ensure_future(s.count())
    act = tb.host.activation(s.id.raw)
    while "count-start" not in act.instance.events:
        await asyncio.sleep(0)  # until the count event runs its list (many slices)
    assert not counting.done()
    events = await s.mark()
    result = await counting
    assert result["n"] == MID_KEYS
    assert events == ["count-start", "count-end", "mark"], events


async def test_sliced_list_merges_pending_writes_in_order(tb):
    s = tb.env.STORE.get_by_name("merge")
    await s.fill("k", 0, MID_KEYS, "disk")
    writes = {key("k", i): "new" for i in range(0, MID_KEYS, 997)}
    writes.update({key("k", MID_KEYS + i): "tail" for i in range(5)})
    deletes = [key("k", i) for i in range(1, MID_KEYS, 1009)]
    expected = {key("k", i): "disk" for i in range(MID_KEYS)}
    expected.update(writes)
    for k in deletes:
        expected.pop(k, None)
    got = await s.list_with_pending("k", writes, deletes)
    assert list(got.items()) == sorted(expected.items())
    got = await s.list_with_pending("k", {}, [], reverse=True, limit=MID_KEYS - 10)
    assert list(got.items()) == sorted(expected.items(), reverse=True)[:MID_KEYS - 10]
    got = await s.list_with_pending("k", {}, [], start_after=key("k", 5), end=key("k", 40_000))
    assert list(got) == [k for k in sorted(expected) if key("k", 5) < k < key("k", 40_000)]


async def test_a_list_larger_than_max_list_bytes_is_refused_with_a_pagination_hint(tmp_path):
    per_key = len(key("k", 0)) + len(_codec.encode("x" * 100))
    async with Testbed(app=APP, data_dir=tmp_path / "d", sync_wal=False,
                       max_list_bytes=per_key * 1000) as tb:
        s = tb.env.STORE.get_by_name("capped")
        await s.fill("k", 0, 5000, "x" * 100)
        with pytest.raises(StorageLimitError, match=r"start_after") as err:
            await s.count()
        assert "max_list_bytes" in str(err.value) and not err.value.retryable
        assert (await s.count(end=key("k", 1000)))["n"] == 1000  # exactly the cap: allowed
        with pytest.raises(StorageLimitError):
            await s.count(limit=1001)
        # Paging through it, as the error says, reads everything.
        seen: list[str] = []
        last = None
        while True:
            page = await s.listing(limit=1000, **({"start_after": last} if last else {}))
            if not page:
                break
            seen.extend(page)
            last = list(page)[-1]
        assert seen == [key("k", i) for i in range(5000)]
        assert await s.ping() == "pong"  # the refused list did not reset the object
