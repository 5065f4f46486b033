"""docs/runtime.md "Events and gates" and docs/storage.md "How the commit works" (in process): a reply, an error reply or an
outgoing call made after a write is not released before the write is in RocksDB; a failed commit
never turns into a success; writes of many objects in one loop turn share one engine write (group
commit). The crash versions are in test_crash.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from duro.errors import ObjectError, ObjectResetError, UnavailableError
from duro.node.storage import layout
from tests.helpers.commits import delay_commits

pytestmark = pytest.mark.timeout(30)

COMMIT_DELAY = 0.2


@pytest.fixture
def slow_commits(tb):
    """Commit each loop turn's writes COMMIT_DELAY s late, and record when each batch reached
    RocksDB. Without an output gate, replies would come out long before their commit."""
    host, engine = tb.host, tb.engine
    committer = host.committer
    written: list[float] = []
    real_write = engine.write

    def write(batch):
        real_write(batch)
        written.append(time.monotonic())

    engine.write = write
    delay_commits(committer, COMMIT_DELAY)
    return written


async def test_reply_after_write_waits_for_the_commit(tb, objs, slow_commits):
    stub = tb.env.COUNTER.get_by_name("c")
    call = asyncio.ensure_future(stub.increment())
    await asyncio.sleep(COMMIT_DELAY / 2)
    assert not call.done()  # the handler has long returned; its reply is held
    assert await call == 1
    got = time.monotonic()
    assert len(slow_commits) == 1 and slow_commits[0] <= got
    assert tb.storage(stub) == {"value": 1}


async def test_error_reply_after_write_waits_for_the_commit(tb, objs, slow_commits):
    stub = tb.env.COUNTER.get_by_name("c")
    call = asyncio.ensure_future(stub.increment_then_fail())
    await asyncio.sleep(COMMIT_DELAY / 2)
    assert not call.done()
    with pytest.raises(ObjectError):
        await call
    assert slow_commits and slow_commits[0] <= time.monotonic()
    assert tb.storage(stub) == {"value": 1}


async def test_read_only_reply_is_not_held(tb, objs, slow_commits, wait_for):
    """A reply that wrote nothing leaves while another object's commit is still in flight."""
    writer = tb.env.COUNTER.get_by_name("w")
    write = asyncio.ensure_future(writer.increment())
    await wait_for(lambda: tb.host.committer.busy)  # its batch is being (slowly) committed
    stub = tb.env.COUNTER.get_by_name("c")
    assert await stub.get() == 0
    assert not write.done() and slow_commits == []  # the read did not wait for that commit
    assert await write == 1


async def test_outgoing_call_after_write_waits_for_the_commit(tb, objs, slow_commits):
    """The callee observes the caller's write already on disk when the call reaches it."""
    counter = tb.env.COUNTER.get_by_name("c")

    def disk_reader(caller_hex):
        return tb.storage(caller_hex)

    objs.FLAGS["disk_reader"] = disk_reader
    assert await counter.increment_then_call("probe") == {"value": 1}


async def test_failing_engine_write_never_acknowledges_and_resets(tb, objs):
    stub = tb.env.COUNTER.get_by_name("c")
    assert await stub.increment() == 1
    assert objs.CTORS["Counter"] == 1
    real_write = tb.engine.write

    def failing(batch):
        raise OSError("disk on fire")

    tb.engine.write = failing
    stub2 = tb.env.COUNTER.get_by_name("c")
    results = await asyncio.gather(*(stub2.increment() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, (ObjectResetError, UnavailableError)) for r in results), results
    assert all(r.retryable for r in results)
    assert tb.host.activation(stub.id.raw) is None  # the instance was reset
    tb.engine.write = real_write
    fresh = tb.env.COUNTER.get_by_name("c")
    assert await fresh.get() == 1  # only durable state: the lost increments are not seen
    assert objs.CTORS["Counter"] == 2
    assert await fresh.increment() == 2
    assert tb.storage(fresh) == {"value": 2}


async def test_failed_commit_of_one_batch_fails_every_object_in_it(tb, objs):
    def failing(batch):
        raise OSError("io error")

    tb.engine.write = failing
    stubs = [tb.env.PLAIN.get_by_name(f"o{i}") for i in range(10)]
    results = await asyncio.gather(*(s.put("k", 1) for s in stubs), return_exceptions=True)
    assert all(isinstance(r, (ObjectResetError, UnavailableError)) for r in results), results


async def test_group_commit_100_objects_in_one_turn_share_one_write(tb, objs):
    calls = []
    real_write = tb.engine.write

    def counting(batch):
        calls.append(len(batch))
        real_write(batch)

    tb.engine.write = counting
    before = tb.host.committer.stats.commits
    stubs = [tb.env.PLAIN.get_by_name(f"obj-{i}") for i in range(100)]
    assert await asyncio.gather(*(s.put("k", i) for i, s in enumerate(stubs))) == [True] * 100
    assert len(calls) == 1, calls
    assert calls[0] == 200  # one batch: per object, its key and its usage record (usage.py)
    assert tb.host.committer.stats.commits - before == 1
    assert tb.host.committer.stats.objects >= 100
    for i, s in enumerate(stubs):
        assert tb.storage(s) == {"k": i}


async def test_several_puts_in_one_event_are_one_batch(tb, objs):
    batches = []
    real_write = tb.engine.write

    def recording(batch):
        batches.append(len(batch))
        real_write(batch)

    tb.engine.write = recording
    stub = tb.env.PLAIN.get_by_name("multi")
    keys = [f"k{i}" for i in range(20)]
    assert await stub.put_several(keys, 7) == 7
    assert batches == [21]  # the 20 keys and the object's usage record (usage.py)
    assert tb.storage(stub) == {k: 7 for k in sorted(keys)}
    assert tb.engine.get(layout.data_key(0, stub.id.raw, b"k0")) is not None
