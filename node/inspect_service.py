"""``duro.v1.NodeInspect`` on a host node: what an operator's console reads (docs/console.md).

``Sample`` describes the node (memory, objects in memory, sockets, calls and latency per binding,
recent and running moves); ``Inspect`` one object this node owns (storage, alarm, sockets, access
counts by region, move history). Both only read: the counters the runtime keeps anyway, and a
few RocksDB reads for ``Inspect`` (one key scan bounded by ``max_keys``). Who may call them:
node/access.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from grpc import aio

from duro._pb import inspect_pb2, inspect_pb2_grpc
from duro.node.migration import history
from duro.node.runtime.call_stats import BUCKET_MS
from duro.node.runtime.host import _rss_bytes
from duro.node.storage import layout, usage
from duro.node.storage.alarm_record import decode_alarm

if TYPE_CHECKING:
    from duro.node.cluster import NodeCluster

__all__ = ["InspectServicer"]

MAX_KEYS = 1_000_000


class InspectServicer(inspect_pb2_grpc.NodeInspectServicer):
    def __init__(self, cluster: NodeCluster) -> None:
        self.c = cluster

    def add_to(self, server: aio.Server) -> None:
        inspect_pb2_grpc.add_NodeInspectServicer_to_server(self, server)

    async def Sample(self, request, context):  # noqa: N802, ANN001
        c, host = self.c, self.c.host
        out = inspect_pb2.SampleResponse(
            node_id=c.node_id, region=c.config.region, zone=c.config.zone,
            serving=c.serving, bucket_ms=[*BUCKET_MS, float("inf")])
        if c.membership is not None:
            out.draining = c.membership.info.draining
            out.started_at = c.membership.info.started_at
        out.recent_moves.extend(c.migration.recent)
        if host is None:
            return out
        out.rss_bytes = _rss_bytes()
        out.memory_budget_bytes = host.config.memory_budget_mb * 1024 * 1024
        out.active_objects = host.active_count
        out.events = host.stats.events
        out.open_sockets = host.sockets.socket_count if host.sockets is not None else 0
        for name, st in sorted(host.calls.items()):
            out.bindings.add(binding=name, calls=st.calls, errors=st.errors, buckets=st.buckets)
        out.moving.extend(host.holds)
        return out

    async def Inspect(self, request, context):  # noqa: N802, ANN001
        oid = request.object_id
        if len(oid) != 32:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "object_id must be 32 bytes")
        c, host = self.c, self.c.host
        rep = c.replication
        if host is None or rep is None:
            return inspect_pb2.InspectResponse(owned=False)
        entry = await c.router.directory.resolve(oid, create=False, fresh=True)
        if entry is None or rep.serving(entry.group) is None:
            return inspect_pb2.InspectResponse(owned=False)
        gid, engine = entry.group, host.engine
        out = inspect_pb2.InspectResponse(
            owned=True, binding=entry.binding, group=gid, epoch=entry.epoch,
            region=entry.region, moving=oid in host.holds)
        cap = request.max_keys or MAX_KEYS
        prefix = layout.data_prefix(gid, oid)
        for _ in engine.scan(prefix, layout.prefix_end(prefix)):
            if out.keys >= cap:
                out.keys_capped = True
                break
            out.keys += 1
        raw = engine.get(layout.usage_key(gid, oid))
        out.stored_bytes = usage.decode(raw) if raw else 0
        alarm = engine.get(layout.alarm_key(gid, oid))
        if alarm is not None:
            out.has_alarm, out.alarm_at = True, decode_alarm(alarm).when_ms / 1000.0
        if host.sockets is not None:
            sockets = host.sockets.objects.get(oid)
            out.sockets = len(sockets.sockets) if sockets is not None else 0
        act = host.activation(oid)
        if act is not None:
            out.active = True
            for region, calls in sorted((act.regions or {}).items()):
                out.regions.add(region=region, calls=calls)
        for at, src, dst, epoch, *_ in history.decode(engine.get(layout.history_key(gid, oid))):
            out.history.add(at=float(at), from_node=str(src), to_node=str(dst), epoch=int(epoch),
                            outcome="released", binding=entry.binding, object_id=oid)
        return out
