"""Live migration benchmarks (issue 5, "What must be measured").

    python bench/bench_migration.py --only window --runs 3 --moves 24
    python bench/bench_migration.py --only bulk --runs 3 --objects 1000 --concurrency 32

A real cluster on 127.0.0.1 (``duro.dev.LocalCluster``: etcd with fsync, one placement replica with
``--rebalance false`` so only this script moves objects, synced node WALs, no edges); the app is
``tests/cluster/apps/migapp`` (``Acc``). Moves are asked of the owning node directly
(``duro.client.admin._move`` -> ``Migration.Move``), as ``duro migrate`` does. Each run starts a
fresh cluster.

1. **window**: two nodes (us-east, eu-west). For each state size (1 KiB, 100 KiB, 1 MiB, 10 MiB,
   made with ``fill`` in 4 KiB values; 1 KiB is one 1 KiB value) one object is moved back and
   forth ``--moves`` times while one client calls ``add()`` on it continuously. Per move:
   ``held_ms`` (reported by the source: hold -> release), the Move RPC's wall time, and the
   **client gap**: the longest latency of a call that overlapped the move. p50/p99 over the moves
   of the run; the final ``get()`` must equal the number of acknowledged adds.
2. **bulk**: three nodes (three regions), ``--objects`` objects (each with ~1 KiB of state) spread
   over them. ``--callers`` load callers call ``add()`` on random objects continuously. First
   ``--baseline`` seconds without moves, then every object is moved to the next node with
   ``--concurrency`` concurrent moves. Moves/s, failed moves, failed calls (must be 0), and the
   calls' p50/p99 during the moves vs. the baseline (ratio). Every object's final value must equal
   1 + its acknowledged adds.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402

import duro.client  # noqa: E402
from common import Table, command_line, percentile  # noqa: E402
from duro.client.admin import _move  # noqa: E402
from duro import tls  # noqa: E402
from duro.dev import LocalCluster  # noqa: E402
from duro.errors import DuroError  # noqa: E402

APP = ROOT / "tests" / "cluster" / "apps" / "migapp"
BINDING = "ACC"
VALUE = 4096
SIZES = {"1 KiB": (1, 1024), "100 KiB": (25, VALUE), "1 MiB": (256, VALUE),
         "10 MiB": (2560, VALUE)}


def pct(values: list[float], q: float) -> float:
    return percentile(sorted(values), q)


async def start(root: Path, regions: tuple[str, ...]) -> LocalCluster:
    cluster = LocalCluster(root, app=APP, regions=regions, edges=False,
                           placement_args=("--rebalance", "false"))
    tls.configure(cluster.client_tls)  # this process calls the cluster as admin (mTLS)
    await cluster.start()  # stops what it started if it fails
    return cluster


def addresses(cluster: LocalCluster) -> dict[str, str]:
    return {s.name: s.address for s in cluster.nodes}


async def owner(client: Any, cluster: LocalCluster, stub: Any) -> str:
    entry = await client.invoker.directory.resolve(stub.id.raw, create=False, fresh=True)
    assert entry is not None
    return (await client.invoker.await_owner(entry, None))[0]


# -- 1. unavailability window -------------------------------------------------------------------

async def window_one(client: Any, cluster: LocalCluster, label: str, moves: int,
                     pause: float) -> dict[str, float]:
    n_keys, size = SIZES[label]
    name = f"win-{label.replace(' ', '')}-{time.time_ns()}"
    stub = client.namespace(BINDING).get_by_name(name)
    acked = await stub.add()
    await stub.fill(n_keys, size)
    addr = addresses(cluster)
    src = await owner(client, cluster, stub)
    nodes = sorted(addr)
    calls: list[tuple[float, float]] = []
    failures: list[str] = []
    stop = asyncio.Event()

    last_failed = False

    async def caller() -> None:
        nonlocal acked, stub, last_failed
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                acked = await stub.add()
            except DuroError as exc:
                # Counted (a failed call is a finding); the next call goes through a fresh stub.
                failures.append(f"{type(exc).__name__}: {exc}")
                stub = client.namespace(BINDING).get_by_name(name)
                last_failed = True
                continue
            last_failed = False
            calls.append((t0, time.perf_counter()))

    task = asyncio.ensure_future(caller())
    await asyncio.sleep(0.3)
    held, wall, gaps, nbytes = [], [], [], 0.0
    windows: list[tuple[float, float]] = []
    for _ in range(moves):
        dst = next(n for n in nodes if n != src)
        t0 = time.perf_counter()
        res = await _move(addr[src], stub.id.raw, BINDING, dst)
        t1 = time.perf_counter()
        if res["outcome"] != "released":
            raise RuntimeError(f"move {src} -> {dst} failed: {res}")
        held.append(res["held_ms"])
        wall.append((t1 - t0) * 1e3)
        nbytes = res["bytes"]
        windows.append((t0, t1))
        src = dst
        await asyncio.sleep(pause)  # let the caller find the new owner and run again
    stop.set()
    await task
    for w0, w1 in windows:
        lat = [c1 - c0 for c0, c1 in calls if c0 <= w1 and c1 >= w0]
        gaps.append(max(lat) * 1e3 if lat else float("nan"))
    steady = [(c1 - c0) * 1e3 for c0, c1 in calls
              if not any(c0 <= w1 + 0.05 and c1 >= w0 for w0, w1 in windows)]
    final = await stub.get()
    # Only this caller writes: the value is the last acknowledged one (+1 if the last call failed
    # after its write applied). Anything else is a lost or doubled write.
    if not acked <= final <= acked + int(last_failed):
        raise RuntimeError(f"{label}: final={final} acked={acked} failures={failures[:3]}")
    for f in sorted(set(failures)):
        print(f"  {label}: failed call: {f} (x{failures.count(f)})", flush=True)
    return {"held_p50": pct(held, 50), "held_p99": pct(held, 99), "held_max": max(held),
            "gap_p50": pct(gaps, 50), "gap_p99": pct(gaps, 99),
            "wall_p50": pct(wall, 50), "wall_p99": pct(wall, 99),
            "call_p50": pct(steady, 50), "mib": nbytes / 2**20, "calls": len(calls),
            "failed_calls": len(failures),
            "moves": len(held)}


async def bench_window(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {k: [] for k in args.sizes}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-mig-") as tmp:
            cluster = await start(Path(tmp), ("us-east", "eu-west"))
            try:
                async with duro.client.connect(etcd=cluster.etcd.endpoint, app=APP,
                                               region="us-east") as client:
                    for label in args.sizes:
                        r = await window_one(client, cluster, label, args.moves, args.pause)
                        out[label].append(r)
                        print(f"run {run} {label}: " + json.dumps(
                            {k: round(v, 2) for k, v in r.items()}), flush=True)
            finally:
                await cluster.stop()
    return out


# -- 2. many moves under load --------------------------------------------------------------------

async def bulk_run(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    cluster = await start(tmp, ("us-east", "eu-west", "ap-south"))
    try:
        addr = addresses(cluster)
        nodes = sorted(addr)
        async with duro.client.connect(etcd=cluster.etcd.endpoint, app=APP,
                                       region="us-east") as client:
            ns = client.namespace(BINDING)
            names = [f"bulk-{i}" for i in range(args.objects)]
            stubs = {}
            regions = [s.region for s in cluster.nodes]
            sem = asyncio.Semaphore(32)

            async def create(i: int, n: str) -> None:
                async with sem:
                    s = ns.get_by_name(n, location_hint=regions[i % len(regions)])
                    await s.add()
                    await s.fill(1, 1024)
                    stubs[n] = s

            await asyncio.gather(*(create(i, n) for i, n in enumerate(names)))
            owners = {}
            for n in names:
                owners[n] = await owner(client, cluster, stubs[n])
            adds = {n: 0 for n in names}
            failures: list[str] = []
            suspect: dict[str, int] = {}  # object -> failed calls on it
            calls: list[tuple[float, float]] = []
            stop = asyncio.Event()

            async def load(seed: int) -> None:
                rnd = random.Random(seed)
                while not stop.is_set():
                    n = names[rnd.randrange(len(names))]
                    t0 = time.perf_counter()
                    try:
                        await stubs[n].add()
                    except DuroError as exc:
                        # Counted as a failed call (its add may or may not have applied: the
                        # final check then reports the object); a fresh stub for the next call.
                        failures.append(f"{type(exc).__name__}: {exc}")
                        suspect[n] = suspect.get(n, 0) + 1
                        stubs[n] = ns.get_by_name(n)
                        continue
                    adds[n] += 1
                    calls.append((t0, time.perf_counter()))

            tasks = [asyncio.ensure_future(load(w)) for w in range(args.callers)]
            await asyncio.sleep(1.0)  # warm-up: every stub resolves its owner
            b0 = time.perf_counter()
            await asyncio.sleep(args.baseline)
            b1 = time.perf_counter()
            msem = asyncio.Semaphore(args.concurrency)
            results: list[dict[str, Any]] = []

            async def move(n: str) -> None:
                async with msem:
                    src = owners[n]
                    dst = nodes[(nodes.index(src) + 1) % len(nodes)]
                    r = await _move(addr[src], stubs[n].id.raw, BINDING, dst)
                    results.append(r)

            m0 = time.perf_counter()
            await asyncio.gather(*(move(n) for n in names))
            m1 = time.perf_counter()
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
            base = [(c1 - c0) * 1e3 for c0, c1 in calls if c0 >= b0 and c1 <= b1]
            during = [(c1 - c0) * 1e3 for c0, c1 in calls if c0 >= m0 and c0 <= m1]
            released = [r for r in results if r["outcome"] == "released"]
            held = [r["held_ms"] for r in released]
            wrong = applied = 0
            for i in range(0, len(names), 64):
                part = names[i:i + 64]
                vals = await asyncio.gather(*(ns.get_by_name(n).get() for n in part))
                for n, v in zip(part, vals):
                    # A failed call may or may not have applied; nothing acknowledged may be lost.
                    if not 1 + adds[n] <= v <= 1 + adds[n] + suspect.get(n, 0):
                        wrong += 1
                    elif v > 1 + adds[n]:
                        applied += 1
            for f in sorted(set(failures))[:5]:
                print(f"  failed call: {f} (x{failures.count(f)})", flush=True)
            return {
                "moves_s": len(released) / (m1 - m0), "move_secs": m1 - m0,
                "failed_moves": len(results) - len(released), "failed_calls": len(failures),
                "wrong_values": wrong, "failed_but_applied": applied,
                "base_ops": len(base) / (b1 - b0), "base_p50": pct(base, 50),
                "base_p99": pct(base, 99),
                "mov_ops": len(during) / (m1 - m0), "mov_p50": pct(during, 50),
                "mov_p99": pct(during, 99), "mov_max": max(during),
                "p99_ratio": pct(during, 99) / pct(base, 99),
                "held_p50": pct(held, 50), "held_p99": pct(held, 99),
            }
    finally:
        await cluster.stop()


async def bench_bulk(args: argparse.Namespace) -> list[dict[str, float]]:
    runs = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-mig-") as tmp:
            r = await bulk_run(args, Path(tmp))
        print(f"run {run} bulk: " + json.dumps({k: round(v, 2) for k, v in r.items()}), flush=True)
        runs.append(r)
    return runs


# -- main ---------------------------------------------------------------------------------------

async def main_async(args: argparse.Namespace) -> None:
    print(f"# {command_line()}\n# {platform.platform()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    if args.only in (None, "window"):
        out = await bench_window(args)
        t = Table("Unavailability window per move", command_line(), [
            ("held p50 ms", "held_p50", 1), ("held p99 ms", "held_p99", 1),
            ("client gap p50 ms", "gap_p50", 1), ("client gap p99 ms", "gap_p99", 1),
            ("Move RPC p50 ms", "wall_p50", 1), ("call p50 ms (no move)", "call_p50", 2),
            ("failed calls", "failed_calls", 0),
            ("MiB moved", "mib", 2)])
        for label, runs in out.items():
            t.add(f"{label} ({runs[0]['moves']:.0f} moves/run)", runs)
        print(t.render())
    if args.only in (None, "bulk"):
        runs = await bench_bulk(args)
        t = Table(f"{args.objects} objects moved, {args.concurrency} concurrent moves, "
                  f"{args.callers} load callers", command_line(), [
                      ("moves/s", "moves_s", 0), ("failed moves", "failed_moves", 0),
                      ("failed calls", "failed_calls", 0), ("wrong values", "wrong_values", 0),
                      ("calls/s no moves", "base_ops", 0), ("p50 no moves", "base_p50", 2),
                      ("p99 no moves", "base_p99", 2), ("calls/s moving", "mov_ops", 0),
                      ("p50 moving", "mov_p50", 2), ("p99 moving", "mov_p99", 2),
                      ("p99 ratio", "p99_ratio", 2), ("held p99 ms", "held_p99", 1)])
        t.add("3 nodes", runs)
        print(t.render())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["window", "bulk"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--moves", type=int, default=24)
    p.add_argument("--pause", type=float, default=0.05)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--callers", type=int, default=16)
    p.add_argument("--baseline", type=float, default=5.0)
    args = p.parse_args()
    uvloop.install()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
