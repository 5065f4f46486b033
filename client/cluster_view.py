"""The cluster picture ``duro top`` shows: one :class:`Sample` read from etcd and the nodes'
Prometheus endpoints, and :func:`view` that turns two samples into rates.

What a sample holds, and where it comes from:

* from etcd (:func:`duro.client.admin.status`): nodes with region, zone, load, capacity, the groups
  each leads, draining; the placement leader; replica groups, the under-replicated ones and
  those without a serving primary;
* from each node's ``/metrics`` (its registration names ``metrics_address``): objects in memory,
  resident memory, whether it serves (``duro_node_serving``), events delivered, calls and their
  latency histogram by binding, group commits, replication batches waiting for followers.

A node whose endpoint does not answer within ``timeout`` is shown as ``unreachable`` (its etcd
facts stay). Rates are differences of counters between two samples divided by the time between
them; a counter that went down (the node restarted) counts from zero.

Nothing here writes anything or talks to a node's gRPC port: it costs each node one scrape per
refresh.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from duro.client.admin import status
from duro.topology.etcdkv import etcd_client, get_prefix
from duro.topology.nodes import NodeInfo, nodes_prefix

__all__ = ["Sample", "NodeSample", "sample", "view", "parse_metrics"]

# Node metrics a sample keeps: metric family name -> key.
_GAUGES = {
    "duro_runtime_active_objects": "objects",
    "duro_node_memory_rss_bytes": "memory_bytes",
    "duro_node_serving": "serving",
    "duro_replication_pending_batches": "pending_batches",
}
_COUNTERS = {
    "duro_runtime_events": "events",
    "duro_storage_commits": "commits",
    "duro_node_redirects_sent": "redirects",
}


@dataclass
class NodeSample:
    """What one node's ``/metrics`` said (``error`` set when it could not be read)."""

    values: dict[str, float] = field(default_factory=dict)
    bindings: dict[str, float] = field(default_factory=dict)  # calls by binding (counter)
    # cumulative latency histogram by binding: upper bound in seconds -> calls at most that long
    latency: dict[str, dict[float, float]] = field(default_factory=dict)
    error: str = ""


@dataclass
class Sample:
    at: float  # time.monotonic() when taken
    status: dict[str, Any]  # duro.client.admin.status
    nodes: dict[str, NodeSample]  # by node id


async def sample(etcd: str, cluster: str, *, timeout: float = 2.0) -> Sample:
    """Read the cluster's state now (etcd, then every node's metrics in parallel)."""
    st = await status(etcd, cluster)
    async with etcd_client(etcd) as client:
        infos = [NodeInfo.from_json(v) for _, v in
                 await get_prefix(client, nodes_prefix(cluster))]
    http_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=http_timeout) as http:
        scraped = await asyncio.gather(*(_scrape(http, i.metrics_address) for i in infos))
    return Sample(time.monotonic(), st, {i.node_id: s for i, s in zip(infos, scraped)})


async def _scrape(http: aiohttp.ClientSession, address: str) -> NodeSample:
    if not address:
        return NodeSample(error="no metrics endpoint")
    try:
        async with http.get(f"http://{address}/metrics") as resp:
            if resp.status != 200:
                return NodeSample(error=f"metrics answered HTTP {resp.status}")
            text = await resp.text()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return NodeSample(error=f"unreachable ({type(exc).__name__})")
    return parse_metrics(text)


def parse_metrics(text: str) -> NodeSample:
    """The values a sample keeps, from a node's Prometheus exposition text."""
    out = NodeSample()
    for family in text_string_to_metric_families(text):
        key = _GAUGES.get(family.name) or _COUNTERS.get(family.name)
        for s in family.samples:
            if key is not None and s.name in (family.name, family.name + "_total"):
                out.values[key] = out.values.get(key, 0.0) + s.value
            elif family.name == "duro_runtime_binding_calls" and s.name.endswith("_total"):
                b = s.labels.get("binding", "")
                out.bindings[b] = out.bindings.get(b, 0.0) + s.value
            elif (family.name == "duro_runtime_binding_call_latency_seconds"
                  and s.name.endswith("_bucket")):
                h = out.latency.setdefault(s.labels.get("binding", ""), {})
                le = float(s.labels["le"])
                h[le] = h.get(le, 0.0) + s.value
    return out


def _p99_ms(cur: dict[float, float], prev: dict[float, float] | None) -> float | None:
    """The 99th percentile (ms, a bucket's upper bound) of the calls between two cumulative
    histograms (all calls so far without ``prev``, or when a node restarted)."""
    if prev and all(cur.get(le, 0.0) >= n for le, n in prev.items()):
        hist = {le: n - prev.get(le, 0.0) for le, n in cur.items()}
    else:
        hist = dict(cur)
    bounds = sorted(hist)
    if not bounds or hist[bounds[-1]] <= 0:
        return None
    want = 0.99 * hist[bounds[-1]]
    le = next(le for le in bounds if hist[le] >= want)
    if le == float("inf"):  # past the last bound: shown as twice it (as call_stats.percentile)
        le = 2 * bounds[-2] if len(bounds) > 1 else float("inf")
    return le * 1000.0


def _sum_hist(samples: list[NodeSample], binding: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for ns in samples:
        for le, n in ns.latency.get(binding, {}).items():
            out[le] = out.get(le, 0.0) + n
    return out


def _rate(now: float, before: float | None, seconds: float) -> float | None:
    if before is None or seconds <= 0:
        return None
    return max(0.0, now - before if now >= before else now) / seconds


def view(cur: Sample, prev: Sample | None = None) -> dict[str, Any]:
    """The picture as plain data (what ``duro top --json`` prints and the screen shows).

    Rates (per second) are ``None`` without a previous sample.
    """
    st = cur.status
    seconds = cur.at - prev.at if prev is not None else 0.0
    regions: dict[str, dict[str, list[dict[str, Any]]]] = {}
    bindings: dict[str, dict[str, float | None]] = {}
    for n in st["nodes"]:
        ns = cur.nodes.get(n["node_id"], NodeSample(error="not registered"))
        old = prev.nodes.get(n["node_id"]) if prev is not None else None
        v = ns.values
        if ns.error:
            health = "unreachable" if ns.error.startswith(("unreachable", "metrics")) else "unknown"
        elif n["draining"]:
            health = "draining"
        elif v.get("serving", 1) < 1:
            health = "fenced"
        else:
            health = "serving"
        row = {
            "node_id": n["node_id"], "address": n["address"], "health": health,
            "error": ns.error, "load": n["load"], "capacity": n["capacity"],
            "objects": int(v["objects"]) if "objects" in v else None,
            "memory_bytes": int(v["memory_bytes"]) if "memory_bytes" in v else None,
            "pending_batches": int(v.get("pending_batches", 0)),
            "leads": n["leads"],
            "events_per_s": _rate(v.get("events", 0.0),
                                  old.values.get("events") if old and not old.error else None,
                                  seconds) if not ns.error else None,
            "commits_per_s": _rate(v.get("commits", 0.0),
                                   old.values.get("commits") if old and not old.error else None,
                                   seconds) if not ns.error else None,
        }
        regions.setdefault(n["region"], {}).setdefault(n["zone"] or "-", []).append(row)
        for b, total in ns.bindings.items():
            agg = bindings.setdefault(b, {"calls": 0.0, "per_s": None})
            agg["calls"] = (agg["calls"] or 0.0) + total
            before = old.bindings.get(b, 0.0) if old is not None and not old.error else None
            r = _rate(total, before, seconds)
            if r is not None:
                agg["per_s"] = (agg["per_s"] or 0.0) + r
    live = [ns for ns in cur.nodes.values() if not ns.error]
    before = [ns for ns in prev.nodes.values() if not ns.error] if prev is not None else []
    for b, agg in bindings.items():
        agg["p99_ms"] = _p99_ms(_sum_hist(live, b), _sum_hist(before, b) if before else None)
    return {
        "cluster": st["cluster"],
        "leader": (st["leader"] or {}).get("id"),
        "replication": st["replication"],
        "regions": regions,
        "groups": len(st["groups"]),
        "under_replicated_groups": st["under_replicated_groups"],
        "groups_without_primary": st["groups_without_primary"],
        "bindings": {b: {"calls": int(a["calls"] or 0), "per_s": a["per_s"],
                         "p99_ms": a["p99_ms"]}
                     for b, a in sorted(bindings.items())},
        "interval_s": round(seconds, 3) if prev is not None else None,
    }
