"""docs/storage.md: ``transaction()`` in both forms; an exception or ``rollback()`` discards everything;
a committed transaction is atomic; nesting is refused; while a transaction awaits, no other event
is delivered to the object."""

from __future__ import annotations

import asyncio

import pytest

from duro.errors import ObjectError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def txn(tb):
    return tb.env.TXN.get_by_name("t")


async def seed(tb, txn):
    await txn.put("pre", "existing")
    assert tb.storage(txn) == {"pre": "existing"}


async def test_async_with_form_reads_its_own_writes_and_commits(tb, txn):
    await seed(tb, txn)
    r = await txn.ctx_manager()
    assert r["own"] == [1, {"b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3}, "deleted"]
    assert r["outside"] == "invisible"
    assert r["after"] == {"a": 1, "b": 2, "c": 3}
    assert tb.storage(txn) == {"a": 1, "b": 2, "c": 3}
    await tb.restart()
    assert tb.storage(txn) == {"a": 1, "b": 2, "c": 3}


async def test_callable_form_returns_the_function_result_and_commits(tb, txn):
    assert await txn.callable_form() == [10, "result"]
    assert tb.storage(txn) == {"x": 10}


@pytest.mark.parametrize("form", ["callable", "async_with"])
async def test_exception_inside_discards_everything(tb, txn, form):
    await seed(tb, txn)
    after = await txn.raising(form)
    assert after == {"before": 1, "pre": "existing"}  # the write outside the transaction is kept
    assert tb.storage(txn) == {"before": 1, "pre": "existing"}
    assert tb.alarm(txn) is None  # the alarm set inside was discarded too
    await tb.restart()
    assert tb.storage(txn) == {"before": 1, "pre": "existing"}


async def test_uncaught_exception_inside_reaches_caller_and_writes_nothing(tb, txn):
    await seed(tb, txn)
    with pytest.raises(ObjectError) as ei:
        await txn.raising_uncaught()
    assert ei.value.remote_type == "KeyError"
    assert tb.storage(txn) == {"pre": "existing"}
    assert await txn.ping() == "pong"  # the object still works (a user error, not a reset)


@pytest.mark.parametrize("form", ["callable", "async_with"])
async def test_rollback_discards_everything(tb, txn, form):
    await seed(tb, txn)
    r = await txn.rollback(form)
    assert r == {"res": "rolled", "err": "InvalidArgumentError", "list": {"pre": "existing"}}
    assert tb.storage(txn) == {"pre": "existing"}
    await tb.restart()
    assert tb.storage(txn) == {"pre": "existing"}


async def test_nested_transaction_is_an_error(tb, txn):
    r = await txn.nested()
    assert r == {"err": "InvalidArgumentError", "list": {"outer": 1}}
    assert tb.storage(txn) == {"outer": 1}


async def test_delete_all_inside_transaction(tb, txn):
    await seed(tb, txn)
    r = await txn.delete_all_in_txn()
    assert r == {"inside": {"fresh": 1}, "after": {"fresh": 1}}
    assert tb.storage(txn) == {"fresh": 1}


async def test_committed_transaction_is_atomic_on_disk(tb, txn, objs, wait_for):
    """While the transaction is open (and group commits of other writes happen), none of its keys
    is on disk; when it ends, all of them are, together."""
    other = tb.env.PLAIN.get_by_name("other")
    call = asyncio.ensure_future(txn.atomic(100, 0.3))
    await wait_for(lambda: ("start", "atomic") in objs.LOG)
    for i in range(5):  # other objects commit meanwhile
        await other.put(f"o{i}", i)
        assert tb.storage(txn) == {}
    assert await call is True
    assert tb.storage(txn) == {f"k{i:03}": "v" for i in range(100)}


async def test_no_other_event_is_delivered_while_a_transaction_awaits(tb, objs, wait_for):
    rec = tb.env.RECORDER.get_by_name("r")
    call = asyncio.ensure_future(rec.txn_slow(0.2))
    await wait_for(lambda: ("start", "txn") in objs.LOG)
    pings = [asyncio.ensure_future(tb.env.RECORDER.get_by_name("r").ping(f"p{i}"))
             for i in range(3)]
    act = tb.host.activation(rec.id.raw)
    await wait_for(lambda: len(act._waiters or ()) == 3)  # the three pings reached the object...
    assert all(not p.done() for p in pings)  # ...and are held at its gate
    assert await call == "txn-done"
    await asyncio.gather(*pings)
    assert objs.LOG == [("start", "txn"), ("end", "txn"),
                        ("event", "p0"), ("event", "p1"), ("event", "p2")]
    assert tb.storage(rec) == {"t1": 1, "t2": 2, "t3": 3}
