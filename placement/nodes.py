"""The live-node view of the placement service: etcd membership, followed by watch.

A node is live while its leased key ``/duro/<cluster>/nodes/<id>`` exists (see
``duro.node.membership``). The set is small (one entry per node), so on any watch interruption
the view simply re-reads the prefix and watches again from that read's revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end

from duro.node.membership import NodeInfo, nodes_prefix

__all__ = ["NodeView"]

log = logging.getLogger("duro.placement.nodes")

_ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)


class NodeView:
    """``nodes`` maps node id -> :class:`NodeInfo` for every registered (live) node."""

    def __init__(
        self,
        client: Etcd3Client,
        cluster: str,
        *,
        on_update: Callable[[str, NodeInfo | None], None] | None = None,
    ) -> None:
        self._client = client
        self.prefix = nodes_prefix(cluster)
        self.nodes: dict[str, NodeInfo] = {}
        self._on_update = on_update
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def live(self) -> list[NodeInfo]:
        return list(self.nodes.values())

    async def start(self, timeout: float | None = 30.0) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="placement-node-view")
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _set(self, node_id: str, info: NodeInfo | None) -> None:
        if info is None:
            if self.nodes.pop(node_id, None) is None:
                return
        else:
            self.nodes[node_id] = info
        if self._on_update is not None:
            self._on_update(node_id, info)

    async def _follow(self) -> None:
        end = prefix_range_end(self.prefix)
        n = len(self.prefix)
        while True:
            try:
                resp = await self._client.kv.get(self.prefix, end, timeout=5.0)
                seen = {}
                for kv in resp.kvs:
                    with contextlib.suppress(ValueError, KeyError):
                        seen[kv.key.decode()[n:]] = NodeInfo.from_json(kv.value)
                for gone in set(self.nodes) - set(seen):
                    self._set(gone, None)
                for node_id, info in seen.items():
                    self._set(node_id, info)
                self._ready.set()
                stream = self._client.watch.watch(
                    self.prefix, end, start_revision=int(resp.header.revision) + 1
                )
                created = False
                async with contextlib.aclosing(stream):
                    async for w in stream:
                        if w.compact_revision > 0 or w.canceled or (w.created and created):
                            break  # re-read: cheap for a handful of nodes
                        created = created or w.created
                        for ev in w.events:
                            node_id = ev.kv.key.decode()[n:]
                            if ev.type == 1:
                                self._set(node_id, None)
                            else:
                                with contextlib.suppress(ValueError, KeyError):
                                    self._set(node_id, NodeInfo.from_json(ev.kv.value))
            except _ETCD_ERRORS as exc:
                log.warning("node view: etcd error %r; re-reading", exc)
                await asyncio.sleep(0.2)
