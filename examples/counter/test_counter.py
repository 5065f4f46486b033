"""The Counter through the Testbed: RPC and HTTP, eviction, restart, concurrency."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from duro.testing import Testbed

APP = Path(__file__).parent


@pytest.fixture
async def tb(tmp_path):
    async with Testbed(app=APP, data_dir=tmp_path) as tb:
        yield tb


async def test_increment_and_get_by_rpc(tb):
    counter = tb.env.COUNTER.get_by_name("room-123")
    assert await counter.get() == 0
    assert await counter.increment() == 1
    assert await counter.increment(5) == 6
    assert await counter.get() == 6
    assert tb.storage(counter.id) == {"value": 6}
    assert await tb.env.COUNTER.get_by_name("other").get() == 0


async def test_increment_and_get_by_fetch(tb):
    counter = tb.env.COUNTER.get_by_name("room-123")
    resp = await counter.fetch("http://example.com/counter/room-123/increment")
    assert (resp.status, resp.json_body()) == (200, {"value": 1})
    resp = await counter.fetch("/increment")
    assert resp.json_body() == {"value": 2}
    resp = await counter.fetch("/get")
    assert (resp.status, resp.json_body()) == (200, {"value": 2})
    assert await counter.get() == 2  # HTTP and RPC see one value
    resp = await counter.fetch("/decrement")
    assert (resp.status, resp.text()) == (404, "Not found")
    assert tb.storage(counter.id) == {"value": 2}


async def test_websocket_needs_the_edge(tb):
    resp = await tb.env.COUNTER.get_by_name("a").fetch("/websocket")
    assert resp.status == 426


async def test_value_survives_eviction_and_restart(tb):
    counter = tb.env.COUNTER.get_by_name("a")
    for _ in range(3):
        await counter.increment()
    assert await tb.evict(counter.id)
    assert tb.host.activation(counter.id.raw) is None
    assert await counter.get() == 3  # constructor ran again and loaded the value
    await counter.increment()
    await tb.restart()
    counter = tb.env.COUNTER.get_by_name("a")  # stubs belong to the host that made them
    assert await counter.get() == 4
    assert (await counter.fetch("/get")).json_body() == {"value": 4}


async def test_500_concurrent_increments(tb):
    counter = tb.env.COUNTER.get_by_name("hot")
    results = await asyncio.gather(*(counter.increment() for _ in range(500)))
    assert sorted(results) == list(range(1, 501))  # each saw a distinct value
    assert await counter.get() == 500
    await tb.restart()
    assert await tb.env.COUNTER.get_by_name("hot").get() == 500


async def test_concurrent_increments_across_stubs_and_fetch(tb):
    stubs = [tb.env.COUNTER.get_by_name("hot") for _ in range(10)]
    calls = [s.increment() for s in stubs for _ in range(25)]
    calls += [stubs[0].fetch("/increment") for _ in range(250)]
    await asyncio.gather(*calls)
    assert await stubs[0].get() == 500


async def test_a_value_storage_refuses_leaves_the_counter_as_it_was(tb):
    """msgpack stores integers up to 2**64 - 1: an increment past that is refused, and the
    counter keeps its last stored value (the example validates before it changes itself)."""
    counter = tb.env.COUNTER.get_by_name("big")
    assert await counter.increment(2**63) == 2**63
    with pytest.raises(Exception) as err:
        await counter.increment(2**63)
    assert "InvalidValue" in type(err.value).__name__ or "invalid" in str(err.value).lower()
    assert await counter.get() == 2**63
    assert await counter.increment() == 2**63 + 1
    with pytest.raises(Exception):
        await counter.increment("1")  # not an integer
    assert await counter.get() == 2**63 + 1
