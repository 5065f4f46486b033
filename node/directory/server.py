"""``duro.v1.Directory`` on a host node: the gRPC adapter over its
:class:`~duro.node.directory.service.PartitionService` (translation only)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

import grpc
from grpc import aio

from duro._pb import directory_pb2, directory_pb2_grpc
from duro.errors import DuroError, InvalidArgumentError
from duro.node.directory.service import NotHere, Unassigned
from duro.topology.directory_entry import Entry

if TYPE_CHECKING:
    from duro.node.directory.service import PartitionService
    from duro.topology.nodes import NodeView

__all__ = ["DirectoryServicer"]

log = logging.getLogger("duro.node.directory")

MAX_ITEMS = 4096


class DirectoryServicer(directory_pb2_grpc.DirectoryServicer):
    def __init__(self, service: Callable[[], PartitionService | None],
                 nodes: Callable[[], NodeView | None]) -> None:
        self._service = service
        self._nodes = nodes

    def add_to(self, server: aio.Server) -> None:
        directory_pb2_grpc.add_DirectoryServicer_to_server(self, server)

    async def _svc(self, context: aio.ServicerContext) -> PartitionService:
        svc = self._service()
        if svc is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the directory is not running yet")
        return svc  # type: ignore[return-value]

    def _fail(self, out: directory_pb2.ResolveResult, exc: BaseException) -> None:
        if isinstance(exc, NotHere):
            out.error_code, out.owner_node = "not_here", exc.node
            nodes = self._nodes()
            info = nodes.nodes.get(exc.node) if nodes is not None and exc.node else None
            out.owner_address = info.address if info is not None else ""
        elif isinstance(exc, Unassigned):
            out.error_code = "unassigned"
        elif isinstance(exc, InvalidArgumentError):
            out.error_code = "invalid"
        else:
            out.error_code = "unavailable"
        out.error = str(exc)

    async def Resolve(self, request, context):  # noqa: N802, ANN001, ANN201
        svc = await self._svc(context)
        if len(request.items) > MAX_ITEMS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at most {MAX_ITEMS} items per call")
        return await self._resolve(svc, request)

    async def resolve_here(self, request: directory_pb2.ResolveRequest
                           ) -> directory_pb2.ResolveResponse | None:
        """``Resolve`` for this node's own router, without gRPC (its partitions' lookups on the
        way to activating an object); None if the directory is not running yet."""
        svc = self._service()
        if svc is None:
            return None
        return await self._resolve(svc, request)

    async def _resolve(self, svc: PartitionService, request: directory_pb2.ResolveRequest
                       ) -> directory_pb2.ResolveResponse:
        results = await svc.resolve_many([
            (i.object_id, i.binding, i.create, i.caller_region, i.location_hint)
            for i in request.items])
        resp = directory_pb2.ResolveResponse()
        for r in results:
            out = resp.results.add()
            if isinstance(r, (NotHere, Unassigned, DuroError)):
                self._fail(out, r)
            elif isinstance(r, Exception):
                log.warning("directory resolve failed: %r", r)
                self._fail(out, r)
            elif r is not None:
                out.found = True
                r.to_pb(out.entry)
        return resp

    async def Switch(self, request, context):  # noqa: N802, ANN001, ANN201
        svc = await self._svc(context)
        out = directory_pb2.SwitchResponse()
        try:
            switched, entry = await svc.switch(
                request.object_id, request.expected_group, request.expected_epoch,
                request.new_group, request.new_region)
        except (NotHere, Unassigned, DuroError) as exc:
            tmp = directory_pb2.ResolveResult()
            self._fail(tmp, exc)
            out.error_code, out.error = tmp.error_code, tmp.error
            return out
        out.switched = switched
        if entry is not None:
            out.found = True
            entry.to_pb(out.entry)
        return out

    async def Forget(self, request, context):  # noqa: N802, ANN001, ANN201
        svc = await self._svc(context)

        async def one(item) -> bool:  # noqa: ANN001
            try:
                return await svc.forget(item.object_id, item.group, item.epoch)
            except (NotHere, Unassigned, DuroError):
                return False

        return directory_pb2.ForgetResponse(
            forgotten=await asyncio.gather(*(one(i) for i in request.items)))

    async def Import(self, request, context):  # noqa: N802, ANN001, ANN201
        svc = await self._svc(context)
        out = directory_pb2.ImportResponse()

        async def one(pb) -> None:  # noqa: ANN001
            try:
                created = await svc.import_entry(Entry.from_pb(pb))
            except (NotHere, Unassigned, DuroError) as exc:
                out.errors.append(f"{pb.object_id.hex()[:16]}: {exc}")
                return
            if created:
                out.created += 1
            else:
                out.existing += 1

        await asyncio.gather(*(one(pb) for pb in request.entries))
        return out
