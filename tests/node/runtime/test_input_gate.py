"""docs/runtime.md, "Events and gates": block_concurrency_while (in the constructor and in a handler) and
storage transactions are never interleaved with another event to the same object. Events DO
interleave where a handler awaits other I/O, e.g. a call to another object: that is the documented
behaviour (as in Durable Objects), and the race-free pattern is to put the call inside
block_concurrency_while."""

from __future__ import annotations

import asyncio

import pytest

from duro.errors import ObjectResetError

pytestmark = pytest.mark.timeout(30)


async def test_bcw_in_constructor_delays_the_first_event(tb, objs):
    objs.FLAGS["load_seconds"] = 0.1
    stub = tb.env.LOADER.get_by_name("l")
    assert await stub.is_loaded() is True
    assert objs.LOG == [("start", "load"), ("end", "load"), ("event", "is_loaded")]


async def test_bcw_in_handler_blocks_other_events_until_it_ends(tb, objs, wait_for):
    rec = tb.env.RECORDER.get_by_name("r")
    g = asyncio.ensure_future(rec.guarded("g", 0.2))
    await wait_for(lambda: ("start", "g") in objs.LOG)
    others = [asyncio.ensure_future(rec.ping(f"p{i}")) for i in range(3)]
    others.append(asyncio.ensure_future(rec.sleepy("s", 0.01)))
    await asyncio.gather(g, *others)
    assert objs.LOG[:2] == [("start", "g"), ("end", "g")], objs.LOG
    assert objs.LOG[2:5] == [("event", "p0"), ("event", "p1"), ("event", "p2")]


async def test_without_bcw_events_interleave_at_a_sleep(tb, objs, wait_for):
    """Control for the test above: the same handler without the gate IS interleaved, so the
    ordering there is the gate's doing."""
    rec = tb.env.RECORDER.get_by_name("r")
    s = asyncio.ensure_future(rec.sleepy("s", 0.2))
    await wait_for(lambda: ("start", "s") in objs.LOG)
    await rec.ping("p")
    await s
    assert objs.LOG == [("start", "s"), ("event", "p"), ("end", "s")]


async def test_events_interleave_while_awaiting_another_objects_stub__documented(
    tb, objs, wait_for
):
    """Documented behaviour (docs/runtime.md, as in Durable Objects): while a handler awaits a call to
    another object, other events of the same object are delivered. Read-modify-write across such
    an await is racy unless guarded (next test)."""
    rec = tb.env.RECORDER.get_by_name("r")
    c = asyncio.ensure_future(rec.call_other("c", "slow", 0.2))
    await wait_for(lambda: ("start", "c") in objs.LOG)
    assert await rec.ping("p") == "p"  # answered while c still waits for SLOW
    assert not c.done()
    assert await c == "c"
    assert objs.LOG == [("start", "c"), ("event", "p"), ("end", "c")]


async def test_call_to_another_object_inside_bcw_is_not_interleaved(tb, objs, wait_for):
    """The pattern that avoids the race above: the outgoing call inside block_concurrency_while."""
    rec = tb.env.RECORDER.get_by_name("r")
    c = asyncio.ensure_future(rec.call_other_guarded("c", "slow", 0.2))
    await wait_for(lambda: ("start", "c") in objs.LOG)
    p = asyncio.ensure_future(rec.ping("p"))
    assert await c == "c"
    await p
    assert objs.LOG == [("start", "c"), ("end", "c"), ("event", "p")]


async def test_storage_operations_never_yield_to_other_events(tb, objs):
    """A storage operation completes at the call: 200 concurrent read-modify-write events with an
    ``await storage.get`` in between never lose an update."""
    stub = tb.env.PLAIN.get_by_name("rmw")
    lengths = await asyncio.gather(*(stub.rmw(i) for i in range(200)))
    assert lengths == list(range(1, 201))
    assert tb.storage(stub) == {"items": list(range(200))}


async def test_exception_in_constructor_bcw_fails_waiting_events_and_resets(tb, objs, wait_for):
    objs.FLAGS.update(load_seconds=0.1, load_fails=True)
    ns = tb.env.LOADER
    calls = [asyncio.ensure_future(ns.get_by_name("l").is_loaded()) for _ in range(5)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ObjectResetError) for r in results), results
    assert all(r.retryable is False for r in results)  # the object's code failed, not the node
    assert "loading failed" in str(results[0])
    assert ("event", "is_loaded") not in objs.LOG  # no event ran on the failed instance
    assert tb.host.activation(ns.id_from_name("l").raw) is None
    assert objs.CTORS["Loader"] == 1
    objs.FLAGS["load_fails"] = False
    assert await ns.get_by_name("l").is_loaded() is True  # a fresh instance
    assert objs.CTORS["Loader"] == 2


async def test_exception_in_handler_bcw_resets_the_object(tb, objs, wait_for):
    ns = tb.env.RECORDER
    await ns.get_by_name("r").ping("warm")
    f = asyncio.ensure_future(ns.get_by_name("r").guarded_fail())
    await wait_for(lambda: ("start", "guarded_fail") in objs.LOG)
    waiting = [asyncio.ensure_future(ns.get_by_name("r").ping(f"w{i}")) for i in range(3)]
    results = await asyncio.gather(f, *waiting, return_exceptions=True)
    assert all(isinstance(r, ObjectResetError) for r in results), results
    assert not any(e == ("event", f"w{i}") for e in objs.LOG for i in range(3))
    assert objs.CTORS["Recorder"] == 1
    assert await ns.get_by_name("r").ping("after") == "after"
    assert objs.CTORS["Recorder"] == 2
