"""Cluster benchmarks (issue 3): placement of new objects, routed vs direct calls.

    python bench/bench_cluster.py --runs 3                 # everything, median of 3 runs
    python bench/bench_cluster.py --only place --runs 3

A real cluster on 127.0.0.1 (``duro.dev.LocalCluster``: etcd with fsync, one placement replica,
three nodes in three regions, synced WAL); the load generator is this process (uvloop).

1. **place**: new objects placed through ``Router.place`` (a ``Directory.Resolve`` with create at
   the object's directory partition, batched per node: docs/directory.md), many concurrent
   callers: objects/s and p50/p99 per placement. Also the whole first call of a new object through the router
   (placement + node's ownership check + activation + durable write): objects/s, p50/p99. CPU
   seconds of each process during the run show where the time goes.
2. **route**: warm objects spread over the three nodes; ``get`` calls through the router vs calls
   made directly to the owning node (``NodeConnection``): ops/s, p50/p99, ratio.

The directory's size as objects grow (etcd, memory, disk) is bench/bench_directory.py.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duro.client  # noqa: E402
from duro._ids import ObjectId, namespace_key  # noqa: E402
from duro._namespace import Call, CallKind  # noqa: E402
from duro.client.connection import NodeConnection  # noqa: E402
from duro._wire import RedirectError  # noqa: E402
from duro.client.router import Router  # noqa: E402
from duro import tls  # noqa: E402
from duro.dev import LocalCluster  # noqa: E402

APP = ROOT / "examples"
KEY = namespace_key("Counter")


# -- helpers ------------------------------------------------------------------------------------

def pct(sorted_v: list[float], q: float) -> float:
    if not sorted_v:
        return float("nan")
    i = min(len(sorted_v) - 1, max(0, int(round(q * (len(sorted_v) - 1)))))
    return sorted_v[i]


def summary(lat_s: list[float], elapsed: float, n: int) -> dict[str, float]:
    lat = sorted(lat_s)
    return {"ops_s": n / elapsed, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


def scrape(port: int | str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = out.get(name, 0.0) + float(value)
        base = name.split("{", 1)[0]
        if base != name:
            out[base] = out.get(base, 0.0) + float(value)
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(cluster: LocalCluster) -> dict[str, float]:
    out = {"bench (client)": time.process_time()}
    if cluster.etcd.pid:
        out["etcd"] = cpu_seconds(cluster.etcd.pid)
    for spec in (*cluster.placements, *cluster.nodes):
        if spec.proc is not None and spec.running:
            out[spec.name] = cpu_seconds(spec.proc.pid)
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if k in before}


def med(runs: list[dict[str, float]], key: str) -> tuple[float, float, float]:
    vals = [r[key] for r in runs]
    return statistics.median(vals), min(vals), max(vals)


def cell(runs: list[dict[str, float]], key: str, digits: int = 0) -> str:
    m, lo, hi = med(runs, key)
    f = f"{{:,.{digits}f}}"
    return f"{f.format(m)} [{f.format(lo)}–{f.format(hi)}]"


async def bounded(n: int, concurrency: int, fn: Any) -> tuple[list[float], float]:
    """Run fn(i) for i < n with *concurrency* workers; latencies (s) and elapsed (s)."""
    lat: list[float] = []
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            t = time.perf_counter()
            await fn(i)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, time.perf_counter() - t0


def new_call(region: str) -> Call:
    oid = ObjectId.from_name(KEY, f"b-{uuid.uuid4().hex}")
    return Call(binding="COUNTER", object_id=oid.raw, kind=CallKind.RPC, caller_region=region)


async def start_cluster(root: Path) -> LocalCluster:
    kw: dict[str, Any] = {}
    if "edges" in inspect.signature(LocalCluster).parameters:
        kw["edges"] = False  # no edge processes competing for the 2 CPUs
    cluster = LocalCluster(root, app=APP, **kw)  # etcd with fsync, synced node WALs
    tls.configure(cluster.client_tls)  # this process calls the cluster as admin (mTLS)
    await cluster.start()  # stops what it started if it fails
    return cluster


def created(cluster: LocalCluster) -> float:
    """Directory entries created so far, all nodes."""
    return sum(scrape(n.ready["metrics_port"]).get("duro_directory_created_total", 0.0)
               for n in cluster.nodes)


# -- 1. placement -------------------------------------------------------------------------------

async def bench_place(cluster: LocalCluster, n: int, concurrency: int,
                      first_calls: int) -> dict[str, Any]:
    regions = [s.region for s in cluster.nodes]
    async with Router(cluster.etcd.endpoint, region=regions[0]) as router:
        # Warm: every directory partition has its group (assigned on first use) and the
        # channels to the nodes are open; what is measured is placement, not assignment.
        parts = (await router.directory.wait_settings(10)).partitions
        for lo in range(0, parts, 128):
            await router.assign_partitions(list(range(lo, min(lo + 128, parts))))
        await router.place(new_call(regions[0]))
        e0, c0 = created(cluster), process_cpu(cluster)
        lat, el = await bounded(n, concurrency,
                                lambda i: router.place(new_call(regions[i % len(regions)])))
        e1, c1 = created(cluster), process_cpu(cluster)
    place = summary(lat, el, n)
    place["entries_created"] = e1 - e0
    cpu = cpu_delta(c0, c1)

    async with duro.client.connect(etcd=cluster.etcd.endpoint, app=APP, region=regions[0]) as c:
        ns = c.namespace("COUNTER")
        await ns.get_by_name(f"warm-{uuid.uuid4().hex}").increment()

        async def first(i: int) -> None:
            assert await ns.get_by_name(f"f-{uuid.uuid4().hex}").increment() == 1

        c2 = process_cpu(cluster)
        lat, el = await bounded(first_calls, concurrency, first)
        c3 = process_cpu(cluster)
    first_call = summary(lat, el, first_calls)
    return {"place": place, "first_call": first_call, "cpu_place": cpu,
            "cpu_place_elapsed": n / place["ops_s"], "cpu_first": cpu_delta(c2, c3),
            "cpu_first_elapsed": el}


# -- 2. routed vs direct ------------------------------------------------------------------------

async def bench_route(cluster: LocalCluster, n_objects: int, callers: int,
                      seconds: float) -> dict[str, Any]:
    regions = [s.region for s in cluster.nodes]
    names = [f"warm-{i}-{uuid.uuid4().hex[:8]}" for i in range(n_objects)]
    # One router per region, and each object called from its own region: the placement leader's
    # rebalancer (which moves objects toward their callers) then leaves them where they are.
    async with (
        duro.client.connect(etcd=cluster.etcd.endpoint, app=APP, region=regions[0]) as r0,
        duro.client.connect(etcd=cluster.etcd.endpoint, app=APP, region=regions[1]) as r1,
        duro.client.connect(etcd=cluster.etcd.endpoint, app=APP, region=regions[2]) as r2,
    ):
        regional = [r0, r1, r2]
        routed_of = {name: regional[i % 3] for i, name in enumerate(names)}
        routed = r0
        router: Router = routed.invoker  # type: ignore[assignment]
        for name in names:
            await routed_of[name].namespace("COUNTER").get_by_name(name).increment()
        owners: dict[str, str] = {}
        for name in names:
            oid = routed.namespace("COUNTER").id_from_name(name).raw
            e = await router.directory.resolve(oid, create=False, fresh=True)
            assert e is not None
            owners[name] = (await router.await_owner(e, None))[1]
        spread = {a: sum(1 for v in owners.values() if v == a) for a in set(owners.values())}
        direct_conns = {i.address: NodeConnection(i.address) for i in router.nodes.nodes.values()}
        direct_redirects = [0]
        directs = {a: duro.client.Client(conn, routed.bindings) for a, conn in direct_conns.items()}
        try:
            async def run(kind: str, lat: list[float] | None = None) -> dict[str, float]:
                stop = time.perf_counter() + seconds
                lat = [] if lat is None else lat

                async def caller(seed: int) -> None:
                    r = random.Random(seed)
                    while time.perf_counter() < stop:
                        name = names[r.randrange(len(names))]
                        client = routed_of[name] if kind == "routed" else directs[owners[name]]
                        stub = client.namespace("COUNTER").get_by_name(name)
                        t = time.perf_counter()
                        try:
                            await stub.get()
                        except RedirectError as r:  # moved meanwhile: follow, as a router would
                            direct_redirects[0] += 1
                            owners[name] = r.address
                            continue
                        lat.append(time.perf_counter() - t)

                n0 = len(lat)
                t0 = time.perf_counter()
                await asyncio.gather(*(caller(s) for s in range(callers)))
                return summary(lat[n0:], time.perf_counter() - t0, len(lat) - n0)

            await run("routed")  # warm both paths (streams open, objects active)
            await run("direct")
            out: dict[str, Any] = {"spread": spread}
            # A-B-B-A, so that drift in the machine's load hits both paths alike.
            parts: dict[str, list[dict[str, float]]] = {"direct": [], "routed": []}
            lats: dict[str, list[float]] = {"direct": [], "routed": []}
            for kind in ("direct", "routed", "routed", "direct"):
                parts[kind].append(await run(kind, lats[kind]))
            for kind in ("direct", "routed"):
                lat = sorted(lats[kind])
                out[kind] = {"ops_s": statistics.mean(p["ops_s"] for p in parts[kind]),
                             "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}
            hits = router.stats.cache_hits
            out["router_cache_hits"] = hits
            out["router_redirects"] = sum(c.invoker.stats.redirects for c in regional)  # type: ignore[attr-defined]
            out["direct_redirects"] = direct_redirects[0]
            return out
        finally:
            for conn in direct_conns.values():
                await conn.close()


# -- main ---------------------------------------------------------------------------------------

async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"place": [], "route": []}
    for run in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix="duro-bench-cluster-"))
        cluster = await start_cluster(root)
        try:
            if "place" in args.only:
                r = await bench_place(cluster, args.place_objects, args.concurrency,
                                      args.first_calls)
                results["place"].append(r)
                print(f"run {run + 1} place: {json.dumps(r)}", flush=True)
            if "route" in args.only:
                for callers in args.route_callers:
                    r = await bench_route(cluster, args.route_objects, callers, args.seconds)
                    r["callers"] = callers
                    results["route"].append(r)
                    print(f"run {run + 1} route: {json.dumps(r)}", flush=True)
        finally:
            await cluster.stop()
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = []
    if results["place"]:
        runs = results["place"]
        p = [r["place"] for r in runs]
        f = [r["first_call"] for r in runs]
        lines += [
            f"#### Placement of new objects ({args.place_objects:,} per run, "
            f"{args.concurrency} concurrent callers)", "",
            "| what | objects/s | p50 ms | p99 ms |", "|---|---|---|---|",
            f"| `Router.place` (Resolve with create at the partition) | {cell(p, 'ops_s')} | "
            f"{cell(p, 'p50_ms', 2)} | {cell(p, 'p99_ms', 2)} |",
            f"| first call of a new object (`increment`: place + activate + durable write), "
            f"{args.first_calls:,} per run | {cell(f, 'ops_s')} | {cell(f, 'p50_ms', 2)} | "
            f"{cell(f, 'p99_ms', 2)} |", "",
            "CPU seconds per process during the `Router.place` run (median run), and share of "
            "the run's wall time:", "",
        ]
        mid = sorted(runs, key=lambda r: r["place"]["ops_s"])[len(runs) // 2]
        el = mid["cpu_place_elapsed"]
        lines += ["| process | CPU s | CPU / wall |", "|---|---|---|"]
        for k, v in sorted(mid["cpu_place"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {k} | {v:.2f} | {v / el:.0%} |")
        el = mid["cpu_first_elapsed"]
        lines += ["", "Same for the first-call run:", "", "| process | CPU s | CPU / wall |",
                  "|---|---|---|"]
        for k, v in sorted(mid["cpu_first"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {k} | {v:.2f} | {v / el:.0%} |")
        lines.append("")
    if results["route"]:
        lines += [f"#### Routed vs direct calls ({args.route_objects} warm objects over 3 nodes, "
                  f"`get`, {args.seconds:.0f} s per measurement)", "",
                  "| callers | direct ops/s | routed ops/s | routed/direct | direct p50/p99 ms | "
                  "routed p50/p99 ms |", "|---|---|---|---|---|---|"]
        for callers in args.route_callers:
            rs = [r for r in results["route"] if r["callers"] == callers]
            d = [r["direct"] for r in rs]
            ro = [r["routed"] for r in rs]
            ratio = [{"x": r["routed"]["ops_s"] / r["direct"]["ops_s"]} for r in rs]
            lines.append(
                f"| {callers} | {cell(d, 'ops_s')} | {cell(ro, 'ops_s')} | {cell(ratio, 'x', 3)} | "
                f"{med(d, 'p50_ms')[0]:.3f} / {med(d, 'p99_ms')[0]:.3f} | "
                f"{med(ro, 'p50_ms')[0]:.3f} / {med(ro, 'p99_ms')[0]:.3f} |")
        lines += ["", f"Objects per node: {results['route'][0]['spread']}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", nargs="+", default=["place", "route"])
    ap.add_argument("--place-objects", type=int, default=20_000)
    ap.add_argument("--first-calls", type=int, default=5_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--route-objects", type=int, default=300)
    ap.add_argument("--route-callers", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    try:
        import uvloop

        results = uvloop.run(main_async(args))
    except ImportError:
        results = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print()
    print(f"command: python bench/bench_cluster.py {' '.join(sys.argv[1:])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    print()
    print(report(results, args))


if __name__ == "__main__":
    main()
