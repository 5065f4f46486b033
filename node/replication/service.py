"""``duro.v1.Replication`` on a host node: the gRPC adapter over the node's
:class:`~duro.node.replication.follower.Follower` (fences, snapshots) and primaries (handovers).
Batches travel on the replication stream instead (listener.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, AsyncIterator, Callable

import grpc
from grpc import aio

from duro._pb import replication_pb2, replication_pb2_grpc
from duro.errors import InvalidArgumentError
from duro.node.replication.follower import StaleSender

if TYPE_CHECKING:
    from duro.node.replication.manager import ReplicationManager

__all__ = ["ReplicationServicer"]

log = logging.getLogger("duro.node.replication")


class ReplicationServicer(replication_pb2_grpc.ReplicationServicer):
    """Answers UNAVAILABLE until the node's replication has started (``manager`` is None)."""

    def __init__(self, manager: Callable[[], ReplicationManager | None]) -> None:
        self._manager = manager

    def add_to(self, server: aio.Server) -> None:
        replication_pb2_grpc.add_ReplicationServicer_to_server(self, server)

    async def _mgr(self, context: aio.ServicerContext) -> ReplicationManager:
        mgr = self._manager()
        if mgr is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replication is not running yet")
        return mgr  # type: ignore[return-value]

    async def Fence(  # noqa: N802
        self, request: replication_pb2.FenceRequest, context: aio.ServicerContext,
    ) -> replication_pb2.FenceResponse:
        mgr = await self._mgr(context)
        if not request.gid or not request.epoch:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "gid and epoch are required")
        return await mgr.follower.fence(request.gid, request.epoch)

    async def Handover(  # noqa: N802
        self, request: replication_pb2.HandoverRequest, context: aio.ServicerContext,
    ) -> replication_pb2.HandoverResponse:
        mgr = await self._mgr(context)
        prim = mgr.serving(request.gid)
        if prim is None:
            return replication_pb2.HandoverResponse(
                done=False, detail=f"this node does not serve group {request.gid}")
        why = await prim.handover(request.target, request.target_lease)
        return replication_pb2.HandoverResponse(done=why is None, detail=why or "")

    async def Install(  # noqa: N802
        self, request_iterator: AsyncIterator[replication_pb2.InstallChunk],
        context: aio.ServicerContext,
    ) -> replication_pb2.InstallAck:
        mgr = await self._mgr(context)
        try:
            seq = await mgr.follower.install(request_iterator.__aiter__())
        except StaleSender as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except InvalidArgumentError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return replication_pb2.InstallAck(storage_id=mgr.engine.storage_id, seq=seq)
