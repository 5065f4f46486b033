"""docs/runtime.md "Lifecycle" and overload: eviction and reactivation keep state, idle objects are
evicted, the node's active-object budget holds under 100,000 distinct objects, an overloaded object
answers ``overloaded`` instead of queueing, and calls on one stub arrive in order."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from duro.errors import OverloadedError, UnavailableError
from duro.node.runtime import host as host_module
from duro.testing import Testbed

APP = Path(__file__).parent / "apps" / "objs.py"

pytestmark = pytest.mark.timeout(60)


async def test_eviction_keeps_state_and_constructor_runs_again(tb, objs):
    stub = tb.env.COUNTER.get_by_name("c")
    assert await stub.increment(5) == 5
    assert await tb.evict(stub) is True
    assert tb.host.activation(stub.id.raw) is None
    assert await stub.get() == 5  # the same stub keeps working after eviction
    assert objs.CTORS["Counter"] == 2
    assert await stub.increment() == 6


async def test_evict_returns_false_for_inactive_or_busy(tb, objs, wait_for):
    assert await tb.evict(tb.env.COUNTER.get_by_name("never")) is False
    objs.EVENTS["e"] = asyncio.Event()
    rules = tb.env.RULES.get_by_name("busy")
    call = asyncio.ensure_future(rules.block("e"))
    await wait_for(lambda: tb.host.activation(rules.id.raw) is not None
                   and tb.host.activation(rules.id.raw).gate_closed)
    assert await tb.evict(rules) is False  # busy objects are not evicted
    objs.EVENTS["e"].set()
    assert await call == "unblocked"
    assert await tb.evict(rules) is True


async def test_an_event_passed_its_turn_keeps_the_object_from_eviction(tb, objs, wait_for):
    """Between the input gate opening for a queued event (its turn passed to it) and the event
    resuming, the queue is empty and nothing runs: an idle sweep then must not evict the object,
    or the event finds it closed and fails ("instance is gone")."""
    stub = tb.env.COUNTER.get_by_name("turn")
    assert await stub.increment() == 1
    act = tb.host.activation(stub.id.raw)
    token = act._block_events(in_context=False)  # the gate closes (as block_concurrency_while)
    queued = asyncio.ensure_future(stub.increment())
    await wait_for(lambda: act._waiters)
    act._unblock_events(token)  # the turn passes to the queued event; it has not resumed yet
    assert act._waiters is None and act.running == 0 and act._holders is None
    assert not act.is_idle()
    assert tb.host.evict(stub.id.raw) is False
    assert await queued == 2


async def test_an_evicted_object_leaves_no_reference_cycle(tb, objs):
    """Eviction frees an activation, its context and its storage by reference counting: none of
    them is left for the cyclic collector (which a node runs rarely), so memory does not pile
    up over activate/evict cycles; a task that outlived its event gets a clear error."""
    stubs = [tb.env.COUNTER.get_by_name(f"cycle-{i}") for i in range(50)]
    assert await asyncio.gather(*(s.increment() for s in stubs)) == [1] * 50
    ctx = tb.host.activation(stubs[0].id.raw).ctx
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for s in stubs:
            assert await tb.evict(s) is True
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not [n for n in left if n in ("Activation", "ObjectContext", "ObjectStorage")], left
    with pytest.raises(UnavailableError, match="evicted"):
        ctx.storage
    assert await stubs[0].increment() == 2  # a new activation, state restored


async def test_idle_timeout_evicts(tmp_path, wait_for):
    async with Testbed(app=APP, data_dir=tmp_path, idle_timeout=0.1, sweep_interval=0.05) as tb:
        objs = tb.app.module
        objs.reset()
        stub = tb.env.COUNTER.get_by_name("idle")
        assert await stub.increment() == 1
        assert tb.host.active_count == 1
        await wait_for(lambda: tb.host.active_count == 0, timeout=5)
        assert tb.host.stats.evictions >= 1
        assert await stub.increment() == 2  # state restored by the new instance
        assert objs.CTORS["Counter"] == 2


async def test_busy_object_is_not_evicted_by_idle_timeout(tmp_path, wait_for):
    async with Testbed(app=APP, data_dir=tmp_path, idle_timeout=0.05, sweep_interval=0.02) as tb:
        objs = tb.app.module
        objs.reset()
        objs.EVENTS["e"] = asyncio.Event()
        stub = tb.env.RULES.get_by_name("busy")
        call = asyncio.ensure_future(stub.block("e"))
        await asyncio.sleep(0.3)
        assert tb.host.active_count == 1
        objs.EVENTS["e"].set()
        assert await call == "unblocked"
        assert objs.CTORS["Rules"] == 1
        await wait_for(lambda: tb.host.active_count == 0, timeout=5)


@pytest.mark.timeout(240)  # 100,000 activations: ~50 s on a quiet 2-core machine
async def test_active_objects_stay_within_budget_for_100k_distinct_objects(tmp_path, monkeypatch):
    """100,000 distinct objects, each touched once (a write), 500 at a time: never more than
    ``max_active_objects`` in memory, RSS growth bounded (without eviction it grows ~150 MB), and
    every object's state is on disk."""
    async with Testbed(app=APP, data_dir=tmp_path, max_active_objects=1000) as tb:
        host = tb.host
        peak = 0
        real_activate = host._activate

        def activate(*args, **kwargs):
            nonlocal peak
            act = real_activate(*args, **kwargs)
            peak = max(peak, host.active_count)
            return act

        monkeypatch.setattr(host, "_activate", activate)
        ns = tb.env.PLAIN
        rss0 = None
        batch = 500
        for b in range(0, 100_000, batch):
            if b == 5_000:
                gc.collect()
                rss0 = host_module._rss_bytes()
            await asyncio.gather(
                *(ns.get_by_name(f"o{i}").put("k", i) for i in range(b, b + batch))
            )
            assert host.active_count <= 1000
        gc.collect()
        growth = host_module._rss_bytes() - rss0
        assert peak <= 1000
        assert host.stats.activations == 100_000
        assert host.stats.evictions >= 99_000
        assert growth < 60 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB"
        for i in (0, 1, 4_999, 50_000, 99_999):
            assert tb.storage(ns.id_from_name(f"o{i}")) == {"k": i}
        assert await ns.get_by_name("o0").rmw("x") == 1  # evicted object reactivates


async def test_overloaded_object_answers_overloaded_instead_of_queueing(tmp_path, wait_for):
    async with Testbed(app=APP, data_dir=tmp_path, max_queued_events=10) as tb:
        objs = tb.app.module
        objs.reset()
        objs.EVENTS["e"] = asyncio.Event()
        ns = tb.env.RULES
        blocker = asyncio.ensure_future(ns.get_by_name("o").block("e"))
        act = None

        def gate_closed():
            nonlocal act
            act = tb.host.activation(ns.id_from_name("o").raw)
            return act is not None and act.gate_closed

        await wait_for(gate_closed)
        # A fresh stub per call: an overloaded answer breaks the stub it came through.
        queued = [asyncio.ensure_future(ns.get_by_name("o").quick()) for _ in range(10)]
        await wait_for(lambda: len(act._waiters or ()) == 10)  # all ten wait at the gate
        extra = [asyncio.ensure_future(ns.get_by_name("o").quick()) for _ in range(25)]
        results = await asyncio.gather(*extra, return_exceptions=True)
        assert all(isinstance(r, OverloadedError) for r in results), results
        assert all(r.overloaded and not r.retryable for r in results)
        assert len(act._waiters) == 10  # the queue did not grow past the bound
        assert tb.host.stats.overloaded == 25
        assert not any(q.done() for q in queued)
        objs.EVENTS["e"].set()
        assert await blocker == "unblocked"
        assert await asyncio.gather(*queued) == ["quick"] * 10


async def test_calls_on_one_stub_arrive_in_call_order(tb, objs):
    objs.FLAGS["load_seconds"] = 0.05  # every call queues at the gate during the constructor
    stub = tb.env.LOADER.get_by_name("order")
    lengths = await asyncio.gather(*(stub.append(i) for i in range(200)))
    assert lengths == list(range(1, 201))
    assert await stub.get_items() == list(range(200))


async def test_calls_on_one_stub_arrive_in_order_while_gate_closes_and_opens(tb, objs):
    stub = tb.env.LOADER.get_by_name("order2")
    objs.FLAGS["load_seconds"] = 0
    await stub.get_items()
    calls = []
    for i in range(200):
        calls.append(stub.append_stored(i))
    await asyncio.gather(*calls)
    assert tb.storage(stub) == {"items": list(range(200))}
