"""``duro.v1.Migration`` on a host node: Move (as source), Ingest and Drop (as target), and the
access statistics the placement planner reads (Candidates, Owned)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, AsyncIterator

import grpc
import rocksdict
from grpc import aio

from duro import _codec
from duro._pb import migration_pb2, migration_pb2_grpc
from duro.errors import DuroError
from duro.node.migration.source import clear_object, delete_local_copy, run_move
from duro.node.storage import layout

if TYPE_CHECKING:
    from duro.node.cluster import NodeCluster

__all__ = ["MigrationServicer", "candidates_of"]

log = logging.getLogger("duro.node.migration")

_NO_SYNC = rocksdict.WriteOptions()
_NO_SYNC.sync = False

_STATUS = {True: grpc.StatusCode.UNAVAILABLE, False: grpc.StatusCode.FAILED_PRECONDITION}


class MigrationServicer(migration_pb2_grpc.MigrationServicer):
    def __init__(self, cluster: NodeCluster) -> None:
        self.c = cluster
        self.moves_released = 0
        self.moves_aborted = 0
        self.ingested = 0

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
        return migration_pb2.MoveResponse(
            outcome=res.outcome, detail=res.detail, new_epoch=res.new_epoch,
            held_ms=res.held_ms, keys=res.keys, bytes=res.bytes,
        )

    # -- target -------------------------------------------------------------------------------
    async def Ingest(self, request_iterator: AsyncIterator, context):  # noqa: N802, ANN001
        host = self.c.host
        assert host is not None
        engine = host.engine
        oid: bytes | None = None
        alarm_key = prefix = b""
        keys = size = 0
        binding = ""
        new_epoch = 0
        sockets: list[tuple[str, int, tuple[str, ...], bytes | None]] = []
        auto: tuple[str, str] | None = None
        batch = rocksdict.WriteBatch(raw_mode=True)
        async for chunk in request_iterator:
            if oid is None:
                oid = chunk.object_id
                if len(oid) != 32:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad object_id")
                entry = self.c.router.cache.lookup(oid.hex())
                if entry is not None and entry.node == self.c.node_id:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                        "target already owns this object")
                binding, new_epoch = chunk.binding, chunk.new_epoch
                clear_object(engine, oid, batch)  # a staged copy of an earlier attempt goes first
                alarm_key, prefix = layout.alarm_key(oid), layout.data_prefix(oid)
            elif chunk.object_id != oid:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "chunks of two objects")
            for item in chunk.items:
                k, v = item.key, item.value
                if k == alarm_key:
                    when, binding, _retry = _codec.decode(v)
                    batch.put(layout.alarm_index_key(when, oid), binding.encode())
                elif not k.startswith(prefix):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        "a key outside the object's range")
                batch.put(k, v)
                keys += 1
                size += len(k) + len(v)
            for r in chunk.sockets:
                sockets.append((r.edge, r.socket_id, tuple(r.tags),
                                r.attachment if r.has_attachment else None))
            if chunk.auto_request:
                auto = (chunk.auto_request, chunk.auto_response)
            if chunk.last:
                break
            # Each chunk goes to RocksDB as it arrives, without fsync: memory stays bounded by the
            # chunk size, and the memtable inserts overlap the source reading the next chunk. The
            # staged copy is never served before the synced write below and the directory switch
            # (a partial one is cleared by the next ingest), so it needs no sync of its own.
            engine.db.write(batch, _NO_SYNC)
            batch = rocksdict.WriteBatch(raw_mode=True)
        if oid is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty ingest")
        # Synced (the node's mode): it also syncs the WAL records of the chunks written above, so
        # the whole copy is durable before the ack, on which the source switches the directory.
        engine.write(batch)
        if host.sockets is not None:
            # Before the ack (and so before the directory switch): from the moment this node owns
            # the object, a broadcast reaches every socket, silent ones included.
            host.sockets.install(oid, binding, sockets, auto, new_epoch)
        self.ingested += 1
        if os.environ.get("DURO_MIGRATION_FAULT") == "target_before_ack":
            os._exit(137)  # test-only: the target dies with the copy on disk, before acking
        return migration_pb2.IngestAck(keys=keys, bytes=size)

    async def Drop(self, request, context):  # noqa: N802, ANN001
        host = self.c.host
        assert host is not None
        oid = request.object_id
        entry = self.c.router.cache.lookup(oid.hex()) if len(oid) == 32 else None
        if len(oid) != 32 or (entry is not None and entry.node == self.c.node_id):
            return migration_pb2.DropResponse(dropped=False)  # never drop what we own
        delete_local_copy(host.engine, oid)
        if host.sockets is not None:
            host.sockets.forget_object(oid)
        return migration_pb2.DropResponse(dropped=True)

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
            self.c.membership.set_draining(request.draining)
        return migration_pb2.DrainingResponse(draining=request.draining)

    async def Owned(self, request, context):  # noqa: N802, ANN001
        me = self.c.node_id
        limit = request.limit or 1_000_000
        out = []
        for entry in list(self.c.router.cache._entries.values()):
            if entry.node == me:
                out.append(migration_pb2.Candidate(object_id=bytes.fromhex(entry.object_id),
                                                   binding=entry.binding))
                if len(out) >= limit:
                    break
        return migration_pb2.OwnedResponse(objects=out)


def candidates_of(host, region: str, min_share: float, min_calls: float, limit: int) -> list:  # noqa: ANN001
    """Active objects whose decayed traffic comes mostly from one region other than ours."""
    out = []
    for act in host._acts.values():
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


def _belongs(key: bytes, oid: bytes) -> bool:
    return key == layout.alarm_key(oid) or key.startswith(layout.data_prefix(oid))

