"""Prometheus metrics of a host node, read from the runtime's counters at scrape time.

Nothing is recorded per call on the hot path: the runtime keeps plain integer counters
(``HostStats``, ``CommitStats``) and this collector turns them into metrics when scraped.
"""

from __future__ import annotations

from itertools import accumulate
from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from duro._metrics import metric_name
from duro.node.directory.store import count_entries
from duro.node.runtime.call_stats import BUCKET_MS, CallStats
from duro.node.runtime.host import _rss_bytes as rss_bytes  # the one /proc reader

if TYPE_CHECKING:
    from duro.node.cluster import NodeCluster
    from duro.node.runtime.host import ObjectHost
    from duro.node.server import NodeServicer

__all__ = ["NodeCollector"]


class NodeCollector(Collector):
    def __init__(self, host: ObjectHost, node_id: str, cluster: NodeCluster | None = None,
                 calls: NodeServicer | None = None) -> None:
        self.host = host
        self.node_id = node_id
        self.cluster = cluster
        self.calls = calls

    def collect(self) -> Iterator[object]:
        h = self.host
        s = h.stats
        c = h.committer.stats
        labels = ["node"]
        node = [self.node_id]

        def counter(sub: str, name: str, doc: str, value: float) -> CounterMetricFamily:
            m = CounterMetricFamily(metric_name(sub, name), doc, labels=labels)
            m.add_metric(node, value)
            return m

        def gauge(sub: str, name: str, doc: str, value: float) -> GaugeMetricFamily:
            m = GaugeMetricFamily(metric_name(sub, name), doc, labels=labels)
            m.add_metric(node, value)
            return m

        yield gauge("runtime", "active_objects", "objects in memory", h.active_count)
        yield counter("runtime", "activations", "objects activated", s.activations)
        yield counter("runtime", "evictions", "objects evicted", s.evictions)
        yield counter("runtime", "events", "events delivered", s.events)
        yield from _binding_calls(self.node_id, h.calls)
        yield gauge("node", "memory_rss_bytes", "resident memory of the node process",
                    rss_bytes())
        yield counter("runtime", "overloaded", "events refused as overloaded", s.overloaded)
        yield counter("runtime", "resets", "objects reset", s.resets)
        yield counter("storage", "commits", "group commits (synced write batches)", c.commits)
        yield counter("storage", "committed_objects", "object batches committed", c.objects)
        yield counter("storage", "committed_writes", "keys written or deleted", c.writes)
        yield counter("storage", "commit_failures", "group commits that failed", c.failures)
        yield counter("runtime", "alarms_fired", "alarm events delivered", h.alarms.fired)
        yield counter("runtime", "alarms_retried", "due alarms retried: object unavailable",
                      h.alarms.retried)
        if self.calls is not None:
            yield gauge("node", "call_bytes_in_flight", "encoded argument bytes of running calls",
                        self.calls.call_bytes_in_flight)
            yield counter("node", "calls_refused_bytes", "calls refused as overloaded: node-wide "
                          "argument bytes in flight at the limit", self.calls.refused_overloaded)
        c = self.cluster
        if c is None:
            return
        r = c.router.stats
        yield counter("client", "directory_cache_hits", "routed calls whose owner was cached",
                      r.cache_hits)
        yield counter("client", "directory_cache_misses", "routed calls that asked placement",
                      r.cache_misses)
        yield counter("client", "redirects", "redirects followed by this node's router",
                      r.redirects)
        yield counter("client", "local_calls", "calls this node's router (its objects' calls, "
                      "its co-located edge) sent to this node in-process, without gRPC", r.local)
        yield gauge("client", "directory_cache_entries", "directory entries cached by this "
                    "node's router (bounded: --directory-cache)", len(c.router.directory))
        d = c.router.directory.stats
        yield counter("client", "directory_resolve_rpcs", "Resolve calls this node's router "
                      "sent to other nodes' partitions", d.rpcs)
        yield counter("client", "directory_resolve_local", "Resolve calls this node's router "
                      "answered from its own partitions (no gRPC)", d.local)
        yield counter("node", "redirects_sent", "calls answered with a redirect to the owner",
                      c.ownership.redirects)
        yield counter("node", "fenced_writes", "write batches refused: ownership lost",
                      c.ownership.fenced_writes)
        m = c.membership
        if m is not None:
            yield counter("node", "lease_renewals", "etcd lease keepalives acknowledged",
                          m.renewals)
            yield counter("node", "self_fencings", "times the node stopped serving: lease "
                          "not renewed in time", m.fencings)
            yield gauge("node", "serving", "1 while the node may serve objects",
                        1 if c.serving else 0)
        mig = c.migration
        yield counter("migration", "moves_released", "objects moved away from this node",
                      mig.moves_released)
        yield counter("migration", "moves_aborted", "moves that left the object here",
                      mig.moves_aborted)
        yield counter("migration", "ingested", "objects received from another node",
                      mig.ingested)
        rep = c.replication
        if rep is None:
            return
        prims = list(rep.primaries.values())
        floor = rep.min_in_sync
        yield gauge("replication", "groups_led", "replica groups this node is the primary of",
                    len(prims))
        yield gauge("replication", "groups_serving", "groups led and reconciled (serving)",
                    sum(1 for p in prims if p.serving))
        yield gauge("replication", "copies", "replica groups this node holds a copy of",
                    sum(1 for r in rep.replicas.values() if r.stored))
        yield gauge("replication", "under_replicated_groups",
                    "groups led here with fewer in-sync copies than members",
                    sum(1 for p in prims if len(p.config.in_sync) < len(p.config.replicas)))
        yield gauge("replication", "write_refusing_groups",
                    "groups led here that refuse writes: below min_in_sync or a member silent",
                    sum(1 for p in prims if len(p.config.in_sync) < floor or p.stalled))
        yield gauge("replication", "pending_batches", "batches cut, waiting for followers",
                    sum(len(p.pending) for p in prims))
        yield counter("replication", "batches_shipped", "batches sent to followers",
                      sum(link.batches for link in rep.links.values()))
        yield counter("replication", "batches_applied", "followers' batches applied here",
                      rep.follower.applied)
        yield counter("replication", "batches_refused", "followers' batches refused here "
                      "(stale, gap, diverged, invalid)", rep.follower.refused)
        yield counter("replication", "snapshots_sent", "snapshots sent to catch a replica up",
                      rep.stats.snapshots)
        yield counter("replication", "snapshot_bytes", "bytes of snapshots sent",
                      rep.stats.snapshot_bytes)
        yield counter("replication", "promotions", "times this node took a primary role",
                      rep.stats.promotions)
        yield counter("replication", "demotions", "times this node gave a primary role up",
                      rep.stats.demotions)
        part = c.partitions
        if part is None:
            return
        served = sorted(g for g, p in rep.primaries.items() if p.serving)
        held = [p for p, gid in part.partitions.items.items() if gid in served]
        yield gauge("directory", "partitions", "directory partitions held by groups served here",
                    len(held))
        yield gauge("directory", "entries", "object entries in the directory partitions held by "
                    "groups served here", sum(count_entries(rep.engine, g) for g in served))
        yield counter("directory", "created", "entries created (objects placed) here",
                      part.created)
        yield counter("directory", "forgotten", "entries removed here (empty objects evicted)",
                      part.forgotten)
        yield counter("directory", "imported", "entries imported from the etcd directory of an "
                      "older version", part.imported)


def _binding_calls(node: str, calls: dict[str, CallStats]) -> Iterator[object]:
    """Calls, failed calls and call latency by binding (``ObjectHost.calls``). The latency
    histogram has no ``_sum``: the runtime keeps bucket counts only (node/runtime/call_stats.py)."""
    total = CounterMetricFamily(metric_name("runtime", "binding_calls"),
                                "calls delivered to objects, by binding", labels=["node", "binding"])
    failed = CounterMetricFamily(metric_name("runtime", "binding_call_errors"),
                                 "calls that ended in an error, by binding",
                                 labels=["node", "binding"])
    latency = HistogramMetricFamily(metric_name("runtime", "binding_call_latency", "seconds"),
                                    "time from admission to the answer, by binding",
                                    labels=["node", "binding"])
    bounds = [*(f"{ms / 1000:g}" for ms in BUCKET_MS), "+Inf"]
    for binding, st in sorted(calls.items()):
        labels = [node, binding]
        total.add_metric(labels, st.calls)
        failed.add_metric(labels, st.errors)
        cumulative = list(accumulate(st.buckets))
        latency.add_metric(labels, list(zip(bounds, cumulative)), sum_value=None)
    yield total
    yield failed
    yield latency
