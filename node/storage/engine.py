"""The node's RocksDB database and its group commit.

One database per node (rocksdict, raw mode: bytes keys and values). Objects never write to it
directly: each object's storage collects its writes in a pending layer
(:mod:`duro.node.storage.object_storage`) and asks the :class:`GroupCommitter` to commit it. The
committer runs once per event-loop turn in which any object became dirty: it takes every dirty
object's pending layer, checks each object's fence (placement epoch), and writes all of them in ONE
``WriteBatch`` with one WAL sync, in a writer thread while the loop goes on (see GroupCommitter).
Only then are the objects told their writes are durable, which is what opens their output gates.

``sync=True`` (the default) fsyncs the WAL on every group commit: an acknowledged write survives
power loss. ``sync=False`` ("unsynced WAL") writes the WAL to the OS without fsync: durable against a
crash of the duro process, NOT against power loss or a kernel crash.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import rocksdict

from duro.errors import DuroError, FencedError, UnavailableError

if TYPE_CHECKING:
    from duro.node.storage.object_storage import Layer, ObjectStorage

__all__ = ["StorageEngine", "GroupCommitter", "CommitStats"]

log = logging.getLogger("duro.node.storage")


class StorageEngine:
    """The RocksDB database of one node."""

    def __init__(self, path: str | Path, *, sync: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.increase_parallelism(2)
        self._db: rocksdict.Rdict | None = rocksdict.Rdict(str(self.path), opts)
        self._write_opts = rocksdict.WriteOptions()
        self._write_opts.sync = sync
        self.sync = sync

    @property
    def db(self) -> rocksdict.Rdict:
        if self._db is None:
            raise UnavailableError("storage is closed")
        return self._db

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def write(self, batch: rocksdict.WriteBatch) -> None:
        self.db.write(batch, self._write_opts)

    def scan(self, lo: bytes, hi: bytes, *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) with lo <= key < hi, ascending or descending."""
        it = self.db.iter()
        if not reverse:
            it.seek(lo)
            while it.valid():
                k = it.key()
                if k >= hi:
                    return
                yield k, it.value()
                it.next()
        else:
            it.seek_for_prev(hi)
            while it.valid():
                k = it.key()
                if k < lo:
                    return
                if k < hi:
                    yield k, it.value()
                it.prev()

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.flush_wal(True)
            db.close()

    @property
    def closed(self) -> bool:
        return self._db is None


class CommitStats:
    __slots__ = ("commits", "objects", "writes", "failures")

    def __init__(self) -> None:
        self.commits = 0
        self.objects = 0
        self.writes = 0
        self.failures = 0


class GroupCommitter:
    """Commits the pending writes of every dirty object in one synced batch, one batch at a time.

    The batch is built on the event loop (each object's fence is checked there) and written by a
    dedicated writer thread: rocksdict releases the GIL while RocksDB appends and fsyncs the WAL,
    so the loop goes on serving requests during the fsync instead of sitting in it. Writes made
    while a batch is in flight wait (readable, in the objects' in-flight layers) and go out in the
    next batch as soon as the writer returns; batches never overlap, so they reach the disk in the
    order they were built. A batch of a single write (no concurrency to overlap with) is written
    on the loop, and so is every batch of an unsynced engine.
    """

    def __init__(self, engine: StorageEngine) -> None:
        self.engine = engine
        self._dirty: list[ObjectStorage] = []
        self._scheduled = False
        # Unsynced, a write is a memtable insert and a write(2) to the WAL: cheaper than the two
        # thread handoffs, so it stays on the loop.
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix="duro-commit") if engine.sync else None)
        self._inflight: asyncio.Future | None = None
        self.stats = CommitStats()
        self.on_commit: list = []  # callbacks(n_objects, n_writes) for metrics

    def mark_dirty(self, storage: ObjectStorage) -> None:
        self._dirty.append(storage)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    @property
    def busy(self) -> bool:
        """Whether anything is waiting to be written or being written."""
        return bool(self._dirty) or self._inflight is not None

    def flush(self) -> None:
        """Start committing everything dirty now, unless a batch is in flight (its completion
        starts the next one)."""
        self._scheduled = False
        if self._inflight is not None or not self._dirty:
            return
        batch, taken = self._collect()
        if not taken:
            return
        if self._executor is None or self._single_write(taken):
            try:
                self.engine.write(batch)
            except Exception as exc:  # disk full, I/O error, closed engine
                self._failed(taken, exc)
            else:
                self._succeeded(taken)
            return
        fut = asyncio.get_running_loop().run_in_executor(self._executor, self.engine.write, batch)
        self._inflight = fut
        fut.add_done_callback(lambda f: self._written(f, taken))

    @staticmethod
    def _single_write(taken: list[tuple[ObjectStorage, Layer]]) -> bool:
        """Whether the batch holds one write operation of one object: nothing else happened
        since the last commit, so there is no work for the loop to overlap with the fsync and
        the handoff to the writer thread (a thread wake-up each way, ~0.25 ms here at one
        client) would only add latency. Such a batch is written on the loop."""
        if len(taken) != 1:
            return False
        storage, layer = taken[0]
        return layer.seq - storage._durable_seq <= 1

    async def drain(self) -> None:
        """Commit everything dirty and wait until nothing is in flight (shutdown, tests)."""
        while self.busy:
            self.flush()  # with no batch in flight, this empties the dirty list
            if self._inflight is not None:
                await asyncio.wait([self._inflight])

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _collect(self) -> tuple[rocksdict.WriteBatch, list[tuple[ObjectStorage, Layer]]]:
        dirty, self._dirty = self._dirty, []
        batch = rocksdict.WriteBatch(raw_mode=True)
        taken: list[tuple[ObjectStorage, Layer]] = []
        for storage in dirty:
            layer = storage._take_pending()
            if layer is None:
                continue
            try:
                storage._check_fence()
            except DuroError as exc:
                storage._commit_failed(layer, exc)
                continue
            except Exception as exc:  # a fence callback must not take the whole batch down
                storage._commit_failed(layer, FencedError(f"fence check failed: {exc!r}"))
                continue
            layer.apply_to(batch)
            taken.append((storage, layer))
        return batch, taken

    def _written(self, fut: asyncio.Future, taken: list[tuple[ObjectStorage, Layer]]) -> None:
        self._inflight = None
        exc = fut.exception() if not fut.cancelled() else UnavailableError("commit cancelled")
        if exc is not None:
            self._failed(taken, exc)
        else:
            self._succeeded(taken)
        if self._dirty:
            self.flush()  # what became dirty during the write goes out now

    def _failed(self, taken: list[tuple[ObjectStorage, Layer]], exc: BaseException) -> None:
        self.stats.failures += 1
        log.error("group commit of %s objects failed: %r", len(taken), exc)
        err = exc if isinstance(exc, DuroError) else UnavailableError(f"storage write failed: {exc}")
        for storage, layer in taken:
            storage._commit_failed(layer, err)

    def _succeeded(self, taken: list[tuple[ObjectStorage, Layer]]) -> None:
        n_writes = 0
        for storage, layer in taken:
            n_writes += len(layer.writes)
            storage._commit_succeeded(layer)
        self.stats.commits += 1
        self.stats.objects += len(taken)
        self.stats.writes += n_writes
        for cb in self.on_commit:
            cb(len(taken), n_writes)
