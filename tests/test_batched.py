"""``duro._batched.BatchedStream``, the one sender of every batched stream (its users' streams
are tested through real gRPC in tests/node/test_server.py, tests/client/test_connection.py,
tests/edge/test_socket_batches.py and tests/edge/test_node_socket_limits.py)."""

from __future__ import annotations

import asyncio

import pytest

from duro._backoff import Backoff, backoff_delay
from duro._batched import BatchedStream, cut_by_size

pytestmark = pytest.mark.timeout(10)


async def test_items_sent_in_one_loop_turn_travel_as_one_batch() -> None:
    stream: BatchedStream[bytes] = BatchedStream(len)
    written: list[list[bytes]] = []

    async def write(batch: list[bytes]) -> None:
        written.append(batch)

    writer = asyncio.ensure_future(stream.run(write))
    for i in range(5):
        stream.send(b"x%d" % i)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert written == [[b"x0", b"x1", b"x2", b"x3", b"x4"]]
    stream.send(b"y")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert written[1:] == [[b"y"]]
    stream.close()
    await asyncio.wait_for(writer, 1)


async def test_items_queued_during_a_write_go_in_the_next_batch() -> None:
    stream: BatchedStream[int] = BatchedStream(lambda _: 1)
    gate = asyncio.Event()
    written: list[list[int]] = []

    async def write(batch: list[int]) -> None:
        written.append(batch)
        await gate.wait()

    writer = asyncio.ensure_future(stream.run(write))
    stream.send(1)
    await asyncio.sleep(0.01)
    for i in range(2, 10):
        stream.send(i)
    gate.set()
    while sum(map(len, written)) < 9:
        await asyncio.sleep(0.01)
    assert written == [[1], list(range(2, 10))]
    stream.close()
    await writer


async def test_a_large_take_is_cut_by_bytes_in_order() -> None:
    stream: BatchedStream[bytes] = BatchedStream(len, limit=10)
    written: list[list[bytes]] = []

    async def write(batch: list[bytes]) -> None:
        written.append(batch)

    items = [b"a" * 4, b"b" * 4, b"c" * 4, b"d" * 30, b"e" * 1]
    for item in items:
        stream.send(item)
    assert stream.queued_bytes == 43
    writer = asyncio.ensure_future(stream.run(write))
    while sum(map(len, written)) < len(items):
        await asyncio.sleep(0.01)
    assert [x for b in written for x in b] == items
    assert written == [[b"aaaa", b"bbbb"], [b"cccc"], [b"d" * 30], [b"e"]]
    assert stream.queued_bytes == 0
    stream.close()
    await writer


async def test_done_ends_the_writer_and_wake_makes_it_check() -> None:
    stream: BatchedStream[int] = BatchedStream(lambda _: 1)
    finished = False

    async def write(batch: list[int]) -> None:
        pass

    writer = asyncio.ensure_future(stream.run(write, done=lambda: finished))
    await asyncio.sleep(0.01)
    assert not writer.done()
    finished = True
    stream.wake()
    await asyncio.wait_for(writer, 1)


async def test_a_failed_write_leaves_what_was_not_written_in_unsent() -> None:
    stream: BatchedStream[bytes] = BatchedStream(len, limit=4)

    async def write(batch: list[bytes]) -> None:
        if batch[0] == b"bbbb":
            raise ConnectionError("gone")

    for item in (b"aaaa", b"bbbb", b"cccc"):
        stream.send(item)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(stream.run(write), 1)
    assert stream.unsent == [b"bbbb", b"cccc"]
    stream.send_first(stream.unsent)
    assert stream.take() == [b"bbbb", b"cccc"]


async def test_prepare_drops_and_adds_items_and_what_it_adds_is_cut_too() -> None:
    extra: list[bytes] = []

    def prepare(items: list[bytes]) -> list[bytes]:
        items = [i for i in items if i != b"drop"]
        items.extend(extra)
        extra.clear()
        return items

    stream: BatchedStream[bytes] = BatchedStream(len, limit=8, prepare=prepare)
    written: list[list[bytes]] = []

    async def write(batch: list[bytes]) -> None:
        written.append(batch)

    writer = asyncio.ensure_future(stream.run(write))
    stream.send(b"drop")
    stream.send(b"keep")
    extra.extend([b"ack1ack1", b"ack2"])
    while sum(map(len, written)) < 3:
        await asyncio.sleep(0.01)
    assert written == [[b"keep"], [b"ack1ack1"], [b"ack2"]]
    extra.append(b"only")
    stream.wake()  # nothing queued, but prepare has something to add
    while sum(map(len, written)) < 4:
        await asyncio.sleep(0.01)
    assert written[-1] == [b"only"]
    stream.close()
    await writer


def test_cut_by_size() -> None:
    assert cut_by_size([], len, 5) == []
    assert cut_by_size([b"123456"], len, 5) == [[b"123456"]]
    assert cut_by_size([b"12", b"34", b"5", b"6"], len, 5) == [[b"12", b"34", b"5"], [b"6"]]


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    b = Backoff(0.05, 1.0)
    assert [b.next() for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.05
    assert backoff_delay(0.05, 5, 1.6) == 1.6
    assert backoff_delay(0.05, 10_000, 2.0) == 2.0
    with pytest.raises(ValueError):
        Backoff(0, 1)
