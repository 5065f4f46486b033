"""``GroupCommitter``: every object's writes of one loop turn in one synced batch, replicated.

``mark_dirty(storage)`` is called on an object's first write since its last commit and schedules
``flush()`` once per loop turn. ``flush()`` **cuts** a commit: it takes every dirty object's
pending layer, checks each object's fence, and for each replica group in the cut asks replication
(``Replication.admit``) whether it may write: the group's primary gives it the next sequence
number, puts it in the group's log and ships it to the group's followers
(docs/replication.md). Then the whole commit goes to the local disk in **one** ``WriteBatch``.

A commit is **complete** when the local write returned and every group in it has the
acknowledgements it needs; commits complete in the order they were cut, and only then are the
objects told their writes are durable, which is what opens their output gates.

* **One local write in flight.** While the writer thread holds a batch, objects keep running;
  their writes collect in new pending layers and are cut the moment the writer returns (the
  batch interval is the fsync time). A commit waiting only for followers does not hold the next
  one back: replication is pipelined.
* **Reads see in-flight writes** (the objects keep their taken layer readable until durable).
* **Failure.** A failed local write fails every object of the commit: it is reset and its
  waiting callers get a retryable error; a node whose groups are replicated then stops
  (``on_fatal``), since its copy may now differ from its followers'. A group whose replication
  fails (deposed, below ``min_in_sync``, a follower that stays silent) fails its own objects only.
* **Lone writes stay on the loop.** A commit of one write of one object in an unreplicated group
  means nothing else happened since the last commit: no work overlaps the fsync, and the
  handoff to the writer thread (~0.25 ms here) would only add latency.
* **Unsynced WAL** (``sync_wal = false``): a write is a memtable insert and a ``write(2)``, cheaper
  than the thread handoffs, so local writes stay on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Protocol

import rocksdict

from duro import _codec, _tracing
from duro.errors import DuroError, FencedError, UnavailableError
from duro.node.storage import trace
from duro.node.storage.engine import StorageEngine, Writer, apply_ops

if TYPE_CHECKING:
    from duro.node.storage.object_storage import Layer, ObjectStorage

__all__ = ["GroupCommitter", "CommitStats", "Replication", "GroupWrite", "PAUSED"]

log = logging.getLogger("duro.node.storage")


class _Paused:
    __repr__ = lambda self: "PAUSED"  # noqa: E731


PAUSED: Any = _Paused()  # admit(): the group takes no batch right now; keep its writes pending


class GroupWrite(Protocol):
    """A replicated group's side of one cut (``duro.node.replication.primary.PrimaryGroup``)."""

    def cut(self, ops: bytes) -> tuple[bytes, bytes, asyncio.Future[None]]:
        """Take the next batch: returns (meta key, meta value, future done when replicated)."""


class Replication(Protocol):
    """What the committer needs of replication (``duro.node.replication.manager``)."""

    def admit(self, gid: int) -> GroupWrite | DuroError | None | Any:
        """None: a local group (no replication); a GroupWrite: cut it; PAUSED: not now; a
        DuroError: the group refuses writes (its objects' layers fail with it)."""


class CommitStats:
    __slots__ = ("commits", "objects", "writes", "failures")

    def __init__(self) -> None:
        self.commits = 0
        self.objects = 0
        self.writes = 0
        self.failures = 0


class _Raw:
    """Writes that are not an object's layer (a migration's ingest and cleanup)."""

    __slots__ = ("gid", "ops", "future")

    def __init__(self, gid: int, ops: list[list], future: asyncio.Future[None]) -> None:
        self.gid, self.ops, self.future = gid, ops, future


class _Commit:
    __slots__ = ("taken", "raws", "local", "groups", "n_writes", "span")

    def __init__(self) -> None:
        self.taken: list[tuple[ObjectStorage, Layer, int]] = []
        self.raws: list[_Raw] = []
        self.local: asyncio.Future[None] | None = None  # the local write (None: written)
        self.groups: dict[int, asyncio.Future[None]] = {}  # replication, per group
        self.n_writes = 0
        self.span: Any = None  # tracing on: the commit's span (duro.node.storage.trace)

    def complete(self) -> bool:
        return (self.local is None or self.local.done()) and all(
            f.done() for f in self.groups.values())


class GroupCommitter:
    """See the module docstring."""

    def __init__(self, engine: StorageEngine, replication: Replication | None = None) -> None:
        self.engine = engine
        self.replication = replication
        self._dirty: list[ObjectStorage] = []
        self._raw: list[_Raw] = []
        self._scheduled = False
        self._writer = Writer(engine) if engine.sync else None
        self._inflight: asyncio.Future[None] | None = None  # the local write being made
        self._commits: deque[_Commit] = deque()  # cut, not complete yet, in cut order
        self.stats = CommitStats()
        self.on_commit: list = []  # callbacks(n_objects, n_writes) for metrics
        self.on_fatal: Callable[[BaseException], None] | None = None
        self._traces: list[Any] = []  # tracing on: the contexts of the calls that made writes

    @property
    def writer(self) -> Writer | None:
        return self._writer

    def mark_dirty(self, storage: ObjectStorage) -> None:
        self._dirty.append(storage)
        if _tracing.tracer is not None:
            self._traces.append(trace.current())
        self.kick()

    def forget_dirty(self) -> None:
        """Drop the objects waiting for the next batch (a simulated crash loses their writes)."""
        self._dirty.clear()

    def kick(self) -> None:
        """Flush at the end of this loop turn (once)."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def write_raw(self, gid: int, ops: list[list]) -> asyncio.Future[None]:
        """Commit ``ops`` in group ``gid`` with the next cut; the future is done when they are
        durable (replicated like any object's writes), or fails."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._raw.append(_Raw(gid, ops, fut))
        self.kick()
        return fut

    @property
    def busy(self) -> bool:
        """Whether anything is waiting to be written, being written or being replicated."""
        return bool(self._dirty or self._raw or self._commits) or self._inflight is not None

    def flush(self) -> None:
        """Cut a commit of everything dirty now, unless a local write is in flight (its
        completion cuts the next one)."""
        self._scheduled = False
        if self._inflight is not None or not (self._dirty or self._raw):
            return
        commit, batch = self._cut()
        if commit is None:
            return
        if _tracing.tracer is not None:
            traces, self._traces = self._traces, []
            trace.start_commit(commit, traces)
        self._commits.append(commit)
        for group_fut in commit.groups.values():
            group_fut.add_done_callback(self._on_group_done)
        if self._writer is None or (not commit.groups and self._single_write(commit)):
            try:
                self.engine.write(batch)
            except Exception as exc:  # disk full, I/O error, closed engine
                commit.local = _failed_future(exc)
            self._advance()
            return
        fut = self._writer.write(batch)
        commit.local = self._inflight = fut
        fut.add_done_callback(self._written)

    @staticmethod
    def _single_write(commit: _Commit) -> bool:
        """One write operation of one object: see "lone writes" in the module docstring."""
        if len(commit.taken) != 1 or commit.raws:
            return False
        storage, layer, _gid = commit.taken[0]
        return layer.seq - storage._durable_seq <= 1

    async def drain(self) -> None:
        """Commit everything dirty and wait until nothing is in flight (shutdown, tests)."""
        while self.busy:
            self.flush()
            waits = [f for c in self._commits for f in (c.local, *c.groups.values())
                     if f is not None and not f.done()]
            if self._inflight is not None:
                waits.append(self._inflight)
            if waits:
                await asyncio.wait(waits)
            elif self._dirty or self._raw:
                await asyncio.sleep(0.01)  # a paused group: its writes wait for the pause
            self._advance()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    # -- cutting ------------------------------------------------------------------------------
    def _admit(self, gid: int, cache: dict[int, Any]) -> Any:
        if gid in cache:
            return cache[gid]
        res = None if self.replication is None else self.replication.admit(gid)
        cache[gid] = res
        return res

    def _cut(self) -> tuple[_Commit | None, rocksdict.WriteBatch]:
        dirty, self._dirty = self._dirty, []
        raws, self._raw = self._raw, []
        admitted: dict[int, Any] = {}
        commit = _Commit()
        by_gid: dict[int, list[tuple[ObjectStorage, Layer]]] = {}
        for storage in dirty:
            gid = storage._gid
            verdict = self._admit(gid, admitted)
            if verdict is PAUSED:
                self._dirty.append(storage)  # cut again when the pause ends (kick)
                continue
            layer = storage._take_pending()
            if layer is None:
                continue
            if isinstance(verdict, DuroError):
                storage._commit_failed(layer, verdict)
                continue
            try:
                storage._check_fence()
            except DuroError as exc:
                storage._commit_failed(layer, exc)
                continue
            except Exception as exc:  # a fence callback must not take the whole batch down
                storage._commit_failed(layer, FencedError(f"fence check failed: {exc!r}"))
                continue
            by_gid.setdefault(gid, []).append((storage, layer))
        raw_by_gid: dict[int, list[_Raw]] = {}
        for raw in raws:
            verdict = self._admit(raw.gid, admitted)
            if verdict is PAUSED:
                self._raw.append(raw)
            elif isinstance(verdict, DuroError):
                if not raw.future.done():
                    raw.future.set_exception(verdict)
            else:
                raw_by_gid.setdefault(raw.gid, []).append(raw)
        if not by_gid and not raw_by_gid:
            return None, None  # type: ignore[return-value]
        batch = rocksdict.WriteBatch(raw_mode=True)
        for gid in {*by_gid, *raw_by_gid}:
            layers = by_gid.get(gid, [])
            group_raws = raw_by_gid.get(gid, [])
            group = admitted[gid]
            if group is None:  # a local group: no replication
                for _storage, layer in layers:
                    layer.apply_to(batch)
                for raw in group_raws:
                    apply_ops(batch, raw.ops)
            else:
                ops: list[list] = []
                for _storage, layer in layers:
                    ops.extend(layer.ops())
                for raw in group_raws:
                    ops.extend(raw.ops)
                apply_ops(batch, ops)
                meta_key, meta, replicated = group.cut(_codec.encode(ops))
                batch.put(meta_key, meta)
                commit.groups[gid] = replicated
            for storage, layer in layers:
                commit.taken.append((storage, layer, gid))
                commit.n_writes += len(layer.writes)
            commit.raws.extend(group_raws)
        return commit, batch

    # -- completing ---------------------------------------------------------------------------
    def _written(self, fut: asyncio.Future[None]) -> None:
        self._inflight = None
        self._advance()
        if self._dirty or self._raw:
            self.flush()  # what became dirty during the write goes out now

    def _advance(self) -> None:
        """Complete the commits at the head of the queue that have everything they need."""
        while self._commits and self._commits[0].complete():
            self._finish(self._commits.popleft())

    def _on_group_done(self, _fut: asyncio.Future[None]) -> None:
        if self._commits and self._commits[0].complete():
            self._advance()

    def _finish(self, commit: _Commit) -> None:
        local_exc = _exception(commit.local)
        if local_exc is not None:
            self.stats.failures += 1
            log.error("group commit of %s objects failed: %r", len(commit.taken), local_exc)
            if commit.groups and self.on_fatal is not None:
                self.on_fatal(local_exc)
        n_ok = 0
        for storage, layer, gid in commit.taken:
            exc = local_exc or _exception(commit.groups.get(gid))
            if exc is None:
                storage._commit_succeeded(layer)
                n_ok += 1
            else:
                storage._commit_failed(layer, _as_duro(exc))
        for raw in commit.raws:
            exc = local_exc or _exception(commit.groups.get(raw.gid))
            if not raw.future.done():
                if exc is None:
                    raw.future.set_result(None)
                else:
                    raw.future.set_exception(_as_duro(exc))
        if commit.span is not None:
            trace.end_commit(commit, local_exc)
        if local_exc is None:
            self.stats.commits += 1
            self.stats.objects += n_ok
            self.stats.writes += commit.n_writes
            for cb in self.on_commit:
                cb(n_ok, commit.n_writes)


def _exception(fut: asyncio.Future[None] | None) -> BaseException | None:
    if fut is None:
        return None
    if fut.cancelled():
        return UnavailableError("commit cancelled")
    return fut.exception()


def _as_duro(exc: BaseException) -> DuroError:
    return exc if isinstance(exc, DuroError) else UnavailableError(f"storage write failed: {exc}")


def _failed_future(exc: BaseException) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    fut.exception()
    return fut
