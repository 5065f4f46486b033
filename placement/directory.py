"""The directory in etcd: object id -> (binding, replica group, epoch, region).

Key ``/duro/<cluster>/dir/<object_id_hex>``; value JSON
``{"binding", "group", "epoch", "region", "node", "replicas": []}``: an object lives on the
serving primary of its replica group (docs/replication.md); ``node`` and ``replicas`` are
written empty (entries from before replica groups name the node instead of a group).

Writes are etcd transactions only:

* create-if-absent (``create_revision == 0``), many per transaction: :meth:`Directory.create_many`
  sends one outer transaction whose operations are nested create-if-absent transactions, so a
  batch in which some objects were created concurrently by someone else still creates the others,
  and every loser gets the winner's entry back, in one round trip;
* compare-and-swap on the entry's ``mod_revision`` (which changes with every write, so it pins the
  epoch): :meth:`Directory.reassign` bumps the epoch by exactly one.

An optional :class:`LeaderGuard` adds one compare to every write transaction: the leader key
must still be the one this process created, so a deposed placement leader cannot write.

:class:`DirectoryCache` is the read side for routers and nodes: a paged range read, then a watch
on the prefix that resumes from its own revision (after an etcd restart, or after a compaction
by re-reading everything and reporting the differences).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end
from etcd3aio._protobuf import Compare, RequestOp, TxnRequest

__all__ = [
    "Directory",
    "DirectoryCache",
    "EpochConflictError",
    "Entry",
    "LeaderGuard",
    "MAX_BATCH",
    "NotLeaderError",
    "dir_key",
    "dir_prefix",
]

log = logging.getLogger("duro.placement.directory")

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
# etcd gives a nested transaction the budget left by its parent (128 - parent ops), and each
# nested create-if-absent needs one, so one outer transaction holds at most 127 creates.
MAX_BATCH = MAX_TXN_OPS - 1
_ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)
_NO_REPLICAS: tuple[str, ...] = ()


def dir_prefix(cluster: str) -> str:
    return f"/duro/{cluster}/dir/"


def dir_key(cluster: str, object_id_hex: str) -> str:
    return f"{dir_prefix(cluster)}{object_id_hex}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry. Strings other than the id are interned: caches hold 100,000s."""

    object_id: str  # 64 hex digits
    binding: str
    node: str
    epoch: int
    region: str
    replicas: tuple[str, ...] = _NO_REPLICAS
    revision: int = 0  # etcd mod_revision of the stored value (0: not stored yet)
    group: int = 0  # the replica group (0: an entry from before groups, naming ``node``)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "binding": self.binding,
                "group": self.group,
                "epoch": self.epoch,
                "region": self.region,
                "node": self.node,
                "replicas": list(self.replicas),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, object_id: str, data: bytes, revision: int = 0) -> Entry:
        d: dict[str, Any] = json.loads(data)
        reps = d.get("replicas") or ()
        return cls(
            object_id=object_id,
            binding=sys.intern(str(d["binding"])),
            node=sys.intern(str(d["node"])),
            epoch=int(d["epoch"]),
            region=sys.intern(str(d.get("region", ""))),
            replicas=tuple(sys.intern(str(r)) for r in reps) if reps else _NO_REPLICAS,
            revision=revision,
            group=int(d.get("group", 0)),
        )

    def same_binding(self, other: Entry | None) -> bool:
        return other is not None and (self.group, self.node, self.epoch) == (
            other.group, other.node, other.epoch)


class NotLeaderError(RuntimeError):
    """The leader key is no longer ours: this placement process must not write."""


class EpochConflictError(RuntimeError):
    """The entry changed since it was read (or vanished); ``current`` is what is there now."""

    def __init__(self, current: Entry | None) -> None:
        super().__init__(f"directory entry changed: now {current}")
        self.current = current


@dataclass(frozen=True, slots=True)
class LeaderGuard:
    """The leader key and the create_revision it had when this process won the election."""

    key: str
    create_revision: int

    def compare(self) -> Any:
        return Compare(
            result=Compare.EQUAL,
            target=Compare.CREATE,
            key=self.key.encode(),
            create_revision=self.create_revision,
        )


def _object_id_of(key: bytes, prefix_len: int) -> str:
    return key[prefix_len:].decode()


class Directory:
    """Transactional reads and writes of directory entries."""

    def __init__(self, client: Etcd3Client, cluster: str) -> None:
        self._client = client
        self.cluster = cluster
        self.prefix = dir_prefix(cluster)

    def key(self, object_id_hex: str) -> str:
        return self.prefix + object_id_hex

    async def get(self, object_id_hex: str, *, timeout: float | None = 5.0) -> Entry | None:
        resp = await self._client.kv.get(self.key(object_id_hex), timeout=timeout)
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return Entry.from_json(object_id_hex, kv.value, kv.mod_revision)

    async def count(self, *, timeout: float | None = 5.0) -> int:
        resp = await self._client.kv.get(
            self.prefix, prefix_range_end(self.prefix), count_only=True, timeout=timeout
        )
        return int(resp.count)

    async def create(
        self, entry: Entry, *, guard: LeaderGuard | None = None, timeout: float | None = 5.0
    ) -> tuple[Entry, bool]:
        """Create *entry* if its object has none; return (the stored entry, created)."""
        return (await self.create_many([entry], guard=guard, timeout=timeout))[0]

    async def create_many(
        self,
        entries: Sequence[Entry],
        *,
        guard: LeaderGuard | None = None,
        timeout: float | None = 5.0,
    ) -> list[tuple[Entry, bool]]:
        """Create-if-absent for each entry in one transaction.

        Returns, in order, ``(entry, True)`` for each one created (with its revision) and
        ``(winner, False)`` for each object that already had an entry. Object ids must be
        distinct and at most :data:`MAX_BATCH`. Raises :class:`NotLeaderError` if *guard*
        no longer holds (nothing is written then).
        """
        if len(entries) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} entries per transaction")
        if len({e.object_id for e in entries}) != len(entries):
            raise ValueError("duplicate object ids in one transaction")
        ops = []
        for e in entries:
            key = self.key(e.object_id).encode()
            ops.append(
                RequestOp(
                    request_txn=TxnRequest(
                        compare=[
                            Compare(result=Compare.EQUAL, target=Compare.CREATE, key=key,
                                    create_revision=0)
                        ],
                        success=[RequestOp(request_put={"key": key, "value": e.to_json()})],
                        failure=[RequestOp(request_range={"key": key})],
                    )
                )
            )
        resp = await self._client.kv.txn(
            [guard.compare()] if guard else [], ops, [], timeout=timeout, max_attempts=1
        )
        if not resp.succeeded:
            raise NotLeaderError("leader key changed; not writing")
        rev = int(resp.header.revision)
        out: list[tuple[Entry, bool]] = []
        for e, r in zip(entries, resp.responses, strict=True):
            sub = r.response_txn
            if sub.succeeded:
                out.append((replace(e, revision=rev), True))
            else:
                kv = sub.responses[0].response_range.kvs[0]
                out.append((Entry.from_json(e.object_id, kv.value, kv.mod_revision), False))
        return out

    async def reassign(
        self,
        current: Entry,
        *,
        node: str = "",
        region: str,
        group: int = 0,
        replicas: tuple[str, ...] | None = None,
        guard: LeaderGuard | None = None,
        timeout: float | None = 5.0,
    ) -> Entry:
        """Move an object: write epoch ``current.epoch + 1`` if the entry is still *current*.

        Raises :class:`EpochConflictError` with the entry now stored if it changed meanwhile.
        This is the one write the (future) migration protocol makes.
        """
        new = replace(
            current,
            node=sys.intern(node),
            region=sys.intern(region),
            group=group,
            epoch=current.epoch + 1,
            replicas=current.replicas if replicas is None else replicas,
        )
        key = self.key(current.object_id)
        kv = self._client.kv
        compares = [Compare(result=Compare.EQUAL, target=Compare.MOD, key=key.encode(),
                            mod_revision=current.revision)]
        if guard:
            compares.append(guard.compare())
        resp = await kv.txn(
            compares,
            [kv.txn_op_put(key, new.to_json())],
            [kv.txn_op_get(key), kv.txn_op_get(guard.key)] if guard else [kv.txn_op_get(key)],
            timeout=timeout,
            max_attempts=1,
        )
        if resp.succeeded:
            return replace(new, revision=int(resp.header.revision))
        if guard:
            lk = resp.responses[1].response_range.kvs
            if not lk or lk[0].create_revision != guard.create_revision:
                raise NotLeaderError("leader key changed; not writing")
        kvs = resp.responses[0].response_range.kvs
        now = Entry.from_json(current.object_id, kvs[0].value, kvs[0].mod_revision) if kvs else None
        raise EpochConflictError(now)


ChangeCallback = Callable[[Entry | None, Entry | None], None]


class DirectoryCache:
    """A read-only, watch-fed copy of the directory (see the module docstring).

    ``on_change(old, new)`` is called from the event loop for every entry that appears, changes or
    disappears (``old``/``new`` is None then); it must not block. :meth:`stop` then :meth:`start`
    resumes from the last revision seen.
    """

    PAGE = 5000

    def __init__(
        self,
        client: Etcd3Client,
        cluster: str,
        *,
        on_change: ChangeCallback | None = None,
        retry_backoff: float = 0.2,
    ) -> None:
        self._client = client
        self.prefix = dir_prefix(cluster)
        self._prefix_b = self.prefix.encode()
        self._on_change = on_change
        self._entries: dict[str, Entry] = {}
        self._waiters: dict[str, list[tuple[Callable[[Entry | None], bool], asyncio.Future[Entry | None]]]] = {}
        self.revision = 0  # every event up to this etcd revision has been applied
        self._retry_backoff = retry_backoff
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.resets = 0  # full re-reads after compaction (metrics, tests)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, object_id_hex: str) -> Entry | None:
        return self._entries.get(object_id_hex)

    async def start(self, timeout: float | None = 30.0) -> None:
        if self._task is None:
            self._ready.clear()
            self._task = asyncio.create_task(self._follow(), name="directory-cache")
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for waiters in self._waiters.values():
            for _, fut in waiters:
                fut.cancel()
        self._waiters.clear()

    async def __aenter__(self) -> DirectoryCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(
        self,
        object_id_hex: str,
        predicate: Callable[[Entry | None], bool] = lambda e: e is not None,
        timeout: float | None = None,
    ) -> Entry | None:
        """Wait until the cached entry of an object satisfies *predicate* (default: exists)."""
        current = self._entries.get(object_id_hex)
        if predicate(current):
            return current
        fut: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(object_id_hex, []).append((predicate, fut))
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            ws = self._waiters.get(object_id_hex)
            if ws is not None:
                ws[:] = [w for w in ws if w[1] is not fut]
                if not ws:
                    del self._waiters[object_id_hex]

    # ---- internals ------------------------------------------------------------------------
    def _set(self, oid: str, new: Entry | None) -> None:
        old = self._entries.get(oid)
        if new is None:
            if old is None:
                return
            del self._entries[oid]
        else:
            if old is not None and old.revision >= new.revision:
                return
            self._entries[oid] = new
        if self._on_change is not None and not (new is not None and new.same_binding(old)):
            try:
                self._on_change(old, new)
            except Exception:
                log.exception("directory cache: on_change failed")
        ws = self._waiters.get(oid)
        if ws:
            for pred, fut in list(ws):
                if not fut.done() and pred(new):
                    fut.set_result(new)

    async def _bootstrap(self) -> None:
        """Read the whole prefix at one revision (in pages), then replace the cache with it."""
        kv = self._client.kv
        end = prefix_range_end(self.prefix)
        start = self.prefix.encode()
        rev = 0
        seen: dict[str, Entry] = {}
        n = len(self._prefix_b)
        while True:
            resp = await kv.get(start, end, revision=rev, limit=self.PAGE, timeout=30.0)
            if rev == 0:
                rev = int(resp.header.revision)
            for item in resp.kvs:
                oid = _object_id_of(item.key, n)
                seen[oid] = Entry.from_json(oid, item.value, item.mod_revision)
            if not resp.more or not resp.kvs:
                break
            start = resp.kvs[-1].key + b"\x00"
        for oid in [o for o in self._entries if o not in seen]:
            self._set(oid, None)
        for oid, e in seen.items():
            self._set(oid, e)
        self.revision = rev

    async def _follow(self) -> None:
        backoff = self._retry_backoff
        need_read = self.revision == 0
        end = prefix_range_end(self.prefix)
        n = len(self._prefix_b)
        while True:
            try:
                if need_read:
                    await self._bootstrap()
                    need_read = False
                self._ready.set()
                stream = self._client.watch.watch(self.prefix, end, start_revision=self.revision + 1)
                created = False
                async with contextlib.aclosing(stream):
                    async for resp in stream:
                        backoff = self._retry_backoff
                        if resp.compact_revision > 0 or resp.canceled:
                            log.warning(
                                "directory cache: watch compacted at %s (had %s); re-reading",
                                resp.compact_revision,
                                self.revision,
                            )
                            self.resets += 1
                            need_read = True
                            break
                        if resp.created:
                            if created:
                                # etcd3aio reconnected on its own from its own notion of the
                                # revision; restart from ours so that no event can be skipped.
                                break
                            created = True
                        for ev in resp.events:
                            oid = _object_id_of(ev.kv.key, n)
                            if ev.type == 1:  # DELETE
                                self._set(oid, None)
                            else:
                                self._set(oid, Entry.from_json(oid, ev.kv.value, ev.kv.mod_revision))
                            self.revision = max(self.revision, int(ev.kv.mod_revision))
            except asyncio.CancelledError:
                raise
            except _ETCD_ERRORS as exc:
                log.warning("directory cache: etcd error %r; retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
