"""Prometheus metrics of a host node, read from the runtime's counters at scrape time.

Nothing is recorded per call on the hot path: the runtime keeps plain integer counters
(``HostStats``, ``CommitStats``) and this collector turns them into metrics when scraped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from duro._metrics import metric_name

if TYPE_CHECKING:
    from duro.node.runtime.host import ObjectHost

__all__ = ["NodeCollector"]


class NodeCollector(Collector):
    def __init__(self, host: ObjectHost, node_id: str) -> None:
        self.host = host
        self.node_id = node_id

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
        yield counter("runtime", "overloaded", "events refused as overloaded", s.overloaded)
        yield counter("runtime", "resets", "objects reset", s.resets)
        yield counter("storage", "commits", "group commits (synced write batches)", c.commits)
        yield counter("storage", "committed_objects", "object batches committed", c.objects)
        yield counter("storage", "committed_writes", "keys written or deleted", c.writes)
        yield counter("storage", "commit_failures", "group commits that failed", c.failures)
        yield counter("runtime", "alarms_fired", "alarm events delivered", h.alarms.fired)
