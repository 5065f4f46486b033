"""``storage.list()``: a snapshot of a key range, read in slices that leave the event loop free.

A ``list()`` without a ``limit`` on a large object reads, decodes and collects every key; done in
one go that is seconds during which the node's event loop serves nothing else (1M keys: ~2 s
here). So a listing is read in **slices** of about :data:`SLICE_SECONDS`:

* the first slice runs at the call; a range that fits in it (nearly every ``list()``) comes back
  as an already-complete awaitable, exactly like every other storage operation;
* otherwise ``list()`` returns a :class:`Listing`; awaiting it reads the rest, handing the loop
  back to other objects between slices. While it reads, the object's **input gate is closed**
  (as for a transaction), so no other event of this object runs inside the list, as before —
  unless the call says ``allow_concurrency=True`` (Cloudflare's ``allowConcurrency``): then the
  object's other events may run between slices (the result is the same snapshot).

**Snapshot.** The result is the range as it was at the call, however many slices it takes: the
object's uncommitted layers are copied at the call (:func:`merged`) and the RocksDB iterator is
created at the call, and a RocksDB iterator reads the database as of its creation — commits that
land meanwhile (this object's in-flight layer, or writes of a background task) are not seen.

**Size cap.** A listing that would return more than ``max_list_bytes`` (user key plus encoded
value bytes, as the quota counts them) fails with :class:`~duro.errors.StorageLimitError`, which
tells the caller to read the range in pages (``limit`` and ``start_after``): the result is held
in the node's memory, and a hostile or careless caller must not make one object hold gigabytes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from duro import _codec
from duro.errors import StorageLimitError, UnavailableError
from duro.node.storage import layout

if TYPE_CHECKING:
    from duro.node.storage.engine import StorageEngine
    from duro.node.storage.object_storage import Layer, StorageOwner

__all__ = ["Listing", "merged", "SLICE_SECONDS", "DEFAULT_MAX_LIST_BYTES"]

SLICE_SECONDS = 0.005  # one slice of a listing; other callbacks run between slices
_CHECK_KEYS = 64  # keys between two looks at the clock
_CHECK_BYTES = 1 << 20  # or bytes (large values take longer to decode)
DEFAULT_MAX_LIST_BYTES = 128 * 1024 * 1024  # as Cloudflare's 128 MB memory per isolate


def merged(
    layers_oldest_first: Iterable[Layer], engine: StorageEngine, lo: bytes, hi: bytes,
    reverse: bool, *, cache: bool = True,
) -> Iterator[tuple[bytes, bytes]]:
    """The data keys in ``[lo, hi)`` of the layers over the database, in order, deletes applied.

    The layers' writes in range are copied and the database iterator is created before this
    returns (not at the first ``next``), so the iterator is a snapshot as of the call."""
    over: dict[bytes, bytes | None] = {}
    db_visible = True
    for layer in layers_oldest_first:
        if layer.cleared is not None:
            over.clear()
            db_visible = False
        for k, v in layer.writes.items():
            if lo <= k < hi:
                over[k] = v
    okeys = sorted(over, reverse=reverse)
    db_iter = engine.scan(lo, hi, reverse=reverse, cache=cache) if db_visible else iter(())
    nxt = next(db_iter, None)  # creates the RocksDB iterator now: the snapshot point
    return _merge(okeys, over, db_iter, nxt, reverse)


def _merge(okeys: list[bytes], over: dict[bytes, bytes | None], db_iter: Iterator,
           nxt: tuple[bytes, bytes] | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
    i = 0
    while True:
        ok = okeys[i] if i < len(okeys) else None
        if nxt is None and ok is None:
            return
        if ok is None or (nxt is not None and (nxt[0] > ok if reverse else nxt[0] < ok)):
            yield nxt  # type: ignore[misc]
            nxt = next(db_iter, None)
            continue
        if nxt is not None and nxt[0] == ok:
            nxt = next(db_iter, None)
        i += 1
        v = over[ok]
        if v is not None:
            yield ok, v


class Listing:
    """One ``list()`` call whose range did not fit in the first slice: ``await`` it for the dict.

    Awaiting it closes the object's input gate, reads the rest in slices with a bare ``yield``
    (one event-loop turn) between them, and opens the gate again, also on error or
    cancellation."""

    __slots__ = ("_items", "_out", "_limit", "_max_bytes", "_bytes", "_engine", "_owner",
                 "_done", "_error", "_running")

    def __init__(self, items: Iterator[tuple[bytes, bytes]], limit: int | None, max_bytes: int,
                 engine: StorageEngine, owner: StorageOwner | None) -> None:
        self._items = items
        self._out: dict[str, Any] = {}
        self._limit = limit
        self._max_bytes = max_bytes
        self._bytes = 0
        self._engine = engine
        self._owner = owner
        self._done = False
        self._error: StorageLimitError | None = None
        self._running = False

    @property
    def result(self) -> dict[str, Any]:
        return self._out

    def step(self, budget: float = SLICE_SECONDS) -> bool:
        """Read for about ``budget`` seconds; True once the listing is complete."""
        if self._error is not None:
            raise self._error
        if self._done:
            return True
        if self._engine.closed:
            raise UnavailableError("storage closed while list() was reading; call again")
        out, limit, max_bytes = self._out, self._limit, self._max_bytes
        header = layout.DATA_HEADER_BYTES
        deadline = time.perf_counter() + budget
        n = n_bytes = 0
        for k, v in self._items:
            size = len(k) - header + len(v)
            self._bytes += size
            n_bytes += size
            if max_bytes and self._bytes > max_bytes:
                self._out, self._items = {}, iter(())  # of no use now: free them at once
                self._error = StorageLimitError(
                    f"list() would return more than {max_bytes} bytes (max_list_bytes) after "
                    f"{len(out)} keys; read the range in pages: list(limit=n, start_after=<the "
                    f"last key of the previous page>)"
                )
                raise self._error
            out[k[header:].decode("utf-8")] = _codec.decode(v)
            if limit is not None and len(out) >= limit:
                break
            n += 1
            if n >= _CHECK_KEYS or n_bytes >= _CHECK_BYTES:
                n = n_bytes = 0
                if time.perf_counter() >= deadline:
                    return False
        self._done = True
        self._items = iter(())  # releases the RocksDB iterator (and the version it pins)
        return True

    def __await__(self):  # noqa: ANN204
        if self._error is not None:
            raise self._error
        if self._done:
            return self._out
        if self._running:
            raise RuntimeError("this list() is already being awaited by another task")
        self._running = True
        owner = self._owner  # None: allow_concurrency, the gate stays open between slices
        token = owner._block_events() if owner is not None else None
        try:
            while not self.step():
                yield  # a bare yield: asyncio runs every other ready callback, then resumes us
        finally:
            self._running = False
            if owner is not None:
                owner._unblock_events(token)
        return self._out
