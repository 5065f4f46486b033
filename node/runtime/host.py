"""``ObjectHost``: every object a node runs, and the one entry point for calls to them.

``invoke(call)`` finds the object's activation (constructing it on first use), delivers the event
through the activation's gates and returns the encoded result. The host also owns the node-wide
pieces the activations share: the RocksDB engine, the group committer, the alarm scheduler, the LRU
of activations with its idle and memory-budget eviction, and the ``env`` given to objects.

Ownership (the cluster's fencing) is a pluggable :class:`Ownership`: ``None`` for a standalone node
or the Testbed, where the node owns every object.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping, Protocol

from duro import _codec
from duro._ids import ObjectId, namespace_key
from duro._namespace import Call, CallKind, Env, Invoker, Namespace
from duro._wire import RedirectError
from duro.errors import InvalidArgumentError, InvalidIdError, UnavailableError
from duro.node.config import RuntimeConfig
from duro.node.deleted_classes import ClassRemoval
from duro.node.runtime.activation import Activation, State, current_activation
from duro.node.runtime.bodies import ResponseBodies
from duro.node.runtime.alarms import AlarmScheduler
from duro.node.runtime.call_stats import CallStats
from duro.node.runtime.grant import Grant
from duro.node.storage.commit import GroupCommitter
from duro.node.storage.engine import StorageEngine
from duro.node.storage.object_storage import ObjectStorage

__all__ = ["ObjectHost", "Ownership", "HostStats", "BindingSpec"]

log = logging.getLogger("duro.node.runtime")

_NO_GRANT = Grant()


class Ownership(Protocol):
    """The cluster's view of which objects this node may serve (``duro.node.cluster``)."""

    async def acquire(self, call: Call) -> Grant:
        """What this node serves the object with, or raise (redirect, unavailable)."""

    def still_owner(self, object_id: bytes, grant: Grant) -> bool:
        """Checked at every commit: may an activation made with ``grant`` still write?"""

    def evicted(self, act: Activation) -> None:
        """An idle activation was dropped from memory (the directory may forget it if it holds
        nothing: docs/directory.md)."""


class BindingSpec(Protocol):
    name: str
    class_name: str
    cls: type


class HostStats:
    __slots__ = ("activations", "evictions", "events", "overloaded", "resets", "storage_failures")

    def __init__(self) -> None:
        self.activations = 0
        self.evictions = 0
        self.events = 0
        self.overloaded = 0
        self.resets = 0
        self.storage_failures = 0


class _GatedInvoker:
    """The invoker objects call other objects through: adds the output and input gates."""

    __slots__ = ("_inner", "_region")

    def __init__(self, inner: Invoker, region: str) -> None:
        self._inner = inner
        self._region = region

    async def invoke(self, call: Call) -> bytes:
        act = current_activation.get()
        if act is not None:
            gate = act.storage.output_gate()  # an outgoing call is an outgoing message
            if gate is not None:
                await gate
        if not call.caller_region:
            call.caller_region = self._region
        try:
            return await self._inner.invoke(call)
        finally:
            if act is not None and act.gate_closed:
                await act.wait_gate_open()  # the reply is an input event


class ObjectHost:
    """Runs the objects of one app on one node."""

    def __init__(
        self,
        engine: StorageEngine,
        bindings: Mapping[str, BindingSpec],
        config: RuntimeConfig = RuntimeConfig(),
        *,
        vars: Mapping[str, Any] | None = None,
        ownership: Ownership | None = None,
        outgoing: Invoker | None = None,
        namespace_class: Callable[[str], str] = lambda class_name: class_name,
        deleted_classes: Mapping[bytes, str] | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.bindings = dict(bindings)
        self.ownership = ownership
        self.committer = GroupCommitter(engine)
        self.alarms = AlarmScheduler(engine, self._fire_alarm)
        # Classes a migration deleted (namespace key -> why): their objects are refused and
        # removed (duro.node.deleted_classes; NodeCluster runs it per group it serves).
        self.removal = ClassRemoval(engine, self.committer, deleted_classes or {})
        self.stats = HostStats()
        # Calls and latency per binding (node/runtime/call_stats.py; the console reads them).
        self.calls: dict[str, CallStats] = {name: CallStats() for name in self.bindings}
        self._acts: OrderedDict[bytes, Activation] = OrderedDict()
        # WebSocket registry (duro.node.runtime.websockets.SocketHub), set by a node that serves
        # sockets through edges; None in the Testbed (objects then see no accept_web_socket).
        self.sockets: Any = None
        # Streamed response bodies waiting for their caller (node/runtime/bodies.py).
        self.bodies = ResponseBodies()
        self._closing = False
        self._sweeper: asyncio.Task | None = None
        # Migration: objects whose admission is held (-> future resolved on release/abort), and
        # objects that moved away (-> the redirect to answer until the directory view catches up).
        self.holds: dict[bytes, asyncio.Future] = {}
        self.moved: dict[bytes, RedirectError] = {}
        # Reset activations whose writes the group committer still holds (see invoke).
        self._unsettled: dict[bytes, ObjectStorage] = {}
        # Each binding's namespace key: a name a call carries is checked against the id with it.
        self._ns_keys = {name: namespace_key(namespace_class(b.class_name))
                         for name, b in self.bindings.items()}
        gated = _GatedInvoker(outgoing if outgoing is not None else self, config.region)
        self.env = Env(
            {
                name: Namespace(name, namespace_class(b.class_name), gated)
                for name, b in self.bindings.items()
            },
            dict(vars or {}),
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self.ownership is None:
            await self.removal.run(0)  # no cluster: every object is in group 0, and served here
            self.alarms.add_group(0)  # no cluster: this node owns every object, all in group 0
        self.alarms.start()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def close(self, grace: float = 5.0) -> None:
        """Stop admitting, let running events finish (within ``grace``), flush, evict all."""
        if self._closing:
            return
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self.alarms.stop()
        self.bodies.close()
        deadline = time.monotonic() + grace
        while any(not a.is_idle() for a in self._acts.values()) and time.monotonic() < deadline:
            self.committer.flush()
            await asyncio.sleep(0.01)
        await self.committer.drain()
        for act in list(self._acts.values()):
            act.close()
        self._acts.clear()
        self.committer.close()

    async def crash(self) -> None:
        """Stop as a process crash would (the Testbed's ``restart``): writes not committed yet
        are lost and their callers fail, no event is let finish, nothing more is flushed."""
        self._closing = True
        # Before anything below yields to the loop and lets the group committer flush them.
        lost = UnavailableError("the node restarted before this write was committed")
        self.committer.forget_dirty()
        for act in list(self._acts.values()):
            act.storage._lose_pending(lost)  # (storage's friend methods, as the committer's)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.alarms.stop()
        for act in list(self._acts.values()):
            act.close()
        self._acts.clear()
        await self.committer.drain()  # a batch the writer thread holds lands or fails first
        self.committer.close()

    @property
    def active_count(self) -> int:
        return len(self._acts)

    def activations(self) -> list[Activation]:
        """The objects active here now (a copy: activating or evicting does not change it)."""
        return list(self._acts.values())

    def activation(self, object_id: bytes) -> Activation | None:
        return self._acts.get(object_id)

    # -- calls ------------------------------------------------------------------------------
    async def invoke(self, call: Call) -> bytes:
        if self._closing:
            raise UnavailableError("node is shutting down")
        oid = call.object_id
        if not isinstance(oid, bytes) or len(oid) != 32:
            raise InvalidIdError("object id must be 32 bytes")
        binding = self.bindings.get(call.binding)
        if binding is None:
            raise InvalidArgumentError(
                f"unknown binding {call.binding!r} (this app's bindings: {sorted(self.bindings)})")
        if self.removal.deleted:
            why = self.removal.why_deleted(oid)
            if why is not None:
                raise InvalidIdError(f"object {oid.hex()}: {why}; its data was removed")
        hold = self.holds.get(oid)
        if hold is not None:
            await asyncio.shield(hold)  # a migration is moving it: wait for the outcome
        moved = self.moved.get(oid)
        if moved is not None:
            if call.epoch <= moved.epoch:
                raise _copy_error(moved)
            # The caller knows a newer epoch than our redirect (the object came back): re-check.
            del self.moved[oid]
        grant = _NO_GRANT
        if self.ownership is not None:
            grant = await self.ownership.acquire(call)
        act = self._acts.get(oid)
        while act is None or act.state is not State.ACTIVE or (
                grant.epoch and act.grant != grant):
            if act is not None and act.state is State.ACTIVE:
                act.reset(UnavailableError("object moved to a new epoch; call again"))
            prev = self._unsettled.get(oid)
            if prev is None:
                act = self._activate(call.binding, binding.cls, oid, grant,
                                     self._checked_name(call))
                break
            # A reset predecessor still has writes on their way to the disk: the new instance
            # must not read around them. Others may activate it meanwhile: look again after.
            await prev.settled()
            if self._unsettled.get(oid) is prev:
                del self._unsettled[oid]
            act = self._acts.get(oid)
        else:
            self._acts.move_to_end(oid)
            if call.name is not None and call.name != act.name:
                act.name = self._checked_name(call)  # (a string compare when already known)
        self.stats.events += 1
        region = call.caller_region
        if region:  # access statistics for the migration planner: one counter bump
            counts = act.regions
            if counts is None:
                act.regions = counts = {}
            counts[region] = counts.get(region, 0.0) + 1.0
        started = time.perf_counter()
        failed = True
        try:
            result = await act.deliver(call)
            failed = False
            return result
        finally:
            self.calls[call.binding].record(time.perf_counter() - started, failed)

    def _checked_name(self, call: Call) -> str | None:
        """The name ``call`` carries, once checked to derive its id (else InvalidIdError: a
        caller must not make an object believe it has another's name)."""
        name = call.name
        if name is None:
            return None
        if not isinstance(name, str) or ObjectId.from_name(
                self._ns_keys[call.binding], name).raw != call.object_id:
            raise InvalidIdError(
                f"the call names its object {name!r}, but id_from_name({name!r}) is not the "
                f"id it is addressed to")
        return name

    def _activate(self, binding: str, cls: type, oid: bytes, grant: Grant,
                  name: str | None = None) -> Activation:
        if len(self._acts) >= self.config.max_active_objects:
            self._evict_lru(len(self._acts) - self.config.max_active_objects + 1)
        act = Activation(self, oid, binding, grant, name)
        if oid in self.holds:
            act.freeze()  # activated while a migration holds it: queue, never run here
        act.construct(cls, self.env)
        self._acts[oid] = act
        self.stats.activations += 1
        return act

    def _forget(self, act: Activation) -> None:
        """Called by an activation that was reset."""
        if self._acts.get(act.oid) is act:
            del self._acts[act.oid]
            if not act.storage.is_settled():
                self._unsettled[act.oid] = act.storage
        self.stats.resets += 1

    async def _fire_alarm(self, binding: str, oid: bytes) -> object:
        if binding not in self.bindings:
            log.warning("alarm for %s names unknown binding %r; skipped", oid.hex(), binding)
            return None
        return _codec.decode(
            await self.invoke(Call(binding=binding, object_id=oid, kind=CallKind.ALARM))
        )

    # -- migration holds ----------------------------------------------------------------------
    def hold(self, object_id: bytes) -> None:
        """Stop admitting events for an object (they wait, in order) until released."""
        if object_id in self.holds:
            raise RuntimeError("object is already held")
        self.holds[object_id] = asyncio.get_running_loop().create_future()
        act = self._acts.get(object_id)
        if act is not None:
            act.freeze()

    def release_hold(self, object_id: bytes, error: Exception | None) -> None:
        """End a hold: waiting calls go on (``error`` None) or fail with ``error`` (a redirect)."""
        fut = self.holds.pop(object_id, None)
        if fut is not None and not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
                fut.exception()  # retrieved: waiters re-raise it
        act = self._acts.get(object_id)
        if act is not None and error is None:
            act.unfreeze()
        if error is not None and self.sockets is not None:
            # Moved away: the edges re-bind its sockets to the new owner (docs/edge.md).
            self.sockets.forget_object(object_id)

    def reset_group(self, gid: int, err: Exception) -> int:
        """Reset every activation of replica group ``gid`` (this node stopped leading it)."""
        acts = [a for a in self._acts.values() if a.gid == gid]
        for act in acts:
            act.reset(err)  # type: ignore[arg-type]
        return len(acts)

    def decay_regions(self, factor: float) -> None:
        """Age every object's access counts (called by the stats reporter every period)."""
        for act in self._acts.values():
            counts = act.regions
            if counts:
                for k in list(counts):
                    v = counts[k] * factor
                    if v < 0.01:
                        del counts[k]
                    else:
                        counts[k] = v

    # -- eviction ---------------------------------------------------------------------------
    def evict(self, object_id: bytes) -> bool:
        """Drop an idle object from memory now. Returns False if it is busy or not active."""
        act = self._acts.get(object_id)
        if act is None or not act.is_idle():
            return False
        self._evict(act)
        return True

    def _evict(self, act: Activation) -> None:
        del self._acts[act.oid]
        act.close()
        self.stats.evictions += 1
        if self.ownership is not None:
            self.ownership.evicted(act)

    def _evict_lru(self, n: int) -> int:
        """Evict up to ``n`` least recently used idle objects."""
        victims = []
        for act in self._acts.values():  # LRU first; stop as soon as we have enough
            if len(victims) >= n:
                break
            if act.is_idle():
                victims.append(act)
        for act in victims:
            self._evict(act)
        return len(victims)

    def sweep(self) -> int:
        """Evict objects idle longer than ``idle_timeout`` and enforce the memory budget."""
        for oid in [o for o, st in self._unsettled.items() if st.is_settled()]:
            del self._unsettled[oid]
        now = time.monotonic()
        cutoff = now - self.config.idle_timeout
        victims = []
        for act in self._acts.values():
            if act.last_used > cutoff:
                break  # LRU order: everything after this was used more recently
            if act.is_idle():
                victims.append(act)
        for act in victims:
            self._evict(act)
        evicted = len(victims)
        budget = self.config.memory_budget_mb * 1024 * 1024
        if budget and _rss_bytes() > budget and self._acts:
            evicted += self._evict_lru(max(1, len(self._acts) // 10))
        return evicted

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                self.sweep()
            except Exception:  # never let the sweeper die
                log.exception("eviction sweep failed")


def _copy_error(err: Exception) -> Exception:
    """A fresh instance of a stored error (raising one object many times piles up tracebacks)."""
    new = copy.copy(err)
    new.__traceback__ = None
    return new


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
