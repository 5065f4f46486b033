"""The source side of a migration: carries out the actions of ``protocol.step`` on a real node.

One :func:`run_move` per object at a time. The steps (docs/migration.md): hold the object's
admission and drain it, stream its keys and alarm to the target, switch the directory entry in one
etcd transaction guarded by this node's registration, then release (redirect held calls, delete the
local copy) or abort (resume). Every outcome is decided by ``protocol.step``; this module only does
I/O and reports what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, AsyncIterator

import grpc

from duro import _tracing, tls
from duro._pb import migration_pb2, migration_pb2_grpc
from duro._transport import message_limits
from duro._wire import RedirectError
from duro.errors import InvalidArgumentError, UnavailableError
from duro.node.migration import history
from duro.node.migration import protocol as P
from duro.node.storage import layout
from duro.node.storage.engine import clear_ops
from duro.node.storage.object_storage import DELETE, PUT
from duro.topology.directory_entry import Entry
from duro.topology.etcdkv import get_value
from duro.topology.groups import GroupConfig, primary_gone
from duro.topology.nodes import NodeInfo, node_key

if TYPE_CHECKING:
    from duro.node.cluster import NodeCluster

__all__ = ["run_move", "MoveResult", "CHUNK_BYTES", "clear_ops", "target_group"]

log = logging.getLogger("duro.node.migration")

CHUNK_BYTES = 256 * 1024
# Test-only fault injection: "<step>" makes the process exit abruptly (like SIGKILL) when the
# source reaches that step: after_hold, after_transfer, after_switch, after_release.
_FAULT = os.environ.get("DURO_MIGRATION_FAULT", "")


def _fault(step: str) -> None:
    if _FAULT and _FAULT == step:
        log.error("DURO_MIGRATION_FAULT: exiting at %s", step)
        os._exit(137)

DRAIN_TIMEOUT = 10.0
SOCKET_FLUSH_TIMEOUT = 2.0
TRANSFER_TIMEOUT = 30.0
FENCE_RETRY = 0.2


@dataclass
class MoveResult:
    outcome: str
    detail: str = ""
    new_epoch: int = 0
    held_ms: float = 0.0
    keys: int = 0
    bytes: int = 0
    sockets: int = 0


class _Move:
    def __init__(self, c: NodeCluster, oid: bytes, binding: str, target: str) -> None:
        self.c = c
        self.host = c.host
        assert self.host is not None
        self.oid = oid
        self.hex = oid.hex()
        self.binding = binding
        self.target = target
        self.target_address = ""
        self.target_region = ""
        self.entry: Entry | None = None
        self.gid = 0  # the object's replica group here
        self.target_gid = 0  # and at the target (its IngestAck says)
        self.result = MoveResult("aborted")
        self.held_at = 0.0

    def _ctx(self) -> dict[str, str]:
        return {"object_id": self.hex, "binding": self.binding}

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> MoveResult:
        if _tracing.tracer is None:
            return await self._run()
        attrs = {"duro.object_id": self.hex, "duro.binding": self.binding,
                 "duro.migration.target": self.target}
        with _tracing.span("migration", attributes=attrs) as span:
            result = await self._run()
            span.set_attribute("duro.migration.outcome", result.outcome)
            return result

    async def _run(self) -> MoveResult:
        await self._prepare()
        assert self.entry is not None
        # The protocol names owners by group: the object moves from this group to the target's.
        state, actions = P.begin(self.hex, str(self.gid), str(self.target_gid), self.entry.epoch)
        try:
            while actions:
                action, actions = actions[0], actions[1:]
                if _tracing.tracer is None:
                    event = await self._perform(action)
                else:  # one span per step: hold, snapshot, switch, release or abort
                    with _tracing.span(f"migration {type(action).__name__}"):
                        event = await self._perform(action)
                _fault(_STEP_AFTER.get(type(action), ""))
                if event is not None:
                    state, more = P.step(state, event)
                    actions = actions + more
        finally:
            if self.held_at:
                self.result.held_ms = (time.perf_counter() - self.held_at) * 1000
            hold = self.host.holds.get(self.oid)
            if hold is not None and not hold.done():
                # Never leave an object held (a bug or cancellation): resume it.
                self.host.release_hold(self.oid, None)
        return self.result

    async def _prepare(self) -> None:
        c = self.c
        if self.oid in self.host.holds:
            raise InvalidArgumentError("a migration of this object is already running")
        if self.target == c.node_id:
            raise InvalidArgumentError("the object is already on the target node")
        info = c.router.nodes.nodes.get(self.target)
        if info is None:  # our watch may not have seen it register yet: ask etcd itself
            raw = await get_value(c.etcd, node_key(c.config.cluster, self.target))
            info = NodeInfo.from_json(raw) if raw is not None else None
        if info is None:
            raise UnavailableError(f"target node {self.target!r} is not live")
        self.target_address, self.target_region = info.address, info.region
        self.target_gid = target_group(c.router.groups.all(), c.router.nodes.nodes, self.target)
        if not self.target_gid:
            raise UnavailableError(f"target node {self.target!r} serves no replica group")
        entry = await c.router.directory.resolve(self.oid, create=False, fresh=True)
        rep = c.replication
        if entry is None or rep is None or rep.serving(entry.group) is None:
            owner = f"group {entry.group}" if entry else "nobody"
            raise InvalidArgumentError(f"this node does not serve the object (owner: {owner})")
        if entry.group == self.target_gid:
            raise InvalidArgumentError("the object is already in the target's group")
        self.entry = entry
        self.gid = entry.group
        self.binding = self.binding or entry.binding

    async def _perform(self, action: P.Action) -> P.Event | None:
        if isinstance(action, P.HoldAdmission):
            return await self._hold_and_drain()
        if isinstance(action, P.SendSnapshot):
            return await self._send_snapshot()
        if isinstance(action, P.SwitchEntry):
            return await self._switch()
        if isinstance(action, P.FenceEntry):
            return await self._fence()
        if isinstance(action, P.Release):
            await self._release(action)
            return None
        if isinstance(action, P.Abort):
            await self._abort(action)
            return None
        raise AssertionError(f"unknown action {action!r}")

    # -- actions ----------------------------------------------------------------------------
    async def _hold_and_drain(self) -> P.Event:
        self.held_at = time.perf_counter()
        self.host.hold(self.oid)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            act = self.host.activation(self.oid)
            if act is None or act.drained():
                if act is not None and act.storage.has_unflushed():
                    await act.storage.sync()
                    continue
                hub = self.host.sockets
                if hub is not None:
                    # The object's frames must reach its edges before the new owner can send
                    # any (they travel on other streams): part of the flush (docs/migration.md).
                    await hub.flush_frames(self.oid, SOCKET_FLUSH_TIMEOUT)
                # The marker: if this node stops leading the group before the move ends, the
                # group's next primary finds it and settles the move before it serves the
                # object (NodeCluster._settle_moves).
                try:
                    await self.host.committer.write_raw(self.gid, [[
                        PUT, layout.moving_key(self.gid, self.oid),
                        self.target_gid.to_bytes(4, "big")]])
                except Exception as exc:
                    return P.DrainFailed(f"the move could not be recorded: {exc}")
                return P.Drained()
            if time.monotonic() > deadline:
                return P.DrainFailed(f"admitted events still running after {DRAIN_TIMEOUT} s")
            await asyncio.sleep(0.001)

    async def _send_snapshot(self) -> P.Event:
        # One long-lived channel per target: a new channel per move costs a TCP connect and the
        # HTTP/2 handshake (~1.2 ms) inside the window in which the object holds its calls.
        stub = migration_pb2_grpc.MigrationStub(peer_channel(self.target_address))
        try:
            ack = await stub.Ingest(self._chunks(), timeout=TRANSFER_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return P.TransferFailed(f"{exc.code().name}: {exc.details()}")
        self.result.keys, self.result.bytes = ack.keys, ack.bytes
        self.target_gid = ack.gid
        if not ack.gid:
            return P.TransferFailed("the target did not say which group holds the copy")
        return P.TransferAcked()

    async def _chunks(self) -> AsyncIterator[migration_pb2.IngestChunk]:
        assert self.entry is not None
        engine = self.host.engine
        first = migration_pb2.IngestChunk(
            object_id=self.oid, binding=self.binding, source_node=self.c.node_id,
            new_epoch=self.entry.epoch + 1, gid=self.target_gid,
        )
        chunk, size = first, 0
        rel = layout.GROUP_PREFIX_BYTES  # keys travel relative to the group
        alarm_key = layout.alarm_key(self.gid, self.oid)
        alarm = engine.get(alarm_key)
        if alarm is not None:
            chunk.items.add(key=alarm_key[rel:], value=alarm)
        # The move history goes with the object, this move appended (node/migration/history.py).
        chunk.history = history.append(engine.get(layout.history_key(self.gid, self.oid)),
                                       time.time(), self.c.node_id, self.target,
                                       self.entry.epoch + 1)
        prefix = layout.data_prefix(self.gid, self.oid)
        for k, v in engine.scan(prefix, layout.prefix_end(prefix)):
            chunk.items.add(key=k[rel:], value=v)
            size += len(k) + len(v)
            if size >= CHUNK_BYTES:
                yield chunk
                chunk, size = migration_pb2.IngestChunk(object_id=self.oid), 0
                await asyncio.sleep(0)  # let the stream drain: bounded memory for large objects
        # The socket registry travels too (no event runs while held, so it is final here but for
        # clients that close meanwhile): the target knows every socket as soon as it owns it.
        hub = self.host.sockets
        if hub is not None:
            records, auto = hub.export(self.oid)
            for edge, sid, tags, attachment in records:
                rec = chunk.sockets.add(edge=edge, socket_id=sid, tags=tags)
                if attachment is not None:
                    rec.attachment, rec.has_attachment = attachment, True
                size += 64 + len(attachment or b"") + sum(len(t) for t in tags)
                if size >= CHUNK_BYTES:
                    yield chunk
                    chunk, size = migration_pb2.IngestChunk(object_id=self.oid), 0
                    await asyncio.sleep(0)
            if auto is not None:
                chunk.auto_request, chunk.auto_response = auto
            self.result.sockets = len(records)
        chunk.last = True
        yield chunk

    async def _switch(self) -> P.Event:
        """The directory switch: a compare-and-swap at the object's partition (docs/directory.md)
        from this group at the owned epoch to the target's group, epoch + 1."""
        assert self.entry is not None
        try:
            resp = await self.c.router.directory.switch(
                self.oid, self.gid, self.entry.epoch, self.target_gid, self.target_region)
        except Exception as exc:  # no answer: it may or may not have been applied
            log.warning("migration: directory switch outcome unknown: %r", exc, extra=self._ctx())
            return P.SwitchUnknown()
        if resp.error_code:  # answered without applying it, the entry unknown: fence to know
            log.warning("migration: directory switch not made: %s", resp.error, extra=self._ctx())
            return P.SwitchUnknown()
        if resp.switched:
            self.result.new_epoch = resp.entry.epoch
            return P.SwitchApplied()
        return P.SwitchRefused(*self._identity(resp))

    async def _fence(self) -> P.Event:
        """Claim the object at the next epoch in this group (a switch to itself): once that is
        applied, a switch still on its way can no longer match, so the move did not happen."""
        assert self.entry is not None
        await asyncio.sleep(FENCE_RETRY)
        try:
            resp = await self.c.router.directory.switch(
                self.oid, self.gid, self.entry.epoch, self.gid, self.entry.region)
        except Exception as exc:
            log.warning("migration: fence outcome unknown: %r", exc, extra=self._ctx())
            return P.FenceUnknown()
        if resp.error_code:
            return P.FenceUnknown()
        if resp.switched:
            return P.FenceApplied()
        return P.FenceRefused(*self._identity(resp))

    @staticmethod
    def _identity(resp) -> tuple[str | None, int]:  # noqa: ANN001
        """The entry now, as the protocol names owners (group ids)."""
        if not resp.found:
            return None, 0
        return str(resp.entry.group), int(resp.entry.epoch)

    async def _release(self, action: P.Release) -> None:
        self.result.outcome = "released"
        self.result.new_epoch = action.new_epoch
        redirect = RedirectError(
            f"object moved to node {self.target}", node_id=self.target,
            address=self.target_address, epoch=action.new_epoch,
        )
        redirect.gid = self.target_gid  # type: ignore[attr-defined] - see NodeCluster._promoted
        host = self.host
        host.moved[self.oid] = redirect
        act = host.activation(self.oid)
        if act is not None:
            act.reset(redirect)
        host.release_hold(self.oid, redirect)
        self.held_at, held = 0.0, time.perf_counter() - self.held_at
        self.result.held_ms = held * 1000
        try:  # replicated, like the object's writes; if not, the group's next primary does it
            await host.committer.write_raw(self.gid, clear_ops(host.engine, self.gid, self.oid)
                                           + [[DELETE, layout.moving_key(self.gid, self.oid)]])
        except Exception as exc:
            log.warning("moved, but the local copy was not deleted: %r", exc, extra=self._ctx())
        log.info("moved to %s (epoch %s, %s keys, held %.1f ms)", self.target,
                 action.new_epoch, self.result.keys, self.result.held_ms, extra=self._ctx())

    async def _abort(self, action: P.Abort) -> None:
        self.result = replace(self.result, outcome="aborted", detail=action.reason)
        host = self.host
        with contextlib.suppress(Exception):  # (a leftover marker is settled by a promotion)
            await host.committer.write_raw(self.gid, [[DELETE,
                                                       layout.moving_key(self.gid, self.oid)]])
        if action.still_owner:
            host.release_hold(self.oid, None)
        else:
            err = UnavailableError(f"object moved elsewhere during a migration: {action.reason}")
            act = host.activation(self.oid)
            if act is not None:
                act.reset(err)
            host.release_hold(self.oid, err)
        if self.held_at:
            self.result.held_ms = (time.perf_counter() - self.held_at) * 1000
            self.held_at = 0.0
        log.warning("migration to %s aborted: %s", self.target, action.reason, extra=self._ctx())
        asyncio.get_running_loop().create_task(self._drop_at_target())

    async def _drop_at_target(self) -> None:
        try:
            await migration_pb2_grpc.MigrationStub(peer_channel(self.target_address)).Drop(
                migration_pb2.DropRequest(object_id=self.oid), timeout=5.0)
        except grpc.aio.AioRpcError:
            pass  # best effort: a later ingest clears the range anyway


# Channels to other nodes' Migration services, per event loop and address. A channel reconnects by
# itself when its peer restarts; an RPC on a dead peer fails as before (TransferFailed -> abort).
_CHANNELS: dict[tuple[int, str], tuple[asyncio.AbstractEventLoop, grpc.aio.Channel]] = {}


def peer_channel(address: str) -> grpc.aio.Channel:
    loop = asyncio.get_running_loop()
    key = (id(loop), address)
    cached = _CHANNELS.get(key)
    if cached is None or cached[0] is not loop:
        cached = _CHANNELS[key] = (loop, tls.channel(address, options=message_limits()))
    return cached[1]


_STEP_AFTER = {
    P.HoldAdmission: "after_hold",
    P.SendSnapshot: "after_transfer",
    P.SwitchEntry: "after_switch",
    P.Release: "after_release",
}


def target_group(groups: list[GroupConfig], nodes: dict, node: str) -> int:
    """The group an object moved to ``node`` joins: one ``node`` serves (its home group first);
    0 if it serves none. The source and the target compute it alike."""
    served = [g for g in groups if g.primary == node and primary_gone(g, nodes) is None]
    served.sort(key=lambda g: (g.home != node, g.gid))
    return served[0].gid if served else 0


async def run_move(c: NodeCluster, oid: bytes, binding: str, target: str) -> MoveResult:
    return await _Move(c, oid, binding, target).run()
