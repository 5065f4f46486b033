"""What an open console costs the data path (issue 14): ops/s with a console page connected vs
without, side by side in one run.

    python bench/bench_console.py --runs 3 --seconds 10      # the lead's measurement
    python bench/bench_console.py --runs 1 --seconds 3       # a quick look

A real cluster on 127.0.0.1 (``duro.dev.LocalCluster``: etcd, placement, a node and an edge per
region, mTLS, synced WAL). The load generator (this process, uvloop) sends ``increment`` over HTTP
to edge 0 from ``--concurrency`` clients over ``--objects`` counters, for ``--seconds`` per
phase. Phases alternate, off then on, ``--runs`` times (so drift hits both alike):

* **off**: no console page open: the edge samples nothing;
* **on**: what an open page costs: one server-sent events client on ``/console/api/events``
  (edge 0 takes a snapshot every ``--interval`` s: etcd reads plus one ``NodeInspect.Sample``
  RPC per node) and one object inspector stream (``/console/api/object/events``, one
  ``Inspect`` every 2 s), both read as the page reads them.

Reported: ops/s and p50/p99 latency per phase (median over runs), the ratio on/off, and how many
snapshots the console took. The per-call cost the console adds everywhere, console open or not (two
``perf_counter`` calls and a bisect per call: node/runtime/call_stats.py), is in both phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402

from common import Table, command_line, lat_summary  # noqa: E402
from duro.dev import LocalCluster  # noqa: E402

APP = ROOT / "examples"


async def load(url: str, names: list[str], concurrency: int, seconds: float) -> dict[str, float]:
    lat: list[int] = []
    errors = 0
    deadline = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def client(k: int) -> None:
            nonlocal errors
            rnd = random.Random(k)
            while time.monotonic() < deadline:
                t = time.perf_counter_ns()
                async with s.post(f"{url}/counter/{rnd.choice(names)}/increment") as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter_ns() - t)

        started = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        took = time.monotonic() - started
    return {"ops_s": len(lat) / took, "errors": errors, **lat_summary(lat)}


async def console_page(admin: str, name: str, stop: asyncio.Event) -> dict[str, int]:
    """Read the console's two streams as an open page does, until ``stop``."""
    seen = {"snapshot": 0, "object": 0}

    async def read(session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url) as r:
            async for line in r.content:
                if line.startswith(b"event: "):
                    kind = line[7:].strip().decode()
                    if kind in seen:
                        seen[kind] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:
        tasks = [asyncio.get_running_loop().create_task(read(s, u)) for u in (
            f"{admin}/console/api/events",
            f"{admin}/console/api/object/events?binding=COUNTER&name={name}")]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return seen


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-console-"))
    regions = tuple(args.regions.split(","))
    cluster = LocalCluster(root, app=APP, regions=regions,
                           edge_args=("--no-access-log", "--console-interval",
                                      str(args.interval)))
    names = [f"bench-{i}" for i in range(args.objects)]
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    snapshots = 0
    async with cluster:
        url, admin = cluster.edge_url(0), cluster.edge_admin_url(0)
        await load(url, names, args.concurrency, 2.0)  # warm: objects placed and active
        for _ in range(args.runs):
            runs["off"].append(await load(url, names, args.concurrency, args.seconds))
            stop = asyncio.Event()
            page = asyncio.get_running_loop().create_task(console_page(admin, names[0], stop))
            await asyncio.sleep(0.5)  # connected, first snapshot taken
            runs["on"].append(await load(url, names, args.concurrency, args.seconds))
            stop.set()
            seen = await page
            snapshots += seen["snapshot"]
            runs["on"][-1]["snapshots"] = seen["snapshot"]
            runs["on"][-1]["inspections"] = seen["object"]
    table = Table(
        f"Data path with and without an open console ({len(regions)} regions, "
        f"{args.concurrency} HTTP clients, {args.objects} counters, {args.seconds:g} s per "
        f"phase, console sample every {args.interval:g} s)",
        command_line(),
        [("ops/s", "ops_s", 0), ("p50 ms", "p50_ms", 2), ("p99 ms", "p99_ms", 2),
         ("errors", "errors", 0), ("snapshots pushed", "snapshots", 0)])
    table.add("console closed", runs["off"])
    table.add("console open (events + inspector)", runs["on"])
    ratios = [on["ops_s"] / off["ops_s"] for on, off in zip(runs["on"], runs["off"])]
    table.notes.append(f"ops/s open / closed, per run: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(table.render())
    if args.json:
        print(json.dumps({"runs": runs, "ratios": ratios, "snapshots": snapshots}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--objects", type=int, default=64)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--regions", default="us-east,eu-west,ap-south")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args))
