"""Increments over gRPC to a real host node process (issue 2, "What must be measured").

The node is ``python -m duro.cli node --app examples/counter`` in its own process (uvloop, synced
WAL unless ``--no-sync``); the load generator is this process, on uvloop, calling the Counter's
``increment`` through the public client (``duro.client.connect(node=...)``, stubs). Every call is
an acknowledged durable increment: the node answers only after the group commit that holds it.

Two modes:

* ``--objects 1`` (default): every caller increments the SAME object, for ``--seconds`` (after a
  warm-up) or ``--ops`` calls in total. One table row per ``--callers`` value.
* ``--objects N`` (N > 1): increments spread over N distinct objects. Per run, on a fresh data dir:
    1. write phase: every object incremented once (not reported), node stopped (SIGTERM);
    2. node restarted: **cold** phase, every object incremented once (state on disk, not in memory),
       objects in shuffled order, ``--callers`` concurrent callers;
    3. **warm** phase: every object incremented once more (all in memory);
    4. node restarted again: **cold activation** latency, one caller, read-only ``get()`` on a sample
       of ``--sample`` objects one after another (cold), then the same sample again (warm).
       ``get`` writes nothing, so cold − warm is the activation (construct + load from RocksDB).

    python bench/bench_node.py --callers 1 8 64 --runs 3 --seconds 5
    python bench/bench_node.py --callers 64 --runs 3 --seconds 5 --no-sync
    python bench/bench_node.py --objects 1000 100000 --callers 64 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402

import duro.client  # noqa: E402
from common import COUNTER_APP, Table, command_line, lat_summary, start_node  # noqa: E402

clock = time.perf_counter_ns


# -- one object ---------------------------------------------------------------------------------
async def _one_object_run(address: str, callers: int, seconds: float | None, ops: int | None,
                          warmup: float) -> dict[str, float]:
    async with duro.client.connect(node=address, app=COUNTER_APP) as c:
        ns = c.namespace("COUNTER")
        stubs = [ns.get_by_name("hot") for _ in range(callers)]  # one stub per caller, one object
        await stubs[0].increment()

        latencies: list[int] = []
        state = {"measuring": False, "stop": False, "left": ops or 0}

        async def caller(stub) -> None:  # noqa: ANN001
            record = latencies.append
            while not state["stop"]:
                if ops is not None and state["measuring"]:
                    if state["left"] <= 0:
                        return
                    state["left"] -= 1
                t0 = clock()
                await stub.increment()
                if state["measuring"]:
                    record(clock() - t0)

        tasks = [asyncio.ensure_future(caller(s)) for s in stubs]
        await asyncio.sleep(warmup)
        cpu0 = os.times()
        state["measuring"] = True
        t0 = time.perf_counter()
        if ops is None:
            await asyncio.sleep(seconds)
            state["stop"] = True
            elapsed = time.perf_counter() - t0
            n = len(latencies)
            await asyncio.gather(*tasks)
        else:
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - t0
            n = len(latencies)
        cpu1 = os.times()
        final = await stubs[0].get()
        assert final > n, f"counter {final} < acknowledged {n}"
        lat = latencies[:n]
    out = {"ops_s": n / elapsed, "ops": n, "elapsed_s": elapsed,
           "client_cpu": ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / elapsed}
    out.update(lat_summary(lat))
    return out


async def bench_one_object(args: argparse.Namespace) -> Table:
    wal = "synced WAL" if args.sync else "unsynced WAL: process-crash durable only"
    table = Table(
        title=f"Increments on one object over gRPC ({wal})",
        command=command_line(),
        columns=[("ops/s", "ops_s", 0), ("p50 ms", "p50_ms", 3), ("p99 ms", "p99_ms", 3),
                 ("node CPU", "node_cpu", 2), ("client CPU", "client_cpu", 2),
                 ("group commits/s", "commits_s", 0)],
    )
    for callers in args.callers:
        runs = []
        for r in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="duro-bench-", dir=args.tmp) as tmp:
                node = start_node(Path(tmp) / "node", sync=args.sync)
                try:
                    m0, c0 = node.metrics(), node.cpu_seconds()
                    t0 = time.perf_counter()
                    res = await _one_object_run(node.address, callers, args.seconds, args.ops,
                                                args.warmup)
                    wall = time.perf_counter() - t0
                    m1, c1 = node.metrics(), node.cpu_seconds()
                    # node CPU over the whole run (warm-up included): cores busy
                    res["node_cpu"] = (c1 - c0) / wall
                    commits = m1["duro_storage_commits_total"] - m0["duro_storage_commits_total"]
                    objs = (m1["duro_storage_committed_objects_total"]
                            - m0["duro_storage_committed_objects_total"])
                    res["batch"] = objs / commits if commits else float("nan")
                    res["commits_s"] = commits / wall
                finally:
                    node.stop()
            runs.append(res)
            _log(f"callers={callers} run={r + 1}: {json.dumps(_round(res))}")
        table.add(f"{callers} caller{'s' if callers > 1 else ''}", runs)
    table.notes.append(
        "node CPU / client CPU: cores busy (CPU seconds per wall second). group commits/s: "
        "synced write batches per second, from the node's metrics; increments per commit = "
        "ops/s ÷ commits/s (one object's increments made in one loop turn coalesce into one write)."
    )
    return table


# -- many objects -------------------------------------------------------------------------------
async def _phase(address: str, names: list[str], callers: int, method: str = "increment",
                 expect: int | None = None) -> dict[str, float]:
    """Call ``method`` once on every named object, ``callers`` at a time; latency per call."""
    async with duro.client.connect(node=address, app=COUNTER_APP) as c:
        ns = c.namespace("COUNTER")
        stubs = [ns.get_by_name(n) for n in names]
        await ns.get_by_name("conn-warmup").get()  # open the stream outside the timed window
        latencies: list[int] = []
        it = iter(stubs)
        bad = 0

        async def caller() -> None:
            nonlocal bad
            record = latencies.append
            for stub in it:
                t0 = clock()
                v = await getattr(stub, method)()
                record(clock() - t0)
                if expect is not None and v != expect:
                    bad += 1

        cpu0 = os.times()
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - t0
        cpu1 = os.times()
    assert bad == 0, f"{bad} objects had an unexpected value (expected {expect})"
    out = {"ops_s": len(latencies) / elapsed, "ops": len(latencies), "elapsed_s": elapsed,
           "client_cpu": ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / elapsed}
    out.update(lat_summary(latencies))
    return out


async def _node_phase(node, coro) -> dict[str, float]:  # noqa: ANN001
    c0, t0 = node.cpu_seconds(), time.perf_counter()
    res = await coro
    res["node_cpu"] = (node.cpu_seconds() - c0) / (time.perf_counter() - t0)
    return res


async def bench_many_objects(args: argparse.Namespace, n_objects: int, callers: int) -> list[Table]:
    wal = "synced WAL" if args.sync else "unsynced WAL: process-crash durable only"
    cold, warm, act = [], [], []
    for r in range(args.runs):
        names = [f"obj-{i}" for i in range(n_objects)]
        rnd = random.Random(r)
        with tempfile.TemporaryDirectory(prefix="duro-bench-", dir=args.tmp) as tmp:
            data = Path(tmp) / "node"
            t_run = time.perf_counter()
            node = start_node(data, sync=args.sync)
            try:
                await _phase(node.address, names, callers, expect=1)  # write phase
            finally:
                node.stop()
            rnd.shuffle(names)
            node = start_node(data, sync=args.sync)
            try:
                c = await _node_phase(node, _phase(node.address, names, callers, expect=2))
                rnd.shuffle(names)
                w = await _node_phase(node, _phase(node.address, names, callers, expect=3))
            finally:
                node.stop()
            sample = names[: min(args.sample, n_objects)]
            node = start_node(data, sync=args.sync)
            try:
                ac = await _phase(node.address, sample, 1, method="get", expect=3)
                aw = await _phase(node.address, sample, 1, method="get", expect=3)
            finally:
                node.stop()
            a = {"cold_get_p50_ms": ac["p50_ms"], "cold_get_p99_ms": ac["p99_ms"],
                 "warm_get_p50_ms": aw["p50_ms"], "warm_get_p99_ms": aw["p99_ms"],
                 "activation_p50_ms": ac["p50_ms"] - aw["p50_ms"]}
            _log(f"objects={n_objects} run={r + 1} ({time.perf_counter() - t_run:.1f} s): "
                 f"cold={json.dumps(_round(c))} warm={json.dumps(_round(w))} "
                 f"activation={json.dumps(_round(a))}")
        cold.append(c)
        warm.append(w)
        act.append(a)
    t1 = Table(
        title=f"Increments over {n_objects:,} objects, {callers} callers ({wal})",
        command=command_line(),
        columns=[("ops/s", "ops_s", 0), ("p50 ms", "p50_ms", 3), ("p99 ms", "p99_ms", 3),
                 ("node CPU", "node_cpu", 2), ("client CPU", "client_cpu", 2)],
    )
    t1.add(f"cold (first touch after restart), {n_objects:,} objects", cold)
    t1.add(f"warm (second touch), {n_objects:,} objects", warm)
    t2 = Table(
        title=f"Cold activation, state on disk ({n_objects:,}-object data set, one caller, "
              f"`get()` on {min(args.sample, n_objects):,} objects)",
        command=command_line(),
        columns=[("cold get p50 ms", "cold_get_p50_ms", 3), ("cold get p99 ms", "cold_get_p99_ms", 3),
                 ("warm get p50 ms", "warm_get_p50_ms", 3), ("warm get p99 ms", "warm_get_p99_ms", 3),
                 ("activation p50 ms (cold − warm)", "activation_p50_ms", 3)],
    )
    t2.add(f"{n_objects:,} objects", act)
    return [t1, t2]


async def _all(args: argparse.Namespace) -> list[Table]:
    tables: list[Table] = []
    for n in args.objects:
        if n == 1:
            tables.append(await bench_one_object(args))
        else:
            for callers in args.callers:
                tables.extend(await bench_many_objects(args, n, callers))
    return tables


# -- main ---------------------------------------------------------------------------------------
def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--callers", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--objects", type=int, nargs="+", default=[1],
                   help="1 = all callers on one object; N > 1 = spread over N objects")
    p.add_argument("--runs", type=int, default=3)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=float, default=None, help="measured seconds per run (1 object)")
    g.add_argument("--ops", type=int, default=None, help="measured calls per run (1 object)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring (1 object)")
    p.add_argument("--sample", type=int, default=1000, help="objects in the cold-activation sample")
    p.add_argument("--sync", action=argparse.BooleanOptionalAction, default=True,
                   help="node with synced WAL (default) or --no-sync: unsynced WAL, "
                        "process-crash durable only")
    p.add_argument("--tmp", default=None, help="directory for node data dirs (default: $TMPDIR)")
    p.add_argument("--out", default=None, help="append the markdown tables to this file")
    args = p.parse_args()
    if args.seconds is None and args.ops is None:
        args.seconds = 5.0

    # One event loop for the whole benchmark: grpc.aio binds its poller to the first loop it
    # sees. Node processes are started and stopped (blocking) between the timed windows.
    tables: list[Table] = uvloop.run(_all(args))
    text = "\n".join(t.render() for t in tables)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
