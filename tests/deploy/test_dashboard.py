"""The Grafana dashboard (deploy/grafana/dashboards/duro.json) loads: a well-formed dashboard
model, panels on Grafana's 24-column grid without overlap, every query on the datasource that the
provisioning defines, PromQL that Prometheus' own parser accepts (``promtool check rules``), and
scrape jobs in deploy/prometheus/prometheus.yml that the dashboard's ``job`` filter matches.

Which metric names the queries may use is checked against real processes in
tests/cluster/test_dashboard_metrics.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "duro.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "duro.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "table", "bargauge", "text"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def expressions(d: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in d["panels"] for t in p.get("targets", [])]


def test_dashboard_model_is_well_formed() -> None:
    d = dashboard()
    for key, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list),
                      ("time", dict), ("templating", dict), ("refresh", str)):
        assert isinstance(d.get(key), kind), f"dashboard.{key} must be a {kind.__name__}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]), "Grafana uids: 40 chars of [A-Za-z0-9_-]"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], int] = {}
    for p in d["panels"]:
        assert p["type"] in PANEL_TYPES, p["type"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) and g[k] >= 0 for k in "hwxy") and g["h"] and g["w"]
        assert g["x"] + g["w"] <= 24, f"panel {p['title']!r} runs past the 24-column grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {p['id']} overlap"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["title"] and p["targets"], f"panel {p['id']} has no title or no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"panel {p['title']!r}: refIds must be unique"
    names = [v["name"] for v in d["templating"]["list"]]
    for expr in expressions(d):
        for var in re.findall(r"\$(\w+)", expr):
            assert var in names or var.startswith("__"), f"{expr}: no variable ${var}"


def test_queries_use_the_provisioned_datasource_and_the_scrape_jobs() -> None:
    d = dashboard()
    ds = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert [x["type"] for x in ds] == ["prometheus"] and ds[0]["url"] == "http://prometheus:9090"
    uid = ds[0]["uid"]
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
        assert all(t["datasource"]["uid"] == uid for t in p["targets"]), p["title"]
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    assert set(jobs) == {"duro-nodes", "duro-edges", "duro-placement"}
    query = d["templating"]["list"][0]["query"]["query"]
    assert re.search(r'job=~"duro-\.\*"', query), "the region variable lists the duro jobs"
    for job in ("duro-nodes", "duro-edges"):  # the $region filter needs the label on targets
        assert all(sc["labels"]["region"] for sc in jobs[job]["static_configs"])


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing on CI (.ci/run installs Debian's prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    # Grafana's variables are not PromQL: give them a value as Grafana would.
    rules = [{"record": f"duro:dashboard_query_{i}",
              "expr": e.replace("$region", ".*")} for i, e in enumerate(expressions(dashboard()))]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
