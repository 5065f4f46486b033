"""The partitioned object directory at scale (issue 10, docs/directory.md).

    python bench/bench_directory.py                         # 0, 10k, 100k, 1M objects; 3 lookup runs
    python bench/bench_directory.py --steps 0 10000 100000 --lookup-runs 1   # quicker

A real cluster on 127.0.0.1 (``duro.dev.LocalCluster``, what ``duro dev`` runs: etcd with fsync,
one placement replica, three nodes in three regions, every replica group three copies with
min_in_sync 2, synced WALs, one edge per region); the load generator is this process (uvloop).

1. **growth**: the cluster learns of more and more objects: at each step the bench's router
   places new objects (``Router.place``: a ``Resolve`` with create at each object's partition,
   batched per node) until the cluster knows ``N`` (0, 10k, 100k, 1M). After each step, idle:
   etcd's key count and bytes (keys + values, and the backend's in-use size), the directory
   entries the nodes hold (``duro_directory_entries``), each node's directory bytes on disk, and
   the resident memory of every node, edge and the placement leader. Before partitions, every
   router (each edge, node and client) watched the whole directory (~263 B per object per
   process) and etcd held one key per object.
2. **place**: the rate of those placements (objects/s, 512 concurrent callers, one router), per
   step: what the directory sustains while it grows.
3. **lookups**: a cold router (a new process's: empty cache, default capacity 100,000) looks up
   ``--lookup-objects`` known objects in random order (``create=False``, 512 concurrent): lookups/s,
   and its cache's size and memory at the end (tracemalloc): bounded by the capacity, whatever the
   number of objects.
4. **extrapolation**: a billion objects on 1,000 nodes, from the measured bytes per entry and
   lookups per node CPU second (written down in the report, with its arithmetic).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import command_line, cpu_seconds, wait_quiet  # noqa: E402

from duro import tls  # noqa: E402
from duro._ids import ObjectId, namespace_key  # noqa: E402
from duro._namespace import Call, CallKind  # noqa: E402
from duro.client.router import Router  # noqa: E402
from duro.dev import LocalCluster  # noqa: E402
from duro.node.storage import layout  # noqa: E402
from duro.topology.directory_entry import Entry  # noqa: E402

APP = ROOT / "examples"
KEY = namespace_key("Counter")
CONCURRENCY = 512


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scrape(port: int | str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            out[base] = out.get(base, 0.0) + float(value)
    return out


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def du_mb(path: Path) -> float:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total / 1e6


def oid_of(i: int, run: str) -> bytes:
    return ObjectId.from_name(KEY, f"{run}-{i}").raw


def call_of(oid: bytes, region: str) -> Call:
    return Call(binding="COUNTER", object_id=oid, kind=CallKind.RPC, caller_region=region)


async def bounded(items: list[Any], fn: Any, concurrency: int = CONCURRENCY) -> float:
    """Run fn(item) for every item with ``concurrency`` workers; elapsed seconds."""
    it = iter(items)

    async def worker() -> None:
        for x in it:
            await fn(x)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


async def etcd_state(cluster: LocalCluster) -> dict[str, float]:
    async with cluster.etcd_client() as client:
        resp = await client.kv.get(b"\0", b"\0", timeout=30.0)
    m = scrape(cluster.etcd.client_port)
    return {"etcd_keys": len(resp.kvs),
            "etcd_kv_bytes": sum(len(kv.key) + len(kv.value) for kv in resp.kvs),
            "etcd_in_use_mb": m["etcd_mvcc_db_total_size_in_use_in_bytes"] / 1e6}


def processes(cluster: LocalCluster) -> dict[str, int]:
    out = {}
    for spec in (*cluster.nodes, *cluster.edges, *cluster.placements):
        if spec.proc is not None and spec.running:
            out[spec.name] = spec.proc.pid
    return out


async def snapshot(cluster: LocalCluster, known: int) -> dict[str, Any]:
    await asyncio.sleep(3.0)  # idle: etcd's backend commit (100 ms batches), GC, load reports
    s: dict[str, Any] = {"known": known, **await etcd_state(cluster)}
    s["entries"] = sum(scrape(n.ready["metrics_port"])["duro_directory_entries"]
                       for n in cluster.nodes)
    s["node_disk_mb"] = {n.name: du_mb(cluster.root / "nodes" / n.name) for n in cluster.nodes}
    s["rss_mb"] = {name: rss_mb(pid) for name, pid in processes(cluster).items()}
    return s


async def grow(cluster: LocalCluster, router: Router, start: int, stop: int, run: str,
               regions: list[str]) -> dict[str, float]:
    """Place objects start..stop-1 (new ids); objects/s and the CPU each process spent."""
    pids = processes(cluster)
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()} | {"bench": time.process_time()}
    elapsed = await bounded(list(range(start, stop)), lambda i: router.place(
        call_of(oid_of(i, run), regions[i % len(regions)])))
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items()} | {"bench": time.process_time()}
    n = stop - start
    return {"placed": n, "seconds": elapsed, "objects_s": n / elapsed,
            "cpu_ms_per_1k": {k: (cpu1[k] - cpu0[k]) / n * 1e6 for k in cpu0}}


async def cold_lookups(cluster: LocalCluster, known: int, n: int, run: str,
                       seed: int) -> dict[str, float]:
    """A new router (default capacity) looks up ``n`` random known objects."""
    rng = random.Random(seed)
    ids = [oid_of(i, run) for i in rng.sample(range(known), min(n, known))]
    pids = {n.name: n.proc.pid for n in cluster.nodes}  # type: ignore[union-attr]
    tracemalloc.start()
    try:
        async with Router(cluster.etcd.endpoint, region=cluster.regions[0]) as router:
            await router.directory.wait_settings(10)
            base = tracemalloc.get_traced_memory()[0]
            cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
            found = [0]

            async def look(oid: bytes) -> None:
                e = await router.directory.resolve(oid, create=False)
                found[0] += e is not None

            elapsed = await bounded(ids, look)
            cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
            cached = len(router.directory)
            mem = tracemalloc.get_traced_memory()[0] - base
            capacity = router.directory.capacity
    finally:
        tracemalloc.stop()
    node_cpu = sum(cpu1[k] - cpu0[k] for k in cpu0)
    return {"lookups": len(ids), "found": found[0], "seconds": elapsed,
            "lookups_s": len(ids) / elapsed, "cached": cached, "capacity": capacity,
            "cache_mb": mem / 1e6, "cache_bytes_per_entry": mem / max(1, cached),
            "node_cpu_s": node_cpu, "lookups_per_node_cpu_s": len(ids) / node_cpu}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="duro-bench-directory-"))
    cluster = LocalCluster(root, app=APP)  # what `duro dev` runs: fsync, 3 copies, edges
    tls.configure(cluster.client_tls)  # this process calls the cluster as admin (mTLS)
    await cluster.start()
    run = uuid.uuid4().hex[:8]
    regions = list(cluster.regions)
    out: dict[str, Any] = {"steps": [], "growth": [], "lookups": []}
    try:
        wait_quiet(log=log)
        out["steps"].append(await snapshot(cluster, 0))
        log(f"0 objects: {json.dumps(out['steps'][-1])}")
        known = 0
        # The bench's own router caches little: its memory is not what is measured.
        async with Router(cluster.etcd.endpoint, region=regions[0], cache_entries=1000) as router:
            for step in sorted(s for s in args.steps if s > 0):
                g = await grow(cluster, router, known, step, run, regions)
                g["known_after"] = step
                out["growth"].append(g)
                known = step
                out["steps"].append(await snapshot(cluster, known))
                log(f"{known:,} objects: placed at {g['objects_s']:,.0f}/s; "
                    f"{json.dumps(out['steps'][-1])}")
        for r in range(args.lookup_runs):
            lk = await cold_lookups(cluster, known, args.lookup_objects, run, r)
            out["lookups"].append(lk)
            log(f"cold lookups run {r + 1}: {json.dumps(lk)}")
        sample = Entry(oid_of(0, run).hex(), "COUNTER", 1, 1, regions[0])
        out["entry_key_bytes"] = len(layout.dir_key(1, 0, oid_of(0, run)))
        out["entry_value_bytes"] = len(sample.encode())
        out["replicas"] = cluster.replicas
    finally:
        await cluster.stop()
    return out


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    steps = r["steps"]
    names = sorted(steps[0]["rss_mb"])
    lines = [
        "### Directory: etcd and memory as the cluster learns of more objects", "",
        "```", command_line(), "```", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs. "
        "One run (each step adds objects to the same cluster); idle 3 s before each reading.", "",
        "| objects known | etcd keys | etcd keys+values | etcd in use | directory entries "
        "(all copies' primaries) | node disk (each, MB) |", "|---|---|---|---|---|---|",
    ]
    for s in steps:
        disks = " / ".join(f"{v:.0f}" for _k, v in sorted(s["node_disk_mb"].items()))
        lines.append(f"| {s['known']:,} | {s['etcd_keys']:,} | {s['etcd_kv_bytes'] / 1e3:,.1f} kB "
                     f"| {s['etcd_in_use_mb']:.1f} MB | {s['entries']:,.0f} | {disks} |")
    lines += ["", "Resident memory (MB) of every process, idle, after each step:", "",
              "| objects known | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for s in steps:
        lines.append(f"| {s['known']:,} | " +
                     " | ".join(f"{s['rss_mb'][n]:.0f}" for n in names) + " |")
    first, last = steps[0], steps[-1]
    grew = {n: last["rss_mb"][n] - first["rss_mb"][n] for n in names}
    per_m = 1e6 / max(1, last["known"])
    lines += ["", "Growth from 0 to {:,} objects, per million objects known: ".format(last["known"])
              + ", ".join(f"{n} {grew[n] * per_m:+.0f} MB" for n in names) + ".", ""]
    g = r["growth"]
    lines += ["#### Placement of new objects as the directory grows", "",
              f"`Router.place` from one router, {CONCURRENCY} concurrent callers (each a Resolve "
              "with create at the object's partition: a replicated write of 3 copies).", "",
              "| objects known after | placed | objects/s | CPU ms per 1,000 objects "
              "(per process) |", "|---|---|---|---|"]
    for x in g:
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted(x["cpu_ms_per_1k"].items(),
                                                          key=lambda kv: -kv[1]) if v >= 1)
        lines.append(f"| {x['known_after']:,} | {x['placed']:,} | {x['objects_s']:,.0f} | {cpu} |")
    lk = r["lookups"]
    if lk:
        med = {k: statistics.median(x[k] for x in lk) for k in
               ("lookups_s", "lookups_per_node_cpu_s", "cache_bytes_per_entry", "cache_mb")}
        runs = ", ".join(f"{x['lookups_s']:,.0f}" for x in lk)
        lines += ["", "#### Cold router lookups", "",
                  f"A new router (empty cache, capacity {lk[0]['capacity']:,}) resolves "
                  f"{lk[0]['lookups']:,} random known objects of {last['known']:,}, "
                  f"{CONCURRENCY} concurrent; median of {len(lk)} runs "
                  f"({runs}).", "",
                  "| measure | value |", "|---|---|",
                  f"| lookups/s | **{med['lookups_s']:,.0f}** |",
                  f"| lookups per node CPU second (all nodes' CPU) | "
                  f"{med['lookups_per_node_cpu_s']:,.0f} |",
                  f"| entries cached at the end | {lk[0]['cached']:,} (capacity {lk[0]['capacity']:,}) |",
                  f"| cache memory (tracemalloc) | {med['cache_mb']:.1f} MB, "
                  f"{med['cache_bytes_per_entry']:.0f} B per entry |", ""]
        lines += extrapolation(r, med)
    return "\n".join(lines)


def extrapolation(r: dict[str, Any], med: dict[str, float]) -> list[str]:
    """A billion objects on 1,000 nodes, from the figures above (the arithmetic is shown)."""
    last = r["steps"][-1]
    known = max(1, last["known"])
    disk = sum(last["node_disk_mb"].values()) - sum(r["steps"][0]["node_disk_mb"].values())
    disk_per_copy = disk * 1e6 / known / r["replicas"]  # bytes per entry per copy, on disk
    logical = r["entry_key_bytes"] + r["entry_value_bytes"]
    objects, nodes, copies, partitions = 1e9, 1000, 3, 65_536
    per_node_entries = objects * copies / nodes
    lookup_rate = 1e6  # cluster-wide cold lookups/s assumed (every edge cache missing)
    return [
        "#### Extrapolation: a billion objects on 1,000 nodes", "",
        f"From the run above: an entry is {r['entry_key_bytes']} B of key + "
        f"{r['entry_value_bytes']} B of value ({logical} B logical); the nodes' data directories "
        f"grew by {disk_per_copy:.0f} B per entry per copy on disk (RocksDB, before compaction "
        "settles; WAL included).", "",
        "| quantity | value | arithmetic |", "|---|---|---|",
        f"| partitions | {partitions:,} (`--partitions`) | ≥ 64 per node: partitions are the unit "
        "a group holds |",
        f"| partitions per node (as primary) | {partitions / nodes:.0f} | "
        f"{partitions:,} / {nodes:,} groups (one per node) |",
        f"| partition copies per node | {partitions * copies / nodes:.0f} | × {copies} copies |",
        f"| etcd keys for the directory | {partitions:,} partition keys + 1 settings key | "
        "independent of objects (≈ 40 B each: ≈ 2.6 MB) |",
        f"| entries per node (all copies) | {per_node_entries / 1e6:.0f} million | "
        f"10⁹ × {copies} / {nodes:,} |",
        f"| directory bytes per node, logical | {per_node_entries * logical / 1e9:.1f} GB | "
        f"× {logical} B |",
        f"| directory bytes per node, on disk as measured | "
        f"{per_node_entries * disk_per_copy / 1e9:.1f} GB | × {disk_per_copy:.0f} B |",
        f"| objects per partition | {objects / partitions / 1e3:,.0f} thousand | "
        f"10⁹ / {partitions:,} |",
        f"| lookups/s per partition at 10⁶ cold lookups/s cluster-wide | "
        f"{lookup_rate / partitions:.0f} | uniform hash |",
        f"| lookups/s per node (its partitions as primary) | {lookup_rate / nodes:,.0f} | "
        f"vs {med['lookups_per_node_cpu_s']:,.0f} per node CPU second measured: "
        f"{lookup_rate / nodes / med['lookups_per_node_cpu_s']:.0%} of one core |",
        f"| router memory for a full cache | {med['cache_bytes_per_entry'] * 1e5 / 1e6:.0f} MB | "
        f"100,000 entries × {med['cache_bytes_per_entry']:.0f} B, whatever the object count |",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 10_000, 100_000, 1_000_000])
    ap.add_argument("--lookup-objects", type=int, default=300_000)
    ap.add_argument("--lookup-runs", type=int, default=3)
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    try:
        import uvloop

        results = uvloop.run(main_async(args))
    except ImportError:
        results = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(report(results, args))


if __name__ == "__main__":
    main()
