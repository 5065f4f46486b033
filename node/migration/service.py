"""``duro.v1.Migration`` on a host node: Move (as source), Ingest and Drop (as target), and the
access statistics the placement planner reads (Candidates, Owned)."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, AsyncIterator

import grpc
from grpc import aio

from duro._pb import inspect_pb2, migration_pb2, migration_pb2_grpc
from duro.errors import DuroError
from duro.node.migration import history
from duro.node.migration.source import clear_ops, run_move
from duro.node.storage import layout, usage
from duro.node.storage.alarm_record import decode_alarm
from duro.node.storage.object_storage import PUT

if TYPE_CHECKING:
    from duro.node.cluster import NodeCluster

__all__ = ["MigrationServicer", "candidates_of"]

log = logging.getLogger("duro.node.migration")

RECENT_MOVES = 64

_STATUS = {True: grpc.StatusCode.UNAVAILABLE, False: grpc.StatusCode.FAILED_PRECONDITION}


class MigrationServicer(migration_pb2_grpc.MigrationServicer):
    def __init__(self, cluster: NodeCluster) -> None:
        self.c = cluster
        self.moves_released = 0
        self.moves_aborted = 0
        self.ingested = 0
        # The last moves this node made as source, newest last (the console shows them live).
        self.recent: deque[migration_pb2.MoveResponse] = deque(maxlen=RECENT_MOVES)

    def add_to(self, server: aio.Server) -> None:
        migration_pb2_grpc.add_MigrationServicer_to_server(self, server)

    # -- source -------------------------------------------------------------------------------
    async def Move(self, request, context):  # noqa: N802, ANN001
        if len(request.object_id) != 32:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "object_id must be 32 bytes")
        try:
            res = await run_move(self.c, request.object_id, request.binding, request.target_node)
        except DuroError as exc:
            await context.abort(_STATUS[exc.retryable], str(exc))
        if res.outcome == "released":
            self.moves_released += 1
        else:
            self.moves_aborted += 1
        self.recent.append(inspect_pb2.MoveRecord(
            at=time.time(), from_node=self.c.node_id, to_node=request.target_node,
            epoch=res.new_epoch, outcome=res.outcome, binding=request.binding,
            object_id=request.object_id, held_ms=res.held_ms, detail=res.detail))
        return migration_pb2.MoveResponse(
            outcome=res.outcome, detail=res.detail, new_epoch=res.new_epoch,
            held_ms=res.held_ms, keys=res.keys, bytes=res.bytes,
        )

    # -- target -------------------------------------------------------------------------------
    async def Ingest(self, request_iterator: AsyncIterator, context):  # noqa: N802, ANN001
        """Take a moving object's copy into a group this node serves, replicated like any write
        (each chunk is one batch of the group), and answer once all of it is durable on every
        in-sync copy. The copy is not served before the source switches the directory."""
        host = self.c.host
        assert host is not None
        gid = 0
        oid: bytes | None = None
        alarm_rel = data_rel = b""
        keys = size = stored = 0  # stored: the copy's usage (its quota account, usage.py)
        binding = ""
        new_epoch = 0
        sockets: list[tuple[str, int, tuple[str, ...], bytes | None]] = []
        auto: tuple[str, str] | None = None
        prefix = b""
        ops: list[list] = []
        alarm_at: int | None = None
        async for chunk in request_iterator:
            if oid is None:
                oid = chunk.object_id
                if len(oid) != 32:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad object_id")
                gid = chunk.gid
                rep = self.c.replication
                if not gid or rep is None or rep.serving(gid) is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        f"this node does not serve group {gid} now")
                entry = self.c.router.directory.lookup(oid.hex())
                if entry is not None and entry.group == gid:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                        "target already owns this object")
                binding, new_epoch = chunk.binding, chunk.new_epoch
                prefix = layout.group_prefix(gid)
                host.moved.pop(oid, None)  # moving back in: an old "moved away" no longer holds
                self.c.router.directory.invalidate(oid.hex())
                ops = clear_ops(host.engine, gid, oid)  # a staged copy of an earlier attempt
                rel = layout.GROUP_PREFIX_BYTES
                alarm_rel = layout.alarm_key(gid, oid)[rel:]
                if len(chunk.history) > history.MAX_BYTES:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "move history too large")
                if chunk.history:  # its move history, kept with the copy (history.py)
                    ops.append([PUT, layout.history_key(gid, oid), chunk.history])
                data_rel = layout.data_prefix(gid, oid)[rel:]
            elif chunk.object_id != oid:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "chunks of two objects")
            for item in chunk.items:
                k, v = item.key, item.value
                if k == alarm_rel:
                    try:
                        when, binding, _retry = decode_alarm(v)
                    except ValueError as exc:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad alarm: {exc}")
                    ops.append([PUT, layout.alarm_index_key(gid, when, oid), binding.encode()])
                    alarm_at = when
                elif not k.startswith(data_rel):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        "a key outside the object's range")
                else:
                    stored += len(k) - len(data_rel) + len(v)
                ops.append([PUT, prefix + k, v])
                keys += 1
                size += len(k) + len(v)
            for r in chunk.sockets:
                sockets.append((r.edge, r.socket_id, tuple(r.tags),
                                r.attachment if r.has_attachment else None))
            if chunk.auto_request:
                auto = (chunk.auto_request, chunk.auto_response)
            if chunk.last:
                break
            # One replicated batch per chunk: memory stays bounded by the chunk size.
            await self._write(context, gid, ops)
            ops = []
        if oid is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty ingest")
        if stored:  # counted here from the keys themselves, with the last chunk
            ops.append([PUT, layout.usage_key(gid, oid), usage.encode(stored)])
        await self._write(context, gid, ops)
        if alarm_at is not None:  # fires here once the switch makes this node its owner
            host.alarms.schedule(oid, binding, alarm_at, gid)
        if host.sockets is not None:
            # Before the ack (and so before the directory switch): from the moment this node owns
            # the object, a broadcast reaches every socket, silent ones included.
            host.sockets.install(oid, binding, sockets, auto, new_epoch)
        self.ingested += 1
        if os.environ.get("DURO_MIGRATION_FAULT") == "target_before_ack":
            os._exit(137)  # test-only: the target dies with the copy on disk, before acking
        return migration_pb2.IngestAck(keys=keys, bytes=size, gid=gid)

    async def _write(self, context, gid: int, ops: list[list]) -> None:  # noqa: ANN001
        host = self.c.host
        assert host is not None
        try:
            await host.committer.write_raw(gid, ops)
        except DuroError as exc:
            await context.abort(_STATUS[exc.retryable], f"ingest not durable: {exc}")

    async def Drop(self, request, context):  # noqa: N802, ANN001
        host = self.c.host
        assert host is not None
        oid = request.object_id
        rep = self.c.replication
        entry = self.c.router.directory.lookup(oid.hex()) if len(oid) == 32 else None
        if len(oid) != 32 or rep is None:
            return migration_pb2.DropResponse(dropped=False)
        dropped = False
        for gid, prim in list(rep.primaries.items()):
            if not prim.serving or (entry is not None and entry.group == gid):
                continue  # never drop what we own
            if host.engine.get(layout.alarm_key(gid, oid)) is None and host.engine.get(
                    layout.history_key(gid, oid)) is None and not any(
                    True for _ in host.engine.scan(*_range(layout.data_prefix(gid, oid)))):
                continue
            try:
                await host.committer.write_raw(gid, clear_ops(host.engine, gid, oid))
                dropped = True
            except DuroError:
                pass  # best effort: a later ingest clears the range anyway
        if host.sockets is not None:
            host.sockets.forget_object(oid)
        return migration_pb2.DropResponse(dropped=dropped)

    # -- statistics ---------------------------------------------------------------------------
    async def Candidates(self, request, context):  # noqa: N802, ANN001
        host = self.c.host
        assert host is not None
        out = candidates_of(host, self.c.config.region, request.min_share or 0.7,
                            request.min_calls or 10.0, request.limit or 100)
        return migration_pb2.CandidatesResponse(
            node_id=self.c.node_id, region=self.c.config.region, candidates=out)

    async def SetDraining(self, request, context):  # noqa: N802, ANN001
        if self.c.membership is not None:
            await self.c.membership.set_draining(request.draining)
        return migration_pb2.DrainingResponse(draining=request.draining)

    async def Owned(self, request, context):  # noqa: N802, ANN001
        """The objects stored in the groups this node serves (their binding, when an alarm or
        an activation says it: a move looks it up in the directory otherwise)."""
        rep = self.c.replication
        host = self.c.host
        assert host is not None
        led = sorted(g for g, p in rep.primaries.items() if p.serving) if rep else []
        limit = request.limit or 1_000_000
        out = []
        for gid in led:
            for oid in stored_objects(host.engine, gid):
                act = host.activation(oid)
                out.append(migration_pb2.Candidate(object_id=oid,
                                                   binding=act.binding if act else ""))
                if len(out) >= limit:
                    return migration_pb2.OwnedResponse(objects=out)
        return migration_pb2.OwnedResponse(objects=out)


def candidates_of(host, region: str, min_share: float, min_calls: float, limit: int) -> list:  # noqa: ANN001
    """Active objects whose decayed traffic comes mostly from one region other than ours."""
    out = []
    for act in host.activations():
        counts = act.regions
        if not counts:
            continue
        total = sum(counts.values())
        top_region = max(counts, key=counts.__getitem__)
        if top_region == region or total < min_calls or counts[top_region] < min_share * total:
            continue
        out.append(migration_pb2.Candidate(
            object_id=act.oid, binding=act.binding,
            regions=[migration_pb2.RegionCount(region=r, calls=v) for r, v in counts.items()],
        ))
        if len(out) >= limit:
            break
    return out


def stored_objects(engine, gid: int):  # noqa: ANN001, ANN201
    """Ids of the objects with keys or an alarm in group ``gid`` here (one seek per object)."""
    seen: set[bytes] = set()
    for space in (layout.DATA, layout.ALARM):
        base = layout.group_prefix(gid) + space
        end = layout.prefix_end(base)
        key = base
        while True:
            first = next(engine.scan(key, end), None)
            if first is None:
                break
            oid = first[0][len(base):len(base) + layout.ID_BYTES]
            if len(oid) != layout.ID_BYTES:
                break
            if oid not in seen:
                seen.add(oid)
                yield oid
            key = layout.prefix_end(base + oid)


def _range(prefix: bytes) -> tuple[bytes, bytes]:
    return prefix, layout.prefix_end(prefix)

