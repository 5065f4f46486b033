"""``ctx.storage``: one object's transactional key-value storage.

Every operation takes effect synchronously, when it is called, against the object's write-back
overlay (the pending :class:`Layer`) over RocksDB, and returns an awaitable that is already complete.
So:

* no other event of the object can run during a storage operation (the input gate holds trivially:
  the operation never yields to the event loop);
* writes made without an ``await`` of other I/O in between land in the same pending layer, and the
  node's group committer writes one layer atomically (write coalescing);
* ``put`` without ``await`` is still applied (unlike a bare coroutine, nothing is lost);
* a bad key or value raises at the call, before anything of that call is written;
* so does a write that would take the object past its storage quota (:mod:`.usage`):
  ``StorageLimitError``, and nothing of that call is written.

``list()`` is the one exception to "finishes when called": a range too large to read in one slice
is read in slices with the input gate closed (:mod:`.listing`).

Durability is the output gate's business: the pending layer is committed at the end of the loop turn
(:class:`~duro.node.storage.commit.GroupCommitter`), and the runtime holds every response, socket
send and outgoing call made after a write until :meth:`ObjectStorage.output_gate` says the write is
durable. ``await storage.sync()`` waits for it explicitly.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, Protocol

import rocksdict

from duro import _codec
from duro.errors import DuroError, InvalidArgumentError, ObjectResetError, StorageLimitError
from duro.node.storage import layout, usage
from duro.node.storage.alarm_record import AlarmRecord, decode_alarm, encode_alarm
from duro.node.storage.listing import DEFAULT_MAX_LIST_BYTES, Listing, merged

if TYPE_CHECKING:
    from duro.node.storage.commit import GroupCommitter
    from duro.node.storage.engine import StorageEngine

__all__ = [
    "ObjectStorage", "Transaction", "Layer", "Ready", "MAX_KEYS_PER_CALL", "StorageOwner",
    "PUT", "DELETE", "DELETE_RANGE",
]

MAX_KEYS_PER_CALL = 128
_MAX_ALARM_SECONDS = 1e11  # beyond year 5000: almost certainly milliseconds passed as seconds


class Ready:
    """An awaitable that is already complete (storage operations finish when called)."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __await__(self):
        return self.value
        yield  # pragma: no cover - makes this a generator


_DONE = Ready()


PUT, DELETE, DELETE_RANGE = 0, 1, 2  # operations of a write batch (replicated as they are)


class Layer:
    """Writes not yet committed: full RocksDB key -> encoded value, or None for a delete."""

    __slots__ = ("writes", "cleared", "seq", "alarm", "usage", "usage_key")

    def __init__(self) -> None:
        self.writes: dict[bytes, bytes | None] = {}
        self.cleared: bytes | None = None  # data prefix wiped by delete_all before these writes
        self.seq = 0
        self.alarm: Any = _UNCHANGED  # new alarm time (ms) or None once set/deleted in this layer
        # The object's usage after this layer (None: no data write in it), written to its usage
        # record with the layer (docs/storage.md, "Limits").
        self.usage: int | None = None
        self.usage_key = b""

    def apply_to(self, batch: rocksdict.WriteBatch) -> None:
        if self.cleared is not None:
            batch.delete_range(self.cleared, layout.prefix_end(self.cleared))
        for k, v in self.writes.items():
            if v is None:
                batch.delete(k)
            else:
                batch.put(k, v)
        if self.usage is not None:
            if self.usage:
                batch.put(self.usage_key, usage.encode(self.usage))
            else:
                batch.delete(self.usage_key)

    def ops(self) -> list[list]:
        """The layer as write operations ``[PUT, k, v] | [DELETE, k] | [DELETE_RANGE, lo, hi]``,
        in the order :meth:`apply_to` applies them (what a replicated batch carries)."""
        out: list[list] = []
        if self.cleared is not None:
            out.append([DELETE_RANGE, self.cleared, layout.prefix_end(self.cleared)])
        for k, v in self.writes.items():
            out.append([DELETE, k] if v is None else [PUT, k, v])
        if self.usage is not None:
            out.append([PUT, self.usage_key, usage.encode(self.usage)] if self.usage
                       else [DELETE, self.usage_key])
        return out

    def merge(self, top: Layer) -> None:
        """Apply ``top`` (a committed transaction) on this layer."""
        if top.cleared is not None:
            self.cleared = top.cleared
            for k in [k for k in self.writes if k.startswith(top.cleared)]:
                del self.writes[k]
        self.writes.update(top.writes)
        if top.alarm is not _UNCHANGED:
            self.alarm = top.alarm
        if top.usage is not None:
            self.usage, self.usage_key = top.usage, top.usage_key


class _Unchanged:
    __repr__ = lambda self: "<unchanged>"  # noqa: E731


_UNCHANGED = _Unchanged()


class StorageOwner(Protocol):
    """What the runtime gives an object's storage (the activation)."""

    def _check_fence(self) -> None: ...
    def _on_storage_failed(self, exc: DuroError) -> None: ...
    def _on_alarm_committed(self, when_ms: int | None) -> None: ...
    def _block_events(self) -> object: ...
    def _unblock_events(self, token: object) -> None: ...


class _Ops:
    """Storage operations over a stack of layers (shared by storage and transactions)."""

    __slots__ = ()

    # -- provided by subclasses -------------------------------------------------------------
    _oid: bytes
    _gid: int
    _binding: str
    _engine: StorageEngine
    _max_value: int
    _quota: int  # max_storage_bytes (0: no quota)
    _max_list: int  # max_list_bytes (0: no cap)

    def _layers(self) -> Iterable[Layer]:  # newest first
        raise NotImplementedError

    def _usage_now(self) -> int:
        """The object's usage as this view sees it, every write so far included."""
        raise NotImplementedError

    def _set_usage(self, layer: Layer, value: int) -> None:
        """Record the usage after a write to ``layer`` (the view's write layer)."""
        raise NotImplementedError

    def _gate_owner(self) -> StorageOwner:
        raise NotImplementedError

    def _write_layer(self) -> Layer:
        raise NotImplementedError

    def _wrote(self, confirm: bool = True) -> None:
        """A write was made; ``confirm=False`` (``allow_unconfirmed``): the output gate does not
        wait for it (it is still committed, in order, with the writes around it)."""
        raise NotImplementedError

    def _check_usable(self) -> None:
        raise NotImplementedError

    # -- reads ------------------------------------------------------------------------------
    def _read(self, full_key: bytes, cache: bool = True) -> bytes | None:
        data = layout.is_data_key(full_key)
        for layer in self._layers():
            if full_key in layer.writes:
                return layer.writes[full_key]
            if data and layer.cleared is not None:
                return None
        return self._engine.get(full_key, cache=cache)

    def _key(self, key: Any) -> bytes:
        return layout.data_key(self._gid, self._oid, layout.encode_user_key(key))

    def _keys(self, keys: Any) -> list[bytes]:
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise InvalidArgumentError("keys must be a list of str")
        keys = list(keys)
        if len(keys) > MAX_KEYS_PER_CALL:
            raise InvalidArgumentError(
                f"{len(keys)} keys in one call; the limit is {MAX_KEYS_PER_CALL}"
            )
        return [self._key(k) for k in keys]

    def get(self, key: str, default: Any = None, *, allow_concurrency: bool = False,
            no_cache: bool = False) -> Ready:
        """The value stored under ``key``, or ``default``.

        ``allow_concurrency`` is accepted for Cloudflare's ``allowConcurrency`` and changes
        nothing here: a ``get`` finishes when called, so no event can run inside it anyway.
        ``no_cache``: the read does not fill the node's block cache (docs/runtime.md)."""
        self._check_usable()
        if type(key) is not str:
            _one_key("get", key, "get_many")
        raw = self._read(self._key(key), not no_cache)
        return Ready(default if raw is None else _codec.decode(raw))

    def get_many(self, keys: Iterable[str], *, allow_concurrency: bool = False,
                 no_cache: bool = False) -> Ready:
        """A dict of the keys that exist (at most 128 keys), in the order asked (options as
        :meth:`get`'s)."""
        self._check_usable()
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise InvalidArgumentError("keys must be a list of str")
        keys = list(keys)
        out: dict[str, Any] = {}
        cache = not no_cache
        for k, full in zip(keys, self._keys(keys)):
            raw = self._read(full, cache)
            if raw is not None:
                out[k] = _codec.decode(raw)
        return Ready(out)

    def list(
        self,
        *,
        prefix: str = "",
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
        allow_concurrency: bool = False,
        no_cache: bool = False,
    ) -> Ready:
        """Keys and values in UTF-8 byte order of the keys, as a dict.

        ``start`` is inclusive, ``start_after`` and ``end`` exclusive; ``prefix`` restricts to keys
        that start with it; ``reverse`` lists in descending order (``limit`` then keeps the last
        keys of the range).

        ``allow_concurrency``: a listing too large for one slice lets the object's other events
        run between its slices (by default its input gate stays closed until it is complete);
        the result is the same snapshot either way. ``no_cache``: the read does not fill the
        node's block cache.
        """
        self._check_usable()
        if start is not None and start_after is not None:
            raise InvalidArgumentError("list() takes start or start_after, not both")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise InvalidArgumentError(f"limit must be a positive int, got {limit!r}")
        base = layout.data_prefix(self._gid, self._oid)
        lo = base + layout.encode_user_key(prefix)
        hi = layout.prefix_end(lo)
        if start is not None:
            lo = max(lo, base + layout.encode_user_key(start))
        if start_after is not None:
            lo = max(lo, base + layout.encode_user_key(start_after) + b"\x00")
        if end is not None:
            hi = min(hi, base + layout.encode_user_key(end))
        if lo >= hi:
            return Ready({})
        items = merged(reversed(list(self._layers())), self._engine, lo, hi, reverse,
                       cache=not no_cache)
        listing = Listing(items, limit, self._max_list, self._engine,
                          None if allow_concurrency else self._gate_owner())
        if listing.step():  # the first slice, at the call: most ranges end in it
            return Ready(listing.result)
        return listing  # the rest is read when awaited (listing.py)

    # -- writes -----------------------------------------------------------------------------
    def _charge(self, changes: Iterable[tuple[bytes, bytes | None, bytes | None]]) -> int:
        """The usage after replacing, at each data key, the old value by the new one (None:
        absent); StorageLimitError if that grows the usage past the quota (nothing written)."""
        delta = 0
        for full, old, new in changes:
            delta += usage.entry_size(full, new) - usage.entry_size(full, old)
        return self._charge_delta(delta)

    def _charge_delta(self, delta: int) -> int:
        """The usage after a write that changes it by ``delta`` bytes, or StorageLimitError."""
        after = self._usage_now() + delta
        quota = self._quota
        if quota and delta > 0 and after > quota:
            raise StorageLimitError(
                f"object storage limit: this write would store {after} bytes; the limit is "
                f"{quota} bytes (max_storage_bytes; keys and encoded values). Nothing of it was "
                f"written; delete keys to make room"
            )
        return after

    def put(self, key: str, value: Any, *, allow_unconfirmed: bool = False,
            no_cache: bool = False) -> Ready:
        """Store ``value`` (msgpack-encodable, at most the value limit) under ``key``.

        ``allow_unconfirmed``: replies, socket sends and calls made after this write do not wait
        for it to be durable (it is still committed atomically and in order with the writes
        around it; if it fails, the object is reset as for any failed write). ``no_cache``: the
        read of the old value (for the storage account) does not fill the block cache."""
        self._check_usable()
        if type(key) is not str:
            _one_key("put", key, "put_many")
        full = self._key(key)
        data = _codec.encode_value(value, self._max_value)
        old = self._read(full, not no_cache)  # the one read a put costs: only the difference
        if old is None:
            after = self._charge_delta(len(full) - layout.DATA_HEADER_BYTES + len(data))
        else:
            after = self._charge_delta(len(data) - len(old))
        layer = self._write_layer()
        layer.writes[full] = data
        self._set_usage(layer, after)
        self._wrote(not allow_unconfirmed)
        return _DONE

    def put_many(self, entries: Mapping[str, Any], *, allow_unconfirmed: bool = False,
                 no_cache: bool = False) -> Ready:
        """Store several keys atomically (at most 128); options as :meth:`put`'s."""
        self._check_usable()
        if not isinstance(entries, Mapping):
            raise InvalidArgumentError("put_many() takes a mapping of str keys to values")
        fulls = self._keys(list(entries))
        encoded = [_codec.encode_value(v, self._max_value) for v in entries.values()]
        if not fulls:
            return _DONE
        # Distinct str keys are distinct bytes: each old value is read once.
        cache = not no_cache
        after = self._charge([(f, self._read(f, cache), d) for f, d in zip(fulls, encoded)])
        layer = self._write_layer()
        for full, data in zip(fulls, encoded):
            layer.writes[full] = data
        self._set_usage(layer, after)
        self._wrote(not allow_unconfirmed)
        return _DONE

    def delete(self, key: str, *, allow_unconfirmed: bool = False,
               no_cache: bool = False) -> Ready:
        """Delete ``key``; the awaitable gives whether it existed (options as :meth:`put`'s)."""
        self._check_usable()
        if type(key) is not str:
            _one_key("delete", key, "delete_many")
        full = self._key(key)
        old = self._read(full, not no_cache)
        after = self._charge(((full, old, None),))
        layer = self._write_layer()
        layer.writes[full] = None
        self._set_usage(layer, after)
        self._wrote(not allow_unconfirmed)
        return Ready(old is not None)

    def delete_many(self, keys: Iterable[str], *, allow_unconfirmed: bool = False,
                    no_cache: bool = False) -> Ready:
        """Delete several keys (at most 128); the awaitable gives how many existed (options as
        :meth:`put`'s)."""
        self._check_usable()
        fulls = self._keys(keys)
        if not fulls:
            return Ready(0)
        cache = not no_cache
        olds = {f: self._read(f, cache) for f in fulls}  # distinct keys
        after = self._charge((f, old, None) for f, old in olds.items())
        layer = self._write_layer()
        for f in fulls:
            layer.writes[f] = None
        self._set_usage(layer, after)
        self._wrote(not allow_unconfirmed)
        return Ready(sum(1 for old in olds.values() if old is not None))

    def delete_all(self, *, allow_unconfirmed: bool = False, no_cache: bool = False) -> Ready:
        """Delete every key of the object, and its alarm (options as :meth:`put`'s)."""
        self._check_usable()
        layer = self._write_layer()
        prefix = layout.data_prefix(self._gid, self._oid)
        for k in [k for k in layer.writes if k.startswith(prefix)]:
            del layer.writes[k]
        layer.cleared = prefix
        self._set_usage(layer, 0)
        self._set_alarm_record(layer, None)
        self._wrote(not allow_unconfirmed)
        return _DONE

    # -- alarm ------------------------------------------------------------------------------
    def _alarm_record(self) -> AlarmRecord | None:
        raw = self._read(layout.alarm_key(self._gid, self._oid))
        return None if raw is None else decode_alarm(raw)

    def _set_alarm_record(self, layer: Layer, when_ms: int | None, retry: int = 0) -> None:
        gid, oid = self._gid, self._oid
        old = self._alarm_record()
        if old is not None:
            layer.writes[layout.alarm_index_key(gid, old.when_ms, oid)] = None
        if when_ms is None:
            layer.writes[layout.alarm_key(gid, oid)] = None
        else:
            layer.writes[layout.alarm_key(gid, oid)] = encode_alarm(when_ms, self._binding, retry)
            layer.writes[layout.alarm_index_key(gid, when_ms, oid)] = self._binding.encode()
        layer.alarm = when_ms

    def _firing_ms(self) -> int | None:
        raise NotImplementedError

    def get_alarm(self) -> Ready:
        """The alarm's time as a Unix timestamp in seconds (float), or None.

        While ``alarm()`` runs, the alarm that fired is no longer reported (as in Durable Objects).
        """
        self._check_usable()
        rec = self._alarm_record()
        if rec is None or rec.when_ms == self._firing_ms():
            return Ready(None)
        return Ready(rec.when_ms / 1000.0)

    def set_alarm(self, when: float | _dt.datetime) -> Ready:
        """Set the object's one alarm: a Unix timestamp in seconds or an aware/naive-UTC datetime."""
        self._check_usable()
        self._write_alarm(_alarm_ms(when))
        return _DONE

    def delete_alarm(self) -> Ready:
        self._check_usable()
        self._write_alarm(None)
        return _DONE

    def _write_alarm(self, when_ms: int | None, retry: int = 0) -> None:
        self._set_alarm_record(self._write_layer(), when_ms, retry)
        self._wrote()
        self._alarm_touched()

    def _alarm_touched(self) -> None:
        raise NotImplementedError


def _one_key(op: str, key: Any, many: str) -> None:
    """Refuse a collection where one key is expected, naming the call that takes several."""
    if isinstance(key, (list, tuple, set, frozenset, dict)) or (
            isinstance(key, Iterable) and not isinstance(key, (str, bytes, bytearray))):
        raise InvalidArgumentError(
            f"{op}() takes one key (a str), not a {type(key).__name__}; for several keys at "
            f"once use {many}()")


def _alarm_ms(when: Any) -> int:
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        return int(when.timestamp() * 1000)
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise InvalidArgumentError(
            f"set_alarm() takes a Unix timestamp in seconds or a datetime, not {type(when).__name__}"
        )
    if when != when or when < 0:
        raise InvalidArgumentError(f"alarm time must be a non-negative number, got {when!r}")
    if when > _MAX_ALARM_SECONDS:
        raise InvalidArgumentError(
            f"alarm time {when!r} is too far in the future; set_alarm() takes seconds, not milliseconds"
        )
    return int(when * 1000)


class ObjectStorage(_Ops):
    """``ctx.storage`` of one activation."""

    __slots__ = (
        "_oid",
        "_gid",
        "_binding",
        "_engine",
        "_committer",
        "_owner",
        "_max_value",
        "_quota",
        "_max_list",
        "_usage",
        "_usage_key",
        "_pending",
        "_inflight",
        "_settle_waiters",
        "_write_seq",
        "_gate_seq",
        "_durable_seq",
        "_waiters",
        "_error",
        "_in_txn",
        "_alarm_version",
        "_alarm_firing",
    )

    def __init__(
        self,
        object_id: bytes,
        binding: str,
        engine: StorageEngine,
        committer: GroupCommitter,
        owner: StorageOwner,
        max_value_bytes: int = _codec.DEFAULT_MAX_VALUE_BYTES,
        gid: int = 0,
        *,
        max_storage_bytes: int = usage.DEFAULT_MAX_STORAGE_BYTES,
        max_list_bytes: int = DEFAULT_MAX_LIST_BYTES,
    ) -> None:
        self._oid = object_id
        self._gid = gid
        self._binding = binding
        self._engine = engine
        self._committer = committer
        self._owner = owner
        self._max_value = max_value_bytes
        self._quota = max_storage_bytes
        self._max_list = max_list_bytes
        self._usage: int | None = None  # read at the first data write (usage.py)
        self._usage_key = layout.usage_key(gid, object_id)
        self._pending: Layer | None = None
        self._inflight: Layer | None = None  # taken by the group committer, not yet durable
        self._settle_waiters: list[asyncio.Future] | None = None
        self._write_seq = 0
        self._gate_seq = 0  # the last write the output gate waits for (allow_unconfirmed: not)
        self._durable_seq = 0
        self._waiters: deque[tuple[int, asyncio.Future]] | None = None
        self._error: DuroError | None = None
        self._in_txn = False
        self._alarm_version = 0  # bumped by every alarm change the object's code makes
        self._alarm_firing: int | None = None  # time (ms) of the alarm whose alarm() is running

    def _firing_ms(self) -> int | None:
        return self._alarm_firing

    def _alarm_touched(self) -> None:
        self._alarm_version += 1

    def _write_alarm_internal(self, when_ms: int | None, retry: int = 0) -> None:
        """Runtime-made alarm change (retry, completion): not counted as the object's own."""
        self._set_alarm_record(self._write_layer(), when_ms, retry)
        self._wrote()

    def _layers(self) -> Iterable[Layer]:  # newest first
        pending, inflight = self._pending, self._inflight
        if inflight is None:
            return (pending,) if pending is not None else ()
        return (pending, inflight) if pending is not None else (inflight,)

    def _write_layer(self) -> Layer:
        if self._pending is None:
            self._pending = Layer()
        return self._pending

    def _gate_owner(self) -> StorageOwner:
        return self._owner

    def _usage_now(self) -> int:
        if self._usage is None:
            self._usage = self._load_usage()
        return self._usage

    def _load_usage(self) -> int:
        # Every layer with a data write carries the usage after it (the first data write of an
        # activation reads the usage before it writes), so the newest such layer is current;
        # without one, the record on disk is, or, for an object written before records
        # existed, a count of its keys (usage.py).
        for layer in self._layers():
            if layer.usage is not None:
                return layer.usage
        raw = self._engine.get(self._usage_key)
        if raw is not None:
            return usage.decode(raw)
        return usage.recount(self._engine, self._gid, self._oid)

    def _set_usage(self, layer: Layer, value: int) -> None:
        self._usage = value
        layer.usage = value
        layer.usage_key = self._usage_key

    def _wrote(self, confirm: bool = True) -> None:
        self._write_seq += 1
        if confirm:
            self._gate_seq = self._write_seq
        layer = self._pending
        if layer is not None and layer.seq == 0:
            self._committer.mark_dirty(self)
        if layer is not None:
            layer.seq = self._write_seq

    def _check_usable(self) -> None:
        if self._error is not None:
            raise ObjectResetError(f"storage of this object failed and it was reset: {self._error}")

    # -- transactions -----------------------------------------------------------------------
    def transaction(self, fn: Callable[[Transaction], Awaitable[Any]] | None = None) -> Any:
        """``async with storage.transaction() as txn:`` or ``await storage.transaction(fn)``.

        The transaction's reads see its own writes; its writes are applied atomically when it ends
        without an exception or ``rollback()``, and discarded otherwise. While it runs no other event
        is delivered to the object, so it is serializable.
        """
        self._check_usable()
        txn = Transaction(self)
        if fn is None:
            return txn

        async def run() -> Any:
            async with txn:
                return await fn(txn)

        return run()

    # -- durability -------------------------------------------------------------------------
    def has_unflushed(self) -> bool:
        return self._durable_seq < self._write_seq

    def output_gate(self) -> asyncio.Future | None:
        """None if every write so far is durable (``allow_unconfirmed`` ones aside), else a
        future resolved when it is."""
        return self._durable_future(self._gate_seq)

    def _durable_future(self, seq: int) -> asyncio.Future | None:
        if self._error is not None:
            raise ObjectResetError(f"storage of this object failed and it was reset: {self._error}")
        if self._durable_seq >= seq:
            return None
        fut = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append((seq, fut))
        return fut

    async def sync(self) -> None:
        """Wait until every write made so far is durable (``allow_unconfirmed`` ones too)."""
        fut = self._durable_future(self._write_seq)
        if fut is not None:
            await fut

    def is_settled(self) -> bool:
        """Whether the committer holds nothing of this storage: no batch of it is being written,
        and no pending layer of it is waiting to be (or it failed, and never will be)."""
        return self._inflight is None and (self._pending is None or self._error is not None)

    async def settled(self) -> None:
        """Wait until :meth:`is_settled` (never raises: a failed write is settled too). A new
        activation of the same object waits for this before it reads anything, so that it never
        reads around a batch of its predecessor that is still on its way to the disk."""
        while not self.is_settled():
            fut = asyncio.get_running_loop().create_future()
            if self._settle_waiters is None:
                self._settle_waiters = []
            self._settle_waiters.append(fut)
            await fut

    def _notify_settled(self) -> None:
        if self._settle_waiters is not None and self.is_settled():
            waiters, self._settle_waiters = self._settle_waiters, None
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    # -- called by the group committer ------------------------------------------------------
    def _take_pending(self) -> Layer | None:
        """Hand the pending layer to the committer; it stays readable until it is durable."""
        layer, self._pending = self._pending, None
        if layer is not None:
            self._inflight = layer
        return layer

    def lose_pending(self, exc: DuroError) -> None:
        """Writes not handed to the committer are lost (a simulated crash): waiters get ``exc``."""
        layer = self._take_pending()
        if layer is not None:
            self._commit_failed(layer, exc)

    def _check_fence(self) -> None:
        self._owner._check_fence()

    def _commit_succeeded(self, layer: Layer) -> None:
        if self._inflight is layer:
            self._inflight = None
        self._durable_seq = max(self._durable_seq, layer.seq)
        if layer.alarm is not _UNCHANGED:
            self._owner._on_alarm_committed(layer.alarm)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._durable_seq:
            fut = waiters.popleft()[1]
            if not fut.done():
                fut.set_result(None)
        if waiters is not None and not waiters:
            self._waiters = None  # an idle object keeps no empty deque
        if self._settle_waiters is not None:
            self._notify_settled()

    def _commit_failed(self, layer: Layer, exc: DuroError) -> None:
        self._error = exc
        self._pending = None
        if self._inflight is layer:
            self._inflight = None  # else an earlier batch is still being written: it lands or fails
        waiters, self._waiters = self._waiters, None
        for _, fut in waiters or ():
            if not fut.done():
                fut.set_exception(exc)
        self._owner._on_storage_failed(exc)
        self._notify_settled()


class Transaction(_Ops):
    """The ``txn`` of ``storage.transaction()``: the storage API plus ``rollback()``."""

    __slots__ = ("_storage", "_layer", "_done", "_rolled_back", "_token", "_oid", "_gid",
                 "_binding", "_engine", "_max_value", "_quota", "_max_list", "_usage")

    def __init__(self, storage: ObjectStorage) -> None:
        self._storage = storage
        self._layer = Layer()
        self._done = False
        self._rolled_back = False
        self._token: object = None
        self._oid = storage._oid
        self._gid = storage._gid
        self._binding = storage._binding
        self._engine = storage._engine
        self._max_value = storage._max_value
        self._quota = storage._quota
        self._max_list = storage._max_list
        self._usage: int | None = None  # as the transaction sees it, its own writes included

    def _layers(self) -> Iterable[Layer]:
        yield self._layer
        yield from self._storage._layers()

    def _write_layer(self) -> Layer:
        return self._layer

    def _gate_owner(self) -> StorageOwner:
        return self._storage._owner

    def _usage_now(self) -> int:
        if self._usage is None:
            self._usage = self._storage._usage_now()
        return self._usage

    def _set_usage(self, layer: Layer, value: int) -> None:
        self._usage = value  # the storage's own account is settled when the transaction commits

    def _wrote(self, confirm: bool = True) -> None:
        pass  # the storage's own _wrote runs when the transaction commits (confirmed)

    def _firing_ms(self) -> int | None:
        return self._storage._alarm_firing

    def _alarm_touched(self) -> None:
        pass  # counted when the transaction commits

    def _check_usable(self) -> None:
        if self._done:
            raise InvalidArgumentError("transaction is finished")
        if self._rolled_back:
            raise InvalidArgumentError("transaction was rolled back")
        self._storage._check_usable()

    def rollback(self) -> None:
        """Discard every write of this transaction; it can no longer be used."""
        self._rolled_back = True

    async def __aenter__(self) -> Transaction:
        st = self._storage
        if st._in_txn:
            raise InvalidArgumentError("transactions cannot be nested")
        st._in_txn = True
        self._token = st._owner._block_events()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        st = self._storage
        try:
            if exc_type is None and not self._rolled_back:
                layer = self._layer
                if layer.writes or layer.cleared is not None:
                    after = self._usage_after_commit(layer)  # may refuse the whole transaction
                    st._write_layer().merge(layer)
                    if after is not None:
                        st._set_usage(st._write_layer(), after)
                    st._wrote()
                    if layer.alarm is not _UNCHANGED:
                        st._alarm_version += 1
        finally:
            self._done = True
            st._in_txn = False
            st._owner._unblock_events(self._token)
        return False

    def _usage_after_commit(self, layer: Layer) -> int | None:
        """The storage's usage once ``layer`` is merged into it (None: no data write in it).

        Counted against the storage as it is now, not as the transaction saw it: writes the
        object made outside the transaction meanwhile (``ctx.storage.put`` while it ran) are in
        the storage and may be overwritten by the transaction's. StorageLimitError (the whole
        transaction discarded) if that grows the usage past the quota."""
        st = self._storage
        data = [(k, v) for k, v in layer.writes.items() if layout.is_data_key(k)]
        if not data and layer.cleared is None:
            return None
        if layer.cleared is not None:  # delete_all in the transaction: only its writes remain
            before = st._usage_now()
            after = sum(usage.entry_size(k, v) for k, v in data)
            if self._quota and after > self._quota and after > before:
                raise StorageLimitError(
                    f"object storage limit: this transaction would store {after} bytes; the "
                    f"limit is {self._quota} bytes (max_storage_bytes). It was not applied")
            return after
        try:
            return st._charge([(k, st._read(k), v) for k, v in data])
        except StorageLimitError as exc:
            raise StorageLimitError(f"{exc} (the transaction was not applied)") from None


def now_ms() -> int:
    return int(time.time() * 1000)
