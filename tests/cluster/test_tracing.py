"""Tracing through a real cluster: one HTTP increment at an edge has spans from the edge, the
node, its storage commit and the commit's replication, all in one trace (docs/observability.md).

Every process of the cluster (separate processes: etcd, placement, nodes, edges) is started with
``DURO_TRACING=jsonl:<file>`` and appends the spans it ends to that one file; the test reads it.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from duro import _tracing
from duro._pb import gateway_pb2, gateway_pb2_grpc
from duro.client.admin import migrate
from duro.errors import InvalidArgumentError
from tests.cluster.conftest import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _eventually(path: Path, check: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        spans = _spans(path)
        if check(spans):
            return spans
        if time.monotonic() > deadline:
            names = sorted({(s["service"], s["name"]) for s in spans})
            raise AssertionError(f"spans never matched; got {names}")
        await asyncio.sleep(0.2)


def _post(url: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


async def test_one_http_increment_is_one_trace_across_processes(make_cluster, tmp_path,
                                                                monkeypatch) -> None:
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(_tracing.ENV, f"jsonl:{spans_file}")
    cluster = await make_cluster(edges=True, regions=("us-east", "eu-west"),
                                 placement_args=("--rebalance", "false"))
    status, body = await asyncio.to_thread(
        _post, f"{cluster.edge_url(0)}/counter/traced/increment")
    assert status == 200, body

    def complete(spans: list[dict[str, Any]]) -> bool:
        edge = [s for s in spans if s["service"] == "duro-edge" and s["name"] == "edge POST"
                and s["attributes"].get("url.path") == "/counter/traced/increment"]
        if not edge:
            return False
        trace = [s for s in spans if s["trace_id"] == edge[0]["trace_id"]]
        names = {s["name"] for s in trace}
        return {"storage commit", "replication ship"} <= names

    spans = await _eventually(spans_file, complete)
    edge = next(s for s in spans if s["name"] == "edge POST"
                and s["attributes"].get("url.path") == "/counter/traced/increment")
    trace = {s["span_id"]: s for s in spans if s["trace_id"] == edge["trace_id"]}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in trace.values():
        by_name.setdefault(s["name"], []).append(s)
    # One client call from the edge to the node, answered by one node span: parent to child.
    client = by_name["call COUNTER.FETCH"]
    assert all(c["service"] == "duro-edge" and c["kind"] == "client" for c in client)
    node = by_name["node COUNTER.FETCH"]
    assert len(node) == 1 and node[0]["service"] == "duro-node" and node[0]["kind"] == "server"
    assert trace[node[0]["parent_id"]]["name"] == "call COUNTER.FETCH"
    assert trace[trace[node[0]["parent_id"]]["parent_id"]] is edge
    # The increment's write: the node's commit is a child of the node's span, its replication
    # (3 copies: followers on the other nodes) a child of the commit.
    commit = by_name["storage commit"][0]
    assert commit["service"] == "duro-node" and commit["instance"] == node[0]["instance"]
    assert commit["parent_id"] == node[0]["span_id"]
    assert commit["attributes"]["duro.commit.writes"] >= 1
    ship = by_name["replication ship"][0]
    assert ship["parent_id"] == commit["span_id"] and ship["status"] == "unset"
    # Nested in time as on the wire: the edge's span holds the node's, which holds the commit.
    assert edge["start_ns"] <= node[0]["start_ns"] <= commit["start_ns"]
    assert commit["end_ns"] <= node[0]["end_ns"] <= edge["end_ns"]
    assert edge["attributes"]["http.response.status_code"] == 200

    # Through the gRPC Gateway, joining the caller's own trace (W3C traceparent in metadata).
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with grpc.aio.insecure_channel(cluster.edges[0].ready["grpc"]) as ch:
        r = await gateway_pb2_grpc.GatewayStub(ch).Invoke(
            gateway_pb2.InvokeRequest(binding="COUNTER", name="traced", method="increment"),
            metadata=(("authorization", f"Bearer {cluster.gateway_token}"),
                      ("traceparent", f"00-{trace_id}-{caller_span}-01")), timeout=30)
    assert r.result_json == "2", r

    def joined(spans: list[dict[str, Any]]) -> bool:
        return {"gateway Invoke", "node COUNTER.increment", "storage commit"} <= {
            s["name"] for s in spans if s["trace_id"] == trace_id}

    gw = {s["name"]: s for s in await _eventually(spans_file, joined)
          if s["trace_id"] == trace_id}
    assert gw["gateway Invoke"]["parent_id"] == caller_span
    assert gw["gateway Invoke"]["service"] == "duro-edge"
    assert gw["node COUNTER.increment"]["service"] == "duro-node"

    # A migration of that object: one span for the move and one per step, at the source node.
    res = await migrate(cluster.etcd.endpoint, cluster.cluster, str(ROOT / "examples"),
                        "COUNTER", "traced", to_region="eu-west")
    assert res["outcome"] == "released"

    def moved(spans: list[dict[str, Any]]) -> bool:
        return any(s["name"] == "migration" for s in spans)

    spans = await _eventually(spans_file, moved)
    move = next(s for s in spans if s["name"] == "migration")
    assert move["attributes"]["duro.migration.outcome"] == "released"
    steps = {s["name"] for s in spans if s["parent_id"] == move["span_id"]}
    assert {"migration HoldAdmission", "migration SendSnapshot", "migration SwitchEntry",
            "migration Release"} <= steps, steps


async def test_colocated_edge_call_is_one_trace(make_cluster, tmp_path, monkeypatch) -> None:
    """A node that is its region's edge too (``duro node --edge``) calls its own objects without
    the wire (``NodeServicer.invoke_local``, a fresh context): the node's span is still the
    child of the edge's."""
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(_tracing.ENV, f"jsonl:{spans_file}")
    cluster = await make_cluster(edges=True, colocated_edges=True, regions=("us-east", "eu-west"),
                                 placement_args=("--rebalance", "false"))
    status, body = await asyncio.to_thread(
        _post, f"{cluster.edge_url(0)}/counter/colocated/increment")
    assert status == 200, body

    def complete(spans: list[dict[str, Any]]) -> bool:
        edge = [s for s in spans if s["name"] == "edge POST"]
        return bool(edge) and any(s["name"] == "storage commit" and s["trace_id"] ==
                                  edge[0]["trace_id"] for s in spans)

    spans = await _eventually(spans_file, complete)
    edge = next(s for s in spans if s["name"] == "edge POST")
    trace = {s["span_id"]: s for s in spans if s["trace_id"] == edge["trace_id"]}
    node = next(s for s in trace.values() if s["name"] == "node COUNTER.FETCH")
    commit = next(s for s in trace.values() if s["name"] == "storage commit")
    assert commit["parent_id"] == node["span_id"]
    ancestors, span = [], node
    while span["parent_id"] in trace:
        span = trace[span["parent_id"]]
        ancestors.append(span["name"])
    assert ancestors[-1] == "edge POST", ancestors  # directly, or through a client span
    assert edge["service"] == "duro-node"  # the edge runs in the node's process


def test_tracing_is_off_unless_configured_and_bad_settings_are_refused(monkeypatch) -> None:
    monkeypatch.delenv(_tracing.ENV, raising=False)
    assert _tracing.configure("duro-test") is False
    assert _tracing.tracer is None
    for bad in ("yes please", "jsonl:", "otlp:grpc"):
        with pytest.raises(InvalidArgumentError, match="DURO_TRACING"):
            _tracing.parse_setting(bad)
    assert _tracing.parse_setting("OFF") == ("off", "")
    assert _tracing.parse_setting("jsonl:/tmp/x") == ("jsonl", "/tmp/x")
