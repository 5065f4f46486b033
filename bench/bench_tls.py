#!/usr/bin/env python3
"""The cost of mTLS (issue 11): calls through the client library with every internal connection
mutual TLS, against the same cluster in plaintext, side by side in the same run.

    python bench/bench_tls.py                       # median of 3 runs, 64 callers, 5 s each
    python bench/bench_tls.py --runs 3 --callers 64 --objects 1,1000 --seconds 5

A real cluster on 127.0.0.1 per run and mode (``duro.dev.LocalCluster``: etcd, one placement
replica with ``--rebalance false``, three nodes in three regions, three copies of every object,
synced WALs, no edges), once with ``tls=True`` (what ``duro dev`` and the test suite run: mTLS on
the client→node streams, node↔node replication streams and gRPC, etcd) and once with
``tls=False``; which goes first alternates between runs. The load generator is this process
(uvloop), calling ``increment`` of the Counter from region us-east through
``duro.client.connect(etcd=...)``: ``--callers`` concurrent callers on one object, then on
``--objects`` objects (caller i cycles over objects i, i+callers, ...). Every write is replicated
to two followers before it is acknowledged, so TLS is on the client's stream, on the replication
stream and on the acknowledgements.

Per run and row: ops/s, latency p50/p99, CPU of the nodes and of this process per second. The
tables (median over runs, min–max) go to stdout, per-run JSON lines to stderr. A run during which
processes outside the benchmark used more than ``--max-other`` cores is measured again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop  # noqa: E402

import duro.client  # noqa: E402
from common import (  # noqa: E402
    ForeignCpu,
    Table,
    command_line,
    cpu_seconds,
    lat_summary,
    wait_quiet,
)
from duro import tls  # noqa: E402
from duro.dev import LocalCluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples"
MODES = ("mTLS", "plaintext")


def _log(msg: str) -> None:
    print(f"[bench_tls {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def measure(cluster: LocalCluster, opts: argparse.Namespace, objects: int,
                  run_id: str) -> dict[str, float]:
    """``opts.callers`` callers on ``objects`` objects for ``opts.seconds`` after a warmup."""
    async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
        ns = c.namespace("COUNTER")
        names = [f"{run_id}-{objects}-{i}" for i in range(objects)]
        for i in range(0, objects, 100):  # created (placed) before the clock starts
            await asyncio.gather(*(ns.get_by_name(n).increment() for n in names[i:i + 100]))
        lat: list[int] = []
        state = {"measuring": False, "stop": False}

        async def caller(k: int) -> None:
            stubs = [ns.get_by_name(names[j]) for j in range(k % objects, objects, opts.callers)]
            record, clock, i = lat.append, time.perf_counter_ns, 0
            while not state["stop"]:
                stub = stubs[i % len(stubs)]
                i += 1
                t0 = clock()
                await stub.increment()
                if state["measuring"]:
                    record(clock() - t0)

        tasks = [asyncio.ensure_future(caller(k)) for k in range(opts.callers)]
        await asyncio.sleep(opts.warmup)
        pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        other = ForeignCpu()
        nodes0 = sum(cpu_seconds(p) for p in pids)
        me0 = time.process_time()
        t0 = time.perf_counter()
        state["measuring"] = True
        await asyncio.sleep(opts.seconds)
        state["measuring"] = False
        wall = time.perf_counter() - t0
        n = len(lat)
        res = {"ops_s": n / wall, **lat_summary(lat[:n]),
               "nodes_cpu": (sum(cpu_seconds(p) for p in pids) - nodes0) / wall,
               "client_cpu": (time.process_time() - me0) / wall, "other_cpu": other.cores()}
        state["stop"] = True
        await asyncio.gather(*tasks)
    return res


async def one_cluster(opts: argparse.Namespace, root: Path, mode: str, run: int
                      ) -> dict[int, dict[str, float]]:
    cluster = LocalCluster(root, app=APP, edges=False, tls=mode == "mTLS",
                           placement_args=("--rebalance", "false"))
    tls.configure(cluster.client_tls)  # this process: the admin certificate, or plaintext
    await cluster.start()
    try:
        out = {}
        for objects in opts.objects:
            out[objects] = await measure(cluster, opts, objects, f"r{run}")
            _log(f"run {run + 1} {mode} objects={objects}: "
                 f"{json.dumps({k: round(v, 3) for k, v in out[objects].items()})}")
        return out
    finally:
        await cluster.stop()


async def main_async(opts: argparse.Namespace) -> str:
    rows: dict[tuple[int, str], list[dict[str, float]]] = {}
    notes: list[str] = []
    for run in range(opts.runs):
        for mode in (MODES if run % 2 == 0 else MODES[::-1]):
            for attempt in range(opts.retries + 1):
                if opts.quiet_timeout > 0:
                    wait_quiet(opts.quiet_limit, timeout=opts.quiet_timeout, log=_log)
                with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
                    res = await one_cluster(opts, Path(tmp), mode, run)
                other = max(r["other_cpu"] for r in res.values())
                if other <= opts.max_other or attempt == opts.retries:
                    break
                notes.append(f"run {run + 1} {mode}: measured again (other processes used "
                             f"{other:.2f} cores)")
                _log(notes[-1])
            for objects, r in res.items():
                rows.setdefault((objects, mode), []).append(r)
    table = Table(
        f"mTLS vs plaintext: {opts.callers} callers, increments through the client library "
        f"(3 nodes, 3 copies)", command_line(),
        [("ops/s", "ops_s", 0), ("p50 ms", "p50_ms", 2), ("p99 ms", "p99_ms", 2),
         ("nodes CPU", "nodes_cpu", 2), ("client CPU", "client_cpu", 2)])
    for objects in opts.objects:
        for mode in MODES:
            table.add(f"{objects} object{'s' if objects > 1 else ''}, {mode}",
                      rows[(objects, mode)])
    for objects in opts.objects:
        med = {m: sorted(r["ops_s"] for r in rows[(objects, m)]) for m in MODES}
        mt, pt = (v[len(v) // 2] for v in (med["mTLS"], med["plaintext"]))
        table.notes.append(f"{objects} object(s): mTLS {100 * (mt / pt - 1):+.1f}% ops/s against "
                           "plaintext (medians).")
    table.notes.extend(notes)
    return table.render()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--callers", type=int, default=64)
    p.add_argument("--objects", default="1,1000", help="object counts, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--max-other", type=float, default=0.3,
                   help="cores other processes may use during a run before it is measured again")
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--quiet-limit", type=float, default=0.15)
    p.add_argument("--quiet-timeout", type=float, default=300.0,
                   help="seconds to wait for a quiet machine before each cluster (0: do not)")
    opts = p.parse_args()
    opts.objects = [int(x) for x in opts.objects.split(",") if x.strip()]
    with contextlib.suppress(KeyboardInterrupt):
        print(uvloop.run(main_async(opts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
