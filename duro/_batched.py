"""One batched stream: messages queued by many callers, written by one writer as few large
batches, each cut below gRPC's message limit.

Every long-lived stream in duro sends this way (calls to a node, results back, WebSocket frames
both ways between edge and node)::

    send(item) ──▶ queue (+ its bytes) ──wake──▶ run(write): take all ─▶ cut by bytes ─▶ write(batch)

* **Batching without a timer.** ``send`` appends and wakes the writer, which runs on a later
  loop turn and takes everything queued by then; while a write is in progress items keep
  queueing, so batches grow with load by themselves and a lone sender pays no delay. (dask's
  ``BatchedSend`` flushes on an interval instead; here the event loop's turn is the interval.)
* **Cut by bytes.** A batch larger than ``limit`` (by ``size_of``, summed as items are queued)
  is written as consecutive runs of at most ``limit`` bytes, in order; an item larger than
  ``limit`` travels alone. Below the limit the whole take is one batch (no per-item cost).
* **Back-pressure** stays with the owner: :attr:`queued_bytes` says how much waits, and the
  owner decides (end the stream, stop reading).
* **Close.** :meth:`close` ends :meth:`run` at its next wake-up; ``done`` (a predicate) ends it
  too, checked on every wake-up. :meth:`wake` wakes the writer without an item, so that it checks
  ``done`` or collects what ``prepare`` adds.
* **Failure.** A write that raises ends :meth:`run` with that exception; the items taken and not
  written (the failed batch first) are in :attr:`unsent`, for an owner that resends them.

The class does no I/O itself: the owner passes the coroutine that writes one batch.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

from duro._transport import MAX_BATCH_BYTES

__all__ = ["BatchedStream", "cut_by_size"]

T = TypeVar("T")


def cut_by_size(items: list[T], size_of: Callable[[T], int], limit: int) -> list[list[T]]:
    """``items`` in order as consecutive runs whose summed ``size_of`` stays within ``limit`` (an
    item larger than ``limit`` gets a run of its own); none for no items."""
    runs: list[list[T]] = []
    run: list[T] = []
    size = 0
    for item in items:
        n = size_of(item)
        if run and size + n > limit:
            runs.append(run)
            run, size = [], 0
        run.append(item)
        size += n
    if run:
        runs.append(run)
    return runs


class BatchedStream(Generic[T]):
    """Items queued by :meth:`send`, written in batches by :meth:`run` (see the module doc)."""

    __slots__ = ("_size_of", "_limit", "_prepare", "_items", "_bytes", "_wake", "closed", "unsent")

    def __init__(
        self,
        size_of: Callable[[T], int],
        *,
        limit: int = MAX_BATCH_BYTES,
        prepare: Callable[[list[T]], list[T]] | None = None,
    ) -> None:
        """``size_of(item)``: its bytes in a message (an estimate; exact is not needed).
        ``prepare(items)``, if given, turns each take into the batch to write: it may drop items
        or add some (folded acknowledgements); what it adds counts towards the cut by bytes."""
        self._size_of = size_of
        self._limit = limit
        self._prepare = prepare
        self._items: list[T] = []
        self._bytes = 0
        self._wake = asyncio.Event()
        self.closed = False
        self.unsent: list[T] = []

    # -- the senders' side ---------------------------------------------------------------------
    def send(self, item: T) -> None:
        self._items.append(item)
        self._bytes += self._size_of(item)
        self._wake.set()

    def send_first(self, items: list[T]) -> None:
        """Queue ``items`` ahead of everything queued (e.g. what a broken stream did not send)."""
        if items:
            self._items[:0] = items
            self._bytes += sum(map(self._size_of, items))
            self._wake.set()

    def take(self) -> list[T]:
        """Everything queued, in order; the queue is left empty."""
        items, self._items, self._bytes = self._items, [], 0
        return items

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    # -- the writer ----------------------------------------------------------------------------
    async def run(
        self,
        write: Callable[[list[T]], Awaitable[object]],
        *,
        done: Callable[[], bool] | None = None,
    ) -> None:
        """Write batches until :meth:`close` or ``done()``; the one writer of this stream."""
        wake = self._wake
        while not self.closed and (done is None or not done()):
            if not self._items and not wake.is_set():
                await wake.wait()
                continue
            wake.clear()
            size, count = self._bytes, len(self._items)
            items = self.take()
            if self._prepare is not None:
                items = self._prepare(items)
            if not items:
                continue
            if size <= self._limit and len(items) <= count:
                batches = [items]
            else:
                batches = cut_by_size(items, self._size_of, self._limit)
            for i, batch in enumerate(batches):
                try:
                    await write(batch)
                except BaseException:
                    self.unsent = [item for b in batches[i:] for item in b]
                    raise
