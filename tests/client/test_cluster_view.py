"""``duro top``'s arithmetic (client/cluster_view.py): what it reads from a node's exposition
text, and the p99 of the calls between two samples. The real path (a cluster, the CLI) is
tests/cluster/test_top.py."""

from __future__ import annotations

from duro.client.cluster_view import _p99_ms, parse_metrics

INF = float("inf")

TEXT = """\
# HELP duro_runtime_active_objects objects in memory
# TYPE duro_runtime_active_objects gauge
duro_runtime_active_objects{node="n1"} 7.0
# HELP duro_runtime_binding_calls_total calls delivered to objects, by binding
# TYPE duro_runtime_binding_calls_total counter
duro_runtime_binding_calls_total{binding="COUNTER",node="n1"} 120.0
duro_runtime_binding_calls_total{binding="ROOM",node="n1"} 3.0
# HELP duro_runtime_binding_call_latency_seconds time from admission to the answer, by binding
# TYPE duro_runtime_binding_call_latency_seconds histogram
duro_runtime_binding_call_latency_seconds_bucket{binding="COUNTER",le="0.001",node="n1"} 100.0
duro_runtime_binding_call_latency_seconds_bucket{binding="COUNTER",le="0.002",node="n1"} 119.0
duro_runtime_binding_call_latency_seconds_bucket{binding="COUNTER",le="+Inf",node="n1"} 120.0
"""


def test_parse_keeps_objects_calls_and_latency_by_binding() -> None:
    ns = parse_metrics(TEXT)
    assert ns.values == {"objects": 7.0}
    assert ns.bindings == {"COUNTER": 120.0, "ROOM": 3.0}
    assert ns.latency["COUNTER"] == {0.001: 100.0, 0.002: 119.0, INF: 120.0}


def test_p99_between_samples_and_after_a_restart() -> None:
    first = {0.001: 100.0, 0.002: 119.0, INF: 120.0}
    assert _p99_ms(first, None) == 2.0  # 119 of 120 calls (>= 99 %) took at most 2 ms
    slow = {0.001: 50.0, 0.002: 90.0, INF: 120.0}  # the 99th percentile in the open bucket
    assert _p99_ms(slow, None) == 4.0  # shown as twice the last bound
    later = {0.001: 1100.0, 0.002: 1119.0, INF: 1120.0}  # the 1,000 calls between: all <= 1 ms
    assert _p99_ms(later, first) == 1.0
    restarted = {0.001: 5.0, 0.002: 10.0, INF: 10.0}  # counters went down: count from zero
    assert _p99_ms(restarted, first) == 2.0
    assert _p99_ms({0.001: 0.0, INF: 0.0}, None) is None
    assert _p99_ms(first, first) is None  # no call between the samples
