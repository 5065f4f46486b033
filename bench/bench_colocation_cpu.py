#!/usr/bin/env python3
"""CPU per request of each process, co-located edges vs separate edge processes (issue 12).

    python bench/bench_colocation_cpu.py

For each of co-located / separate edges and 1 / 3 copies: a LocalCluster shaped like ``duro dev``
(three regions, one node each, mTLS; separate: only us-east's edge kept), one Counter, ``wrk -t1``
6 s at 1 and 64 connections on us-east's edge; the CPU seconds each duro process used per request
(``/proc/<pid>/stat``). CPU per request depends far less on other load than ops/s does, so it
explains a choice even on a busy machine; "predicted" is what the busiest process and two cores
allow on an idle machine: ``min(1 / busiest process, 2 / all processes)``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import cpu_seconds as cpu  # noqa: E402

from duro.dev import LocalCluster  # noqa: E402


async def measure(colocated: bool, replicas: int, connections: tuple[int, ...],
                  seconds: float = 6.0) -> dict[int, dict]:
    root = tempfile.mkdtemp(prefix="bench-colocation-")
    try:
        async with LocalCluster(root, app=ROOT / "examples", colocated_edges=colocated,
                                replicas=replicas, min_in_sync=min(2, replicas)) as c:
            if not colocated:
                for i in range(1, len(c.edges)):  # one edge: us-east's
                    await c.stop_edge(i)
            url = c.edge_url(0) + "/counter/x/increment"
            urllib.request.urlopen(url, timeout=30).read()
            procs = {n.name: n.proc.pid for n in c.nodes}  # type: ignore[union-attr]
            if not colocated:
                procs["edge"] = c.edges[0].proc.pid  # type: ignore[union-attr]
            out = {}
            for conns in connections:
                before = {k: cpu(p) for k, p in procs.items()}
                text = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", url],
                                      capture_output=True, text=True, check=True).stdout
                after = {k: cpu(p) for k, p in procs.items()}
                m = re.search(r"Requests/sec:\s+([\d.]+)", text)
                rps = float(m.group(1)) if m else float("nan")
                n = rps * seconds
                per = {k: round((after[k] - before[k]) / n * 1e6) for k in procs}
                total, busiest = sum(per.values()), max(per.values())
                out[conns] = {"ops_s": rps, "us_per_request": per, "total_us": total,
                              "busiest_us": busiest,
                              "predicted_idle_ops_s": round(min(1e6 / busiest, 2e6 / total))}
            return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def main() -> None:
    for colocated in (True, False):
        for replicas in (1, 3):
            res = await measure(colocated, replicas, (1, 64))
            for conns, row in res.items():
                print(json.dumps({"edges": "co-located" if colocated else "separate",
                                  "replicas": replicas, "connections": conns, **row}),
                      flush=True)


if __name__ == "__main__":
    asyncio.run(main())
