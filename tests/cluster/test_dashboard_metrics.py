"""Every metric the Grafana dashboard queries (deploy/grafana/dashboards/duro.json) is one that a
real node, edge and placement replica export: scraped from a running cluster, after one HTTP call
(so that per-status and per-binding series exist)."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest

from duro._etcd import free_port
from tests.deploy.test_dashboard import dashboard, expressions

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def _get(url: str, method: str = "GET") -> str:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def exported(text: str) -> set[str]:
    """Series names a scrape offers: samples, and families declared without samples yet (a
    labelled counter before its first label value), with a histogram's _bucket/_sum/_count."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def test_dashboard_queries_only_exported_metrics(make_cluster) -> None:
    port = free_port()
    cluster = await make_cluster(edges=True, regions=("us-east", "eu-west"),
                                 placement_args=("--metrics-port", str(port)))
    await asyncio.to_thread(_get, f"{cluster.edge_url(0)}/counter/dash/increment", "POST")
    texts = [await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics"),
             await asyncio.to_thread(_get, f"{cluster.edge_admin_url(0)}/metrics")]
    for n in cluster.nodes:
        texts.append(await asyncio.to_thread(
            _get, f"http://127.0.0.1:{n.ready['metrics_port']}/metrics"))
    names = set().union(*(exported(t) for t in texts))
    used = {m for e in expressions(dashboard()) for m in re.findall(r"\bduro_[a-z0-9_]+", e)}
    assert len(used) > 30
    assert used <= names, f"the dashboard queries metrics nobody exports: {sorted(used - names)}"
