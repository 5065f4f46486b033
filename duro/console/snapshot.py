"""One picture of the cluster as plain dicts: etcd's view plus a sample of every node.

:func:`cluster_snapshot` reads etcd (nodes, replica groups, the placement leader: the same
reads as ``duro status``, O(nodes + partitions)) and asks every live node for
``NodeInspect.Sample`` in parallel (one small RPC each, bounded by ``timeout``; a node that does
not answer is shown with ``"sample": None`` and its error). :func:`rates` turns two snapshots into
calls per second and latency percentiles per binding and per node. Nothing here keeps state but
the channels of :class:`NodeSampler`; the console's feed (feed.py) and ``duro top`` call these.

The returned dict (every value JSON-ready)::

    {"at": wall-clock s, "cluster", "leader": {...} | None, "replication": {...},
     "regions": [{"region", "zones": [{"zone", "nodes": [node, ...]}]}],
     "nodes": [node, ...], "groups": [...], "under_replicated_groups": [gid],
     "groups_without_primary": [gid], "draining_nodes": [id], "bucket_ms": [...],
     "moving": [{"object_id", "node"}], "recent_moves": [move, ...]}

    node = {"node_id", "address", "region", "zone", "load", "capacity", "leads": [gid],
            "draining", "healthy", "sample": {"rss_bytes", "memory_budget_bytes",
            "active_objects", "open_sockets", "events", "serving", "started_at",
            "bindings": {name: {"calls", "errors", "buckets"}}} | None, "error": str}
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from etcd3aio import Etcd3Client

from duro._pb import inspect_pb2, inspect_pb2_grpc
from duro.client.admin import read_status
from duro.node.runtime.call_stats import BUCKET_MS, percentile
from duro.topology.etcdkv import _PROCESS

__all__ = ["NodeSampler", "cluster_snapshot", "rates", "move_dict"]


def move_dict(m: inspect_pb2.MoveRecord) -> dict[str, Any]:
    return {"at": round(m.at, 3), "object_id": m.object_id.hex(), "binding": m.binding,
            "from": m.from_node, "to": m.to_node, "epoch": m.epoch, "outcome": m.outcome,
            "held_ms": round(m.held_ms, 2), "detail": m.detail}


class NodeSampler:
    """Long-lived channels to the nodes' ``NodeInspect`` service (one per address), with the
    process's certificate (or ``tls``). ``async with`` or :meth:`close`."""

    def __init__(self, *, tls: Any = _PROCESS, timeout: float = 2.0) -> None:
        self._tls = tls
        self.timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> inspect_pb2_grpc.NodeInspectStub:
        ch = self._channels.get(address)
        if ch is None:
            from duro import tls as _tls

            ch = self._channels[address] = (
                _tls.channel(address) if self._tls is _PROCESS
                else _tls.channel(address, tls=self._tls))
        return inspect_pb2_grpc.NodeInspectStub(ch)

    async def sample(self, address: str) -> inspect_pb2.SampleResponse:
        return await self.stub(address).Sample(inspect_pb2.SampleRequest(),
                                               timeout=self.timeout)

    async def inspect(self, address: str, oid: bytes) -> inspect_pb2.InspectResponse:
        return await self.stub(address).Inspect(inspect_pb2.InspectRequest(object_id=oid),
                                                timeout=self.timeout)

    def forget(self, live: set[str]) -> None:
        """Close the channels of addresses no longer live."""
        for address in [a for a in self._channels if a not in live]:
            ch = self._channels.pop(address)
            asyncio.get_running_loop().create_task(ch.close())

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

    async def __aenter__(self) -> NodeSampler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _sample_dict(r: inspect_pb2.SampleResponse) -> dict[str, Any]:
    return {
        "rss_bytes": r.rss_bytes, "memory_budget_bytes": r.memory_budget_bytes,
        "active_objects": r.active_objects, "open_sockets": r.open_sockets,
        "events": r.events, "serving": r.serving, "started_at": r.started_at,
        "bindings": {b.binding: {"calls": b.calls, "errors": b.errors, "buckets": list(b.buckets)}
                     for b in r.bindings},
    }


async def cluster_snapshot(client: Etcd3Client, cluster: str,
                           sampler: NodeSampler | None = None) -> dict[str, Any]:
    """The cluster now (module docstring); without ``sampler``, etcd's view only."""
    snap = await read_status(client, cluster, partitions=False)
    snap["at"] = round(time.time(), 3)
    snap["bucket_ms"] = [*BUCKET_MS, None]  # None: the open bucket above the last bound
    nodes = snap["nodes"]
    moving: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    if sampler is not None:
        answers = await asyncio.gather(*(sampler.sample(n["address"]) for n in nodes),
                                       return_exceptions=True)
        sampler.forget({n["address"] for n in nodes})
        for n, r in zip(nodes, answers):
            if isinstance(r, BaseException):
                n["sample"] = None
                n["error"] = (f"{r.code().name}: {r.details()}" if isinstance(r, grpc.RpcError)
                              else repr(r))
                continue
            n["sample"] = _sample_dict(r)
            moving.extend({"object_id": oid.hex(), "node": n["node_id"]} for oid in r.moving)
            recent.extend(move_dict(m) for m in r.recent_moves)
    serving = {g["gid"]: g["serving"] for g in snap["groups"]}
    for n in nodes:
        # Healthy: it answers and serves (when sampled), and every group it leads has a serving
        # primary (docs/replication.md).
        sample = n.get("sample")
        answers = bool(sample and sample["serving"]) if sampler is not None else True
        n["healthy"] = answers and all(serving.get(gid, False) for gid in n["leads"])
    recent.sort(key=lambda m: m["at"])
    snap["moving"], snap["recent_moves"] = moving, recent
    regions: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for n in nodes:
        regions.setdefault(n["region"], {}).setdefault(n["zone"], []).append(n)
    snap["regions"] = [{"region": r, "zones": [{"zone": z, "nodes": ns}
                                               for z, ns in sorted(zones.items())]}
                       for r, zones in sorted(regions.items())]
    return snap


def _delta(cur: list[int], prev: list[int] | None) -> list[int]:
    if prev is None or len(prev) != len(cur):
        return list(cur)
    return [max(0, a - b) for a, b in zip(cur, prev)]


def _summary(calls: int, errors: int, buckets: list[int], seconds: float) -> dict[str, Any]:
    return {"calls_per_s": round(calls / seconds, 2) if seconds > 0 else 0.0,
            "errors_per_s": round(errors / seconds, 2) if seconds > 0 else 0.0,
            "p50_ms": percentile(buckets, 0.50), "p95_ms": percentile(buckets, 0.95),
            "p99_ms": percentile(buckets, 0.99)}


def rates(prev: dict[str, Any] | None, cur: dict[str, Any]) -> dict[str, Any]:
    """Calls per second, errors per second and latency percentiles (p50/p95/p99, ms: the bucket
    bound) between two snapshots, per binding (all nodes) and per node: ``{"seconds",
    "bindings": {name: summary}, "nodes": {node_id: {"calls_per_s"}}}``. A node restarted
    between the two (counters went down) counts from zero."""
    seconds = cur["at"] - prev["at"] if prev else 0.0
    before = {n["node_id"]: n.get("sample") for n in (prev or {}).get("nodes", [])}
    per_binding: dict[str, list[Any]] = {}
    per_node: dict[str, dict[str, Any]] = {}
    for n in cur["nodes"]:
        sample = n.get("sample")
        if not sample:
            continue
        old = before.get(n["node_id"]) or {}
        old_b = old.get("bindings", {}) if old.get("started_at") == sample["started_at"] else {}
        node_calls = 0
        for name, b in sample["bindings"].items():
            o = old_b.get(name)
            calls = b["calls"] - o["calls"] if o and b["calls"] >= o["calls"] else b["calls"]
            errors = b["errors"] - o["errors"] if o and b["errors"] >= o["errors"] else 0
            acc = per_binding.setdefault(name, [0, 0, [0] * len(b["buckets"])])
            acc[0] += calls
            acc[1] += errors
            acc[2] = [x + y for x, y in zip(acc[2], _delta(b["buckets"],
                                                         o["buckets"] if o else None))]
            node_calls += calls
        per_node[n["node_id"]] = {
            "calls_per_s": round(node_calls / seconds, 2) if seconds > 0 else 0.0}
    return {"seconds": round(seconds, 3),
            "bindings": {k: _summary(c, e, bk, seconds)
                         for k, (c, e, bk) in sorted(per_binding.items())},
            "nodes": per_node}
