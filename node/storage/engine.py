"""The node's RocksDB database.

One database per node (rocksdict, raw mode: bytes keys and values). Objects never write to it
directly: each object's storage collects its writes in a pending layer
(:mod:`duro.node.storage.object_storage`) and the node's group committer
(:mod:`duro.node.storage.commit`) writes every object's layers of one loop turn in one
``WriteBatch`` with one WAL sync, in the node's writer thread (:class:`Writer`), which followers
applying replicated batches use too.

``sync=True`` (the default) fsyncs the WAL on every write: an acknowledged write survives power
loss. ``sync=False`` ("unsynced WAL") writes the WAL to the OS without fsync: durable against a
crash of the duro process, NOT against power loss or a kernel crash.

Every database has a **storage id**, a random id written when it is created: a node whose data
directory was wiped comes back with a new one, so no one mistakes it for the copies it lost
(docs/replication.md).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import rocksdict

from duro.errors import UnavailableError
from duro.node.storage import layout
from duro.node.storage.alarm_record import decode_alarm
from duro.node.storage.object_storage import DELETE, DELETE_RANGE, PUT

__all__ = ["StorageEngine", "Writer", "apply_ops", "clear_ops"]

log = logging.getLogger("duro.node.storage")

_STORAGE_ID = layout.local_key("storage_id")


# Reads that do not fill the block cache (a storage call's ``no_cache=True``).
_UNCACHED = rocksdict.ReadOptions()
_UNCACHED.fill_cache(False)


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
        self._nosync = rocksdict.WriteOptions()
        self._nosync.sync = False
        self.sync = sync
        raw = self._db.get(_STORAGE_ID)
        if raw is None:
            raw = uuid.uuid4().hex.encode()
            batch = rocksdict.WriteBatch(raw_mode=True)
            batch.put(_STORAGE_ID, raw)
            self.write(batch)
        self.storage_id = raw.decode()

    @property
    def db(self) -> rocksdict.Rdict:
        if self._db is None:
            raise UnavailableError("storage is closed")
        return self._db

    def get(self, key: bytes, *, cache: bool = True) -> bytes | None:
        """The value of ``key``; ``cache=False`` leaves RocksDB's block cache as it is (what
        ``no_cache=True`` asks of a storage read: docs/runtime.md)."""
        if cache:
            return self.db.get(key)
        return self.db.get(key, read_opt=_UNCACHED)

    def write(self, batch: rocksdict.WriteBatch) -> None:
        """Write ``batch`` atomically, synced (in the node's mode)."""
        self.db.write(batch, self._write_opts)

    def write_unsynced(self, batch: rocksdict.WriteBatch) -> None:
        """Write without fsync: for data that a later synced write makes durable with it (the WAL
        is sequential, so syncing a later record syncs every earlier one)."""
        self.db.write(batch, self._nosync)

    def scan(self, lo: bytes, hi: bytes, *, reverse: bool = False,
             cache: bool = True) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) with lo <= key < hi, ascending or descending (``cache``: as in
        :meth:`get`)."""
        it = self.db.iter() if cache else self.db.iter(_UNCACHED)
        yield from scan_iter(it, lo, hi, reverse=reverse)

    def snapshot_scan(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Ascending scan of the database as it is now: writes made after this call returns are
        not seen, however long the scan takes (a RocksDB iterator reads the sequence number it
        was created at; rocksdict's ``Snapshot.iter`` does not, so it is not used)."""
        return scan_iter(self.db.iter(), lo, hi)  # created here, not at the first next()

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.flush_wal(True)
            db.close()

    @property
    def closed(self) -> bool:
        return self._db is None


def scan_iter(it, lo: bytes, hi: bytes, *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:  # noqa: ANN001
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


def apply_ops(batch: rocksdict.WriteBatch, ops: Iterable[list]) -> None:
    """Add write operations (``Layer.ops()`` format) to ``batch``."""
    for op in ops:
        code = op[0]
        if code == PUT:
            batch.put(op[1], op[2])
        elif code == DELETE:
            batch.delete(op[1])
        elif code == DELETE_RANGE:
            batch.delete_range(op[1], op[2])
        else:
            raise ValueError(f"unknown write operation {code!r}")


class Writer:
    """The node's one writer thread: synced writes leave the event loop while RocksDB appends
    and fsyncs the WAL (rocksdict releases the GIL for it). One thread, so writes reach the WAL
    in the order they were submitted."""

    def __init__(self, engine: StorageEngine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="duro-writer")

    def write(self, batch: rocksdict.WriteBatch) -> asyncio.Future[None]:
        return asyncio.get_running_loop().run_in_executor(self._executor, self.engine.write, batch)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def clear_ops(engine: StorageEngine, gid: int, oid: bytes) -> list[list]:
    """The write operations deleting an object's keys, usage record, alarm and alarm index entry
    in group ``gid`` (committed with ``GroupCommitter.write_raw``: replicated like any write)."""
    ops: list[list] = []
    alarm = engine.get(layout.alarm_key(gid, oid))
    if alarm is not None:
        ops.append([DELETE, layout.alarm_index_key(gid, decode_alarm(alarm).when_ms, oid)])
        ops.append([DELETE, layout.alarm_key(gid, oid)])
    prefix = layout.data_prefix(gid, oid)
    ops.append([DELETE_RANGE, prefix, layout.prefix_end(prefix)])
    ops.append([DELETE, layout.usage_key(gid, oid)])  # its storage account (usage.py)
    ops.append([DELETE, layout.history_key(gid, oid)])  # its move history (migration/history.py)
    return ops
