"""The group committer's writer thread (docs/storage.md "How the commit works"): while a batch is
being written and fsynced off the loop, the object keeps running; its in-flight writes and its
newer writes are both visible to its reads, its replies wait for their own batch, batches land in
order and one at a time, and a failed write in the thread fails every waiting caller and loses
nothing that was acknowledged. Real RocksDB; the write is held back by an event so that the
"in flight" window is as long as the test needs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from duro.errors import DuroError
from tests.cluster.conftest import wait_until
from tests.node.storage.test_storage_ops import oks, op, run

pytestmark = pytest.mark.timeout(30)


class HeldWrites:
    """Wraps the engine's write: each call records its thread and waits for ``release``."""

    def __init__(self, engine, *, fail: bool = False) -> None:
        self.real = engine.write
        self.release = threading.Event()
        self.started = threading.Event()
        self.threads: list[int] = []
        self.fail = fail
        engine.write = self.write

    def write(self, batch) -> None:
        self.threads.append(threading.get_ident())
        self.started.set()
        assert self.release.wait(20), "the test never released the write"
        if self.fail:
            raise OSError(5, "Input/output error (injected)")
        self.real(batch)


async def _until(flag: threading.Event) -> None:
    await wait_until(flag.is_set, timeout=10, interval=0.005, message="the writer never started")


async def test_writes_made_during_an_inflight_commit_are_visible_and_land_in_order(tb, kv):
    held = HeldWrites(tb.engine)
    first = asyncio.ensure_future(run(kv, op("put", "a", 1), op("put", "b", 2)))
    await _until(held.started)
    assert held.threads == [held.threads[0]] and held.threads[0] != threading.get_ident()
    assert not first.done()  # its reply waits for the fsync the writer thread is doing
    assert tb.storage(kv) == {}

    # The object is not blocked by the fsync: a second event runs now and sees the in-flight
    # writes, under its own newer ones.
    second = asyncio.ensure_future(run(
        kv, op("get", "a"), op("get_many", ["a", "b"]), op("put", "b", 20), op("put", "c", 3),
        op("list"), op("get", "b"),
    ))
    storage = tb.host.activation(tb._raw(kv)).storage
    await wait_until(lambda: storage._pending is not None, timeout=10, interval=0.005,
                     message="the second event never wrote")
    assert not second.done()  # ran, but its reply waits behind its own batch
    third = asyncio.ensure_future(run(kv, op("delete_all"), op("put", "d", 4), op("list"),
                                      op("get", "a")))
    await asyncio.sleep(0.05)
    assert not third.done()
    assert len(held.threads) == 1  # batches never overlap: the next waits for the writer

    held.release.set()
    assert oks(await first) == [None, None]
    assert oks(await second) == [1, {"a": 1, "b": 2}, None, None,
                                 {"a": 1, "b": 20, "c": 3}, 20]
    assert oks(await third) == [None, None, {"d": 4}, None]
    assert len(held.threads) == 2  # the second batch carried the second and third events
    assert tb.storage(kv) == {"d": 4}
    await tb.restart()
    assert tb.storage(kv) == {"d": 4}


async def test_a_lone_write_is_committed_on_the_loop(tb, kv):
    """A batch of one write has nothing to overlap with: no thread handoff."""
    held = HeldWrites(tb.engine)
    held.release.set()
    assert oks(await run(kv, op("put", "a", 1))) == [None]
    assert held.threads == [threading.get_ident()]
    assert oks(await run(kv, op("put", "a", 2), op("put", "b", 3))) == [None, None]
    assert held.threads[1] != threading.get_ident()
    assert tb.storage(kv) == {"a": 2, "b": 3}


async def test_a_failed_write_in_the_thread_fails_every_waiting_caller(tb, kv):
    assert oks(await run(kv, op("put", "kept", 1))) == [None]  # acknowledged before the fault
    held = HeldWrites(tb.engine, fail=True)
    first = asyncio.ensure_future(run(kv, op("put", "a", 1), op("put", "b", 2)))
    await _until(held.started)
    second = asyncio.ensure_future(run(kv, op("put", "c", 3)))
    await asyncio.sleep(0.05)
    held.release.set()
    for call in (first, second):
        with pytest.raises(DuroError):
            await call
    assert len(held.threads) == 1  # the second event's layer was discarded with the reset
    tb.engine.write = held.real
    # The object was reset (and the stub is broken, as in Durable Objects): a new stub reaches a
    # new activation, which reads what is on disk: only what was acknowledged.
    assert oks(await run(tb.env.KV.get_by_name("kv-under-test"), op("list"))) == [{"kept": 1}]
    assert tb.storage(kv) == {"kept": 1}


async def test_a_new_instance_waits_for_its_reset_predecessors_writes(tb, kv):
    """An object that aborts while its batch is still being written is activated again at
    once by the next call; that instance must read the predecessor's writes, not the disk
    from before them."""
    held = HeldWrites(tb.engine)
    aborted = asyncio.ensure_future(kv.put_then_abort({"x": 1, "y": 2}))
    await _until(held.started)
    assert tb.host.activation(tb._raw(kv)) is None  # the instance is gone already
    fresh = tb.env.KV.get_by_name("kv-under-test")
    read = asyncio.ensure_future(run(fresh, op("get_many", ["x", "y"])))
    await asyncio.sleep(0.05)
    assert not read.done()  # waits for the batch in flight rather than read around it
    held.release.set()
    assert oks(await read) == [{"x": 1, "y": 2}]
    with pytest.raises(DuroError, match="test abort"):
        await aborted  # its error reply, too, waited for its writes
    assert tb.storage(kv) == {"x": 1, "y": 2}
    assert not tb.host._unsettled


async def test_unsynced_wal_commits_on_the_loop(tmp_path):
    """Without fsync a write costs less than the handoff: every batch stays on the loop, and
    what it wrote survives a restart (process-crash durability)."""
    from duro.testing import Testbed
    from tests.node.storage.conftest import KV_APP

    async with Testbed(app=KV_APP, data_dir=tmp_path / "data", sync_wal=False) as tb:
        kv = tb.env.KV.get_by_name("unsynced")
        held = HeldWrites(tb.engine)
        held.release.set()
        assert oks(await run(kv, op("put", "a", 1), op("put", "b", 2))) == [None, None]
        assert held.threads == [threading.get_ident()]
        await tb.restart()
        assert tb.storage(kv) == {"a": 1, "b": 2}
