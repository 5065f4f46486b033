#!/usr/bin/env python3
"""Replication benchmarks (issue 9): replicated writes, failover, re-replication.

    python bench/bench_replication.py                          # every part, median of 3 runs
    python bench/bench_replication.py --only writes --runs 3 --seconds 5
    python bench/bench_replication.py --only failover --runs 3 --objects 1000 --writers 64
    python bench/bench_replication.py --only refill --runs 3 --fill-mb 200
    python bench/bench_replication.py --only replace --runs 3

A real cluster on 127.0.0.1 per run (``duro.dev.LocalCluster``: etcd with fsync unless
``--etcd-no-fsync``, one placement replica with ``--rebalance false`` so no object moves, node
processes with synced WALs, no edges). The load generator is this process (uvloop), calling
through the client library from region us-east (``duro.client.connect(etcd=..., region=...)``),
so the objects it creates live in us-east-0's home replica group. ``replicas=3`` uses
``min_in_sync=2`` (the defaults); ``replicas=1`` uses ``min_in_sync=1``.

* **writes**: increments of one object (examples/counter) by 1, 8 and 64 callers for
  ``--seconds`` each (after ``--warmup``), three nodes in three regions, with ``replicas=1`` and
  ``replicas=3`` in the same run (the two clusters one after the other, their order alternating
  between runs). ops/s, latency p50/p99, CPU of the primary, the followers and this process, and
  replication batches shipped per second (the primary's metrics).
* **failover**: three nodes (one per region), ``replicas=3``, ``--lease-ttl`` (2 s, the minimum
  etcd grants); ``--objects`` Counters created from us-east (all in us-east-0's group), then
  ``--writers`` writers increment them continuously (object i belongs to writer i mod N, which
  cycles over its objects). After ``--pre`` s us-east-0 is SIGKILLed. Per object: the time from
  the kill to the acknowledgement of its first increment *invoked after the kill*; p50/p99/max
  over the objects. Also: when this client saw the node's registration expire and the group's
  new configuration, the calls that failed, and, at the end, that every object's value is at
  least its highest acknowledged one (no acknowledged write lost). Then the same kill with
  ``replicas=1`` for contrast: its objects have no other copy; the node is restarted
  ``--r1-restart-after`` s after the kill, and the same per-object times are measured.
* **refill** (re-replication throughput): three nodes, ``replicas=3``, nodes started with
  ``--replica-log-mb 0`` (no log of recent batches: a wiped copy can only be refilled by
  snapshot). ``--fill-mb`` MiB are written to us-east-0's group (``fill`` of a small app like
  tests/cluster/apps/migapp but with random, incompressible values of ``--value-size`` B, 1 MiB
  per object); a follower of that group is killed, its
  data directory wiped (all but ``node_id``), the groups are left to settle without it, and it is
  restarted. Time from the restart to: its READY line, its copy of us-east-0's group back in
  ``in_sync`` under its new storage id, every group in sync with three copies again
  (``wait_replicated``); snapshot bytes sent (nodes' ``duro_replication_snapshot_bytes_total``),
  MiB/s, and the primary's own timing of the snapshot (its INFO log line).
* **replace** (a node lost for good): four nodes in one region (four zones), ``replicas=3``,
  placement ``--replace-after`` ``--replace-after`` s; ``--replace-objects`` objects with
  ``--replace-kib`` KiB each, created from us-east (spread over the groups), ``--replace-writers``
  writers on them. A node that is a follower of us-east-0's group is SIGKILLed and never
  restarted: the time from the kill until every group has three in-sync members again, none of
  them the dead node; also until its own group failed over and until the last group named a
  replacement.

Per-run figures go to stderr as JSON lines; the tables (median over runs, min–max) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402
from common import (  # noqa: E402
    ROOT,
    ForeignCpu,
    Table,
    command_line,
    cpu_seconds,
    lat_summary,
    percentile,
    wait_quiet,
)

import duro.client  # noqa: E402
from duro import tls  # noqa: E402
from duro.dev import LocalCluster  # noqa: E402
from duro.errors import DuroError  # noqa: E402
from duro.node.membership import node_key  # noqa: E402
from duro.topology.etcdkv import get_value  # noqa: E402
from duro.topology.groups import GroupConfig, group_key  # noqa: E402

EXAMPLES = ROOT / "examples"
# The refill and replace parts' app, written into each run's directory: like
# tests/cluster/apps/migapp's Acc, but ``fill`` stores random (incompressible) bytes, so that
# RocksDB's compression does not shrink what the disks write (migapp's ``b"x" * size`` values
# compress about 10:1).
BLOB_APP = """\
import os

from duro import DurableObject


class Blob(DurableObject):
    async def add(self, by: int = 1) -> int:
        value = await self.ctx.storage.get("value", 0) + by
        self.ctx.storage.put("value", value)
        return value

    async def get(self) -> int:
        return await self.ctx.storage.get("value", 0)

    async def fill(self, n_keys: int, size: int) -> int:
        for i in range(0, n_keys, 128):
            self.ctx.storage.put_many({f"blob:{j:08d}": os.urandom(size)
                                       for j in range(i, min(n_keys, i + 128))})
        return n_keys
"""


def blob_app(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "blobapp.py"
    path.write_text(BLOB_APP)
    return path
THREE = ("us-east", "eu-west", "ap-south")
HOME = "us-east-0"
PARTS = ["writes", "failover", "refill", "replace"]

clock = time.perf_counter_ns


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


def make_cluster(root: Path, opts: argparse.Namespace, *, replicas: int, app: Path,
                 regions: tuple[str, ...] = THREE, nodes_per_region: int = 1,
                 node_args: tuple[str, ...] = (), placement_args: tuple[str, ...] = ()
                 ) -> LocalCluster:
    cluster = LocalCluster(
        root, app=app, regions=regions, nodes_per_region=nodes_per_region, replicas=replicas,
        min_in_sync=min(2, replicas), lease_ttl=opts.lease_ttl, edges=False,
        etcd_no_fsync=opts.etcd_no_fsync, node_args=(*node_args, *shlex.split(opts.node_args)),
        placement_args=("--rebalance", "false", *placement_args),
    )
    tls.configure(cluster.client_tls)  # this process calls the cluster as admin (mTLS)
    return cluster


def metrics(cluster: LocalCluster, i: int) -> dict[str, float]:
    """Node ``i``'s Prometheus samples (name without labels -> value, summed over labels)."""
    port = cluster.nodes[i].ready.get("metrics_port")
    out: dict[str, float] = {}
    if not port or not cluster.nodes[i].running:
        return out
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            key = name.split("{", 1)[0]
            out[key] = out.get(key, 0.0) + float(value)
    return out


def pid(cluster: LocalCluster, i: int) -> int:
    proc = cluster.nodes[i].proc
    assert proc is not None
    return proc.pid


def active_objects(cluster: LocalCluster) -> dict[str, int]:
    """Objects in memory per running node (its metrics): where the objects were placed."""
    return {n.name: int(metrics(cluster, i).get("duro_runtime_active_objects", 0))
            for i, n in enumerate(cluster.nodes) if n.running}


async def check_on_home(cluster: LocalCluster, n_objects: int) -> Any:
    """Every object this script made runs on us-east-0, which leads its home group (and no
    other): they live in that group. Returns the group's configuration."""
    active = active_objects(cluster)
    g = await home_group(cluster, HOME)
    led = [x.gid for x in await cluster.groups() if x.primary == HOME]
    if active.get(HOME) != n_objects or sum(active.values()) != n_objects or led != [g.gid]:
        raise RuntimeError(f"objects not all in {HOME}'s group: active {active}, groups led "
                           f"by {HOME}: {led}, its home group {g}")
    return g


async def home_group(cluster: LocalCluster, node: str) -> Any:
    return next(g for g in await cluster.groups() if g.home == node)


def wipe(cluster: LocalCluster, i: int) -> None:
    """Delete node ``i``'s data directory except its ``node_id`` (a lost disk, same identity)."""
    data = cluster.root / "nodes" / cluster.nodes[i].name
    keep = (data / "node_id").read_text()
    shutil.rmtree(data)
    data.mkdir()
    (data / "node_id").write_text(keep)


def du_mib(path: Path) -> float:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total / 2**20


@contextlib.contextmanager
def run_dir(opts: argparse.Namespace) -> Iterator[str]:
    """A fresh directory for one run's cluster: removed afterwards unless ``--keep``. First
    waits until other processes leave the CPUs alone (``--quiet-*``)."""
    if opts.quiet_timeout > 0:
        wait_quiet(opts.quiet_limit, timeout=opts.quiet_timeout, log=_log)
    if opts.keep:
        path = tempfile.mkdtemp(prefix="bench-repl-", dir=opts.tmp)
        _log(f"cluster directory: {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bench-repl-", dir=opts.tmp) as path:
        yield path


DISCARDED: list[str] = []  # runs measured again because other processes used the CPUs


async def clean_run(opts: argparse.Namespace, what: str,
                    fn: Callable[[Path], Awaitable[Any]],
                    other_of: Callable[[Any], float] = lambda r: r["other_cpu"]) -> Any:
    """One run in a fresh directory; measured again (up to ``--retries`` times) if processes
    outside the benchmark used more than ``--max-other`` cores meanwhile (another engineer's
    test suite on the same 2 vCPUs makes a run worthless)."""
    for attempt in range(opts.retries + 1):
        with run_dir(opts) as tmp:
            res = await fn(Path(tmp))
        other = other_of(res)
        if other <= opts.max_other:
            return res
        if attempt == opts.retries:
            DISCARDED.append(f"{what}: kept although other processes used {other:.2f} cores "
                             "(no retries left)")
            _log(DISCARDED[-1])
            return res
        DISCARDED.append(f"{what}: measured again (other processes used {other:.2f} cores)")
        _log(DISCARDED[-1])
    raise AssertionError("unreachable")


# -- a. writes ----------------------------------------------------------------------------------

async def writes_cluster(opts: argparse.Namespace, root: Path, replicas: int
                         ) -> dict[int, dict[str, float]]:
    cluster = make_cluster(root, opts, replicas=replicas, app=EXAMPLES)
    await cluster.start()
    out: dict[int, dict[str, float]] = {}
    try:
        prim = cluster.node_by_id(HOME)
        followers = [i for i in range(len(cluster.nodes)) if i != prim]
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            ns = c.namespace("COUNTER")
            first = ns.get_by_name("hot")
            await first.increment()
            g = await check_on_home(cluster, 1)
            copies = len(g.in_sync)
            acked = [1]
            for callers in opts.callers:
                stubs = [ns.get_by_name("hot") for _ in range(callers)]
                lat: list[int] = []
                state = {"measuring": False, "stop": False}

                async def caller(stub: Any, lat: list[int] = lat,
                                 state: dict[str, bool] = state) -> None:
                    record = lat.append
                    while not state["stop"]:
                        t0 = clock()
                        await stub.increment()
                        acked[0] += 1
                        if state["measuring"]:
                            record(clock() - t0)

                tasks = [asyncio.ensure_future(caller(s)) for s in stubs]
                await asyncio.sleep(opts.warmup)
                m0 = metrics(cluster, prim)
                other = ForeignCpu()
                cpu0 = {i: cpu_seconds(pid(cluster, i)) for i in range(len(cluster.nodes))}
                me0 = time.process_time()
                t0 = time.perf_counter()
                state["measuring"] = True
                await asyncio.sleep(opts.seconds)
                state["measuring"] = False
                wall = time.perf_counter() - t0
                n = len(lat)
                me1 = time.process_time()
                cpu1 = {i: cpu_seconds(pid(cluster, i)) for i in range(len(cluster.nodes))}
                m1 = metrics(cluster, prim)
                state["stop"] = True
                await asyncio.gather(*tasks)
                shipped = "duro_replication_batches_shipped_total"
                commits = "duro_storage_commits_total"
                res = {"ops_s": n / wall, **lat_summary(lat[:n]), "copies": copies,
                       "primary_cpu": (cpu1[prim] - cpu0[prim]) / wall,
                       "followers_cpu": sum(cpu1[i] - cpu0[i] for i in followers) / wall,
                       "client_cpu": (me1 - me0) / wall, "other_cpu": other.cores(),
                       "commits_s": (m1.get(commits, 0) - m0.get(commits, 0)) / wall,
                       "shipped_s": (m1.get(shipped, 0) - m0.get(shipped, 0)) / wall}
                out[callers] = res
                _log(f"writes replicas={replicas} callers={callers}: {json.dumps(_round(res))}")
            final = await first.get()  # every acknowledged increment is there
            assert final >= acked[0], (final, acked[0])
    finally:
        await cluster.stop()
    return out


async def bench_writes(opts: argparse.Namespace) -> Table:
    rows: dict[tuple[int, int], list[dict[str, float]]] = {}
    for run in range(opts.runs):
        order = [1, 3] if run % 2 == 0 else [3, 1]
        for replicas in order:
            res = await clean_run(
                opts, f"writes run {run + 1} replicas={replicas}",
                lambda d, r=replicas: writes_cluster(opts, d, r),
                lambda out: max(x["other_cpu"] for x in out.values()))
            for callers, r in res.items():
                rows.setdefault((callers, replicas), []).append(r)
    t = Table("Increments on one object (us-east-0's group), replicas=1 vs replicas=3",
              command_line(), [
                  ("copies", "copies", 0), ("ops/s", "ops_s", 0), ("p50 ms", "p50_ms", 3),
                  ("p99 ms", "p99_ms", 3), ("primary CPU", "primary_cpu", 2),
                  ("followers CPU", "followers_cpu", 2), ("client CPU", "client_cpu", 2),
                  ("group commits/s", "commits_s", 0), ("batches shipped/s", "shipped_s", 0),
                  ("other CPU", "other_cpu", 2)])
    for callers in opts.callers:
        for replicas in (1, 3):
            t.add(f"{callers} caller{'s' if callers > 1 else ''}, replicas={replicas}",
                  rows[(callers, replicas)])
    # ratios replicas=3 / replicas=1, per run (same run = same machine state)
    ratio_lines = []
    for callers in opts.callers:
        r1, r3 = rows[(callers, 1)], rows[(callers, 3)]
        ops = sorted(b["ops_s"] / a["ops_s"] for a, b in zip(r1, r3, strict=True))
        p50 = sorted(b["p50_ms"] / a["p50_ms"] for a, b in zip(r1, r3, strict=True))
        ratio_lines.append(f"{callers} callers: ops/s ×{ops[len(ops) // 2]:.2f} "
                           f"({ops[0]:.2f}–{ops[-1]:.2f}), p50 ×{p50[len(p50) // 2]:.2f} "
                           f"({p50[0]:.2f}–{p50[-1]:.2f})")
    t.notes.append("Three nodes in three regions in both configurations; the object is created "
                   "from us-east, so it lives in us-east-0's group (primary us-east-0). CPU: "
                   "cores busy (CPU s per wall s) during the measurement; followers = the two "
                   "other nodes together; other = processes outside this benchmark (another "
                   "test suite on the machine).")
    t.notes.append("replicas=3 against replicas=1 (per-run ratio, median (min–max)): "
                   + "; ".join(ratio_lines))
    return t


# -- b. failover --------------------------------------------------------------------------------

async def failover_run(opts: argparse.Namespace, root: Path, replicas: int) -> dict[str, float]:
    cluster = make_cluster(root, opts, replicas=replicas, app=EXAMPLES)
    await cluster.start()
    try:
        victim = cluster.node_by_id(HOME)
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            ns = c.namespace("COUNTER")
            names = [f"f{i}" for i in range(opts.objects)]
            stubs = {n: ns.get_by_name(n) for n in names}
            sem = asyncio.Semaphore(64)

            async def create(n: str) -> None:
                async with sem:
                    await stubs[n].increment()

            await asyncio.gather(*(create(n) for n in names))
            g0 = await check_on_home(cluster, len(names))
            gid, epoch0 = g0.gid, g0.epoch
            acked_max = {n: 1 for n in names}
            first_after: dict[str, float] = {}
            errors: Counter[str] = Counter()
            st: dict[str, Any] = {"kill": None, "stop": False, "acks": 0, "acks_pre": 0}

            async def writer(mine: list[str]) -> None:
                while not st["stop"]:
                    for n in mine:
                        if st["stop"]:
                            return
                        t0 = time.monotonic()
                        try:
                            v = await stubs[n].increment()
                        except DuroError as exc:
                            # counted; a stub is broken by an error: the next call gets a new one
                            errors[f"{type(exc).__name__}: {str(exc)[:90]}"] += 1
                            stubs[n] = ns.get_by_name(n)
                            continue
                        t1 = time.monotonic()
                        st["acks"] += 1
                        acked_max[n] = max(acked_max[n], v)
                        k = st["kill"]
                        if k is not None and t0 >= k and n not in first_after:
                            first_after[n] = t1 - k

            seen: dict[str, float] = {}

            async def watch() -> None:
                """When etcd shows us-east-0's registration gone and the group's next config."""
                async with cluster.etcd_client() as etcd:
                    while not st["stop"]:
                        k = st["kill"]
                        if k is not None and "config" not in seen:
                            node = await get_value(etcd, node_key(cluster.cluster, HOME))
                            now = time.monotonic()
                            if "lease" not in seen and node is None:
                                seen["lease"] = now - k
                            raw = await get_value(etcd, group_key(cluster.cluster, gid))
                            g = GroupConfig.from_json(raw) if raw else None
                            if g is not None and g.epoch > epoch0:
                                seen["config"] = time.monotonic() - k
                                seen["new_primary"] = g.primary  # type: ignore[assignment]
                        await asyncio.sleep(0.01)

            tasks = [asyncio.ensure_future(writer(names[w::opts.writers]))
                     for w in range(opts.writers)]
            wt = asyncio.ensure_future(watch())
            await asyncio.sleep(opts.pre)
            pre_rate = st["acks"] / opts.pre
            other = ForeignCpu()
            st["kill"] = time.monotonic()
            await cluster.kill_node(victim)
            restart = ready = float("nan")
            if replicas == 1:
                await asyncio.sleep(opts.r1_restart_after)
                restart = time.monotonic() - st["kill"]
                await cluster.start_node(victim)
                ready = time.monotonic() - st["kill"]
            deadline = time.monotonic() + opts.failover_timeout
            while len(first_after) < len(names) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            settle = time.monotonic()
            await asyncio.sleep(1.0)  # throughput after the failover
            post_acks0 = st["acks"]
            await asyncio.sleep(2.0)
            post_rate = (st["acks"] - post_acks0) / 2.0
            other_cpu = other.cores()
            st["stop"] = True
            await asyncio.gather(*tasks, return_exceptions=True)
            wt.cancel()
            # No acknowledged increment lost: every value at least its highest acknowledged one.
            lost = 0
            for i in range(0, len(names), 64):
                part = names[i:i + 64]
                vals = await asyncio.gather(*(stubs[n].get() for n in part))
                lost += sum(1 for n, v in zip(part, vals, strict=True) if v < acked_max[n])
            g_end = next(x for x in await cluster.groups() if x.gid == gid)
        missing = len(names) - len(first_after)
        times = sorted(first_after.values())
        res = {
            "objects": len(names), "missing": missing,
            "p50_s": percentile(times, 50), "p99_s": percentile(times, 99),
            "max_s": times[-1] if times else float("nan"),
            "min_s": times[0] if times else float("nan"),
            "lease_s": seen.get("lease", float("nan")),
            "config_s": seen.get("config", float("nan")),
            "restart_s": restart, "ready_s": ready,
            "failed_calls": sum(errors.values()), "lost": lost,
            "pre_ops_s": pre_rate, "post_ops_s": post_rate,
            "settle_s": settle - st["kill"], "other_cpu": other_cpu,
        }
        if replicas == 1 and times:
            res["after_ready_p50_s"] = percentile(times, 50) - ready
            res["after_ready_max_s"] = times[-1] - ready
        _log(f"failover replicas={replicas}: {json.dumps(_round(res))} new primary "
             f"{seen.get('new_primary')} epoch {epoch0}->{g_end.epoch if g_end else '?'}")
        for e, k in errors.most_common(6):
            _log(f"  failed call x{k}: {e}")
        return res
    finally:
        await cluster.stop()


async def bench_failover(opts: argparse.Namespace) -> Table:
    rows: dict[int, list[dict[str, float]]] = {3: [], 1: []}
    for run in range(opts.runs):
        for replicas in opts.failover_replicas:
            rows.setdefault(replicas, []).append(await clean_run(
                opts, f"failover run {run + 1} replicas={replicas}",
                lambda d, r=replicas: failover_run(opts, d, r)))
    t = Table(f"SIGKILL of the primary: {opts.objects} objects, {opts.writers} writers, "
              f"lease TTL {opts.lease_ttl} s", command_line(), [
                  ("kill → first ack p50 s", "p50_s", 2), ("p99 s", "p99_s", 2),
                  ("max s", "max_s", 2), ("min s", "min_s", 2),
                  ("node key gone s", "lease_s", 2), ("new config in etcd s", "config_s", 2),
                  ("restarted at s", "restart_s", 2), ("READY at s", "ready_s", 2),
                  ("objects never acked", "missing", 0), ("failed calls", "failed_calls", 0),
                  ("acked writes lost", "lost", 0),
                  ("writes/s before", "pre_ops_s", 0), ("writes/s after", "post_ops_s", 0),
                  ("other CPU", "other_cpu", 2)])
    for replicas in opts.failover_replicas:
        if rows.get(replicas):
            label = ("replicas=3, three nodes (one per region)" if replicas == 3 else
                     f"replicas={replicas}, node restarted {opts.r1_restart_after:g} s after "
                     "the kill")
            t.add(label, rows[replicas])
    t.notes.append("Per object: from the SIGKILL to the acknowledgement of its first increment "
                   "invoked after the kill; p50/p99/max over the objects of a run. 'node key "
                   "gone' / 'new config in etcd': when etcd (polled every 10 ms) no longer had "
                   "us-east-0's registration (its lease expired) and had the group's next "
                   "epoch. 'writes/s after': the 2 s after every object was acknowledged again "
                   "(plus 1 s).")
    return t


# -- c(i). refill by snapshot -------------------------------------------------------------------

def log_time(line: str) -> float:
    """The wall-clock time (epoch s) of a node log line (``2026-11-29T17:50:07.140Z ...``)."""
    return datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00")).timestamp()


SNAP_RE = re.compile(r"snapshot of (\d+) keys \((\d+) bytes\) installed on (\S+) in (\d+) ms")


async def fill_group(c: Any, prefix: str, mib: float, value_size: int, per_object: int,
                     concurrency: int = 4) -> tuple[list[Any], float]:
    """Write ``mib`` MiB into new objects (migapp ``fill``); returns (stubs, seconds)."""
    ns = c.namespace("BLOB")
    n_objects = max(1, int(round(mib * 2**20 / per_object)))
    keys = max(1, per_object // value_size)
    stubs = [ns.get_by_name(f"{prefix}{i}") for i in range(n_objects)]
    sem = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()

    async def one(s: Any) -> None:
        async with sem:
            await s.add()
            await s.fill(keys, value_size)

    await asyncio.gather(*(one(s) for s in stubs))
    return stubs, time.perf_counter() - t0


async def refill_run(opts: argparse.Namespace, root: Path) -> dict[str, float]:
    cluster = make_cluster(root / "cluster", opts, replicas=3, app=blob_app(root / "app"),
                           node_args=("--replica-log-mb", "0", "--log-level", "INFO"))
    await cluster.start()
    try:
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            stubs, fill_s = await fill_group(c, "big", opts.fill_mb, opts.value_size, 2**20)
            g = await check_on_home(cluster, len(stubs))
            prim = cluster.node_by_id(HOME)
            name = g.replicas[1]  # a follower of us-east-0's group
            victim = cluster.node_by_id(name)
            prim_mib = du_mib(cluster.root / "nodes" / HOME)
            before = {x.gid: x.sid_of(name) for x in await cluster.groups()}
            await cluster.kill_node(victim)
            wipe(cluster, victim)
            # Writes after the kill push it out of us-east-0's group's in_sync (ack timeout);
            # its own group fails over once its lease expires. Wait for both before the restart
            # (groups without writes may keep its old entry: it counts for nothing, a new storage
            # id is what the measurement waits for).
            t_wait = time.monotonic() + 60
            while True:
                await asyncio.gather(*(s.add() for s in stubs[:8]))
                gs = await cluster.groups()
                if all(x.primary != name for x in gs) and all(
                        name not in x.in_sync_nodes for x in gs if x.gid == g.gid):
                    break
                if time.monotonic() > t_wait:
                    raise TimeoutError(f"{name} still in a group after 60 s: {gs}")
                await asyncio.sleep(0.2)
            snap0 = sum(metrics(cluster, i).get("duro_replication_snapshot_bytes_total", 0)
                        for i in range(len(cluster.nodes)) if i != victim)
            log_path = cluster.nodes[prim].log_path
            log_off = log_path.stat().st_size
            other = ForeignCpu()
            t0, w0 = time.monotonic(), time.time()
            await cluster.start_node(victim)
            ready = time.monotonic() - t0
            t_group = float("nan")
            t_all = float("nan")
            deadline = time.monotonic() + opts.refill_timeout
            while time.monotonic() < deadline:
                gs = await cluster.groups()
                now = time.monotonic() - t0
                home = next(x for x in gs if x.gid == g.gid)
                new_sid = home.sid_of(name)
                if math.isnan(t_group) and new_sid and new_sid != before.get(g.gid):
                    t_group = now
                if all(len(x.in_sync) >= 3 and x.sid_of(name) not in (None, before.get(x.gid))
                       for x in gs):
                    t_all = now
                    break
                await asyncio.sleep(0.02)
            await cluster.wait_replicated(opts.refill_timeout)
            t_done = time.monotonic() - t0
            other_cpu = other.cores()
            snap1 = sum(metrics(cluster, i).get("duro_replication_snapshot_bytes_total", 0)
                        for i in range(len(cluster.nodes)) if i != victim)
            snap_log = []
            marks: dict[str, float] = {}  # the primary's log: when the snapshot started, joined
            with open(log_path, "rb") as f:
                f.seek(log_off)
                for line in f.read().decode(errors="replace").splitlines():
                    m = SNAP_RE.search(line)
                    if m and m.group(3) == name:
                        snap_log.append((int(m.group(1)), int(m.group(2)), int(m.group(4))))
                    for key, text in (("start", f"group {g.gid}: snapshot to {name} "),
                                      ("joined", f"group {g.gid}: added {name} to in_sync")):
                        if key not in marks and text in line:
                            marks[key] = log_time(line) - w0
            # the refilled copy holds the data: read one object's value back through the primary
            assert await stubs[0].get() >= 1
        snap_mib = (snap1 - snap0) / 2**20
        big = max(snap_log, key=lambda x: x[1]) if snap_log else (0, 0, 0)
        res = {"fill_mib": opts.fill_mb, "fill_mib_s": opts.fill_mb / fill_s,
               "primary_dir_mib": prim_mib,
               "ready_s": ready, "snap_start_s": marks.get("start", float("nan")),
               "joined_s": marks.get("joined", float("nan")), "group_s": t_group,
               "all_s": t_all, "done_s": t_done,
               "snap_mib": snap_mib, "snap_keys": big[0],
               "mib_s": snap_mib / t_group if not math.isnan(t_group) else float("nan"),
               "install_s": big[2] / 1e3,
               "install_mib_s": (big[1] / 2**20) / (big[2] / 1e3) if big[2] else float("nan"),
               "snapshots": len(snap_log), "other_cpu": other_cpu}
        _log(f"refill: {json.dumps(_round(res))} snapshots to {name}: {snap_log}")
        return res
    finally:
        await cluster.stop()


async def bench_refill(opts: argparse.Namespace) -> Table:
    runs = []
    for run in range(opts.runs):
        runs.append(await clean_run(opts, f"refill run {run + 1}",
                                    lambda d: refill_run(opts, d)))
    t = Table(f"Refill of a wiped follower by snapshot ({opts.fill_mb:g} MiB in the group)",
              command_line(), [
                  ("restart → READY s", "ready_s", 2),
                  ("restart → snapshot starts s", "snap_start_s", 2),
                  ("restart → primary adds it to in_sync s", "joined_s", 2),
                  ("restart → group in sync s", "group_s", 2),
                  ("restart → all groups in sync s", "all_s", 2),
                  ("restart → wait_replicated s", "done_s", 2),
                  ("snapshot MiB sent", "snap_mib", 1),
                  ("MiB/s (restart → in sync)", "mib_s", 1),
                  ("snapshot install s (primary's log)", "install_s", 2),
                  ("MiB/s (install)", "install_mib_s", 1),
                  ("keys", "snap_keys", 0),
                  ("primary data dir MiB", "primary_dir_mib", 0),
                  ("fill MiB/s (3 copies)", "fill_mib_s", 1), ("other CPU", "other_cpu", 2)])
    t.add("three nodes, replicas=3, --replica-log-mb 0", runs)
    t.notes.append("'group in sync': the follower is in us-east-0's group's in_sync under its "
                   "new storage id; 'all groups': every group has three in-sync copies again, "
                   "the new one among them; 'wait_replicated': and every node leads its home "
                   "group again (the wiped node's own group handed back). 'snapshot starts' "
                   "and 'primary adds it': the primary's INFO log lines (wall clock). Snapshot "
                   "MiB: the increase of duro_replication_snapshot_bytes_total over the other "
                   "nodes. 'install': the primary's INFO log line for the big snapshot (first "
                   "chunk to installed).")
    return t


# -- c(ii). replacement of a lost node ---------------------------------------------------------

async def replace_run(opts: argparse.Namespace, root: Path) -> dict[str, float]:
    cluster = make_cluster(root / "cluster", opts, replicas=3, app=blob_app(root / "app"),
                           regions=("us-east",),
                           nodes_per_region=4,
                           placement_args=("--replace-after", str(opts.replace_after)))
    await cluster.start()
    try:
        async with duro.client.connect(etcd=cluster.etcd.endpoint, region="us-east") as c:
            stubs, _ = await fill_group(c, "r", opts.replace_objects * opts.replace_kib / 1024,
                                        4096, opts.replace_kib * 1024, concurrency=8)
            per_node = active_objects(cluster)  # objects per primary (one group each)
            home = await home_group(cluster, HOME)
            name = home.replicas[1]
            victim = cluster.node_by_id(name)
            own = (await home_group(cluster, name)).gid
            member_of = [x.gid for x in await cluster.groups() if name in x.replicas]
            errors: Counter[str] = Counter()
            st = {"stop": False, "acks": 0}

            async def writer(k: int) -> None:
                i = k
                while not st["stop"]:
                    j = i % len(stubs)
                    try:
                        await stubs[j].add()
                        st["acks"] += 1
                    except DuroError as exc:
                        errors[f"{type(exc).__name__}: {str(exc)[:90]}"] += 1
                        stubs[j] = c.namespace("BLOB").get_by_name(f"r{j}")
                    i += opts.replace_writers

            tasks = [asyncio.ensure_future(writer(k)) for k in range(opts.replace_writers)]
            await asyncio.sleep(1.0)
            other = ForeignCpu()
            t0 = time.monotonic()
            await cluster.kill_node(victim)
            t_failover = t_replaced = t_done = float("nan")
            deadline = t0 + opts.replace_timeout
            while time.monotonic() < deadline:
                gs = await cluster.groups()
                now = time.monotonic() - t0
                mine = next(x for x in gs if x.gid == own)
                if math.isnan(t_failover) and mine.primary != name:
                    t_failover = now
                if math.isnan(t_replaced) and all(name not in x.replicas for x in gs):
                    t_replaced = now
                if all(len(x.in_sync) >= 3 and name not in x.in_sync_nodes
                       and name not in x.replicas for x in gs):
                    t_done = now
                    break
                await asyncio.sleep(0.05)
            other_cpu = other.cores()
            st["stop"] = True
            await asyncio.gather(*tasks)
            gs = await cluster.groups()
        res = {"groups": len(gs), "member_of": len(member_of),
               "data_mib": opts.replace_objects * opts.replace_kib / 1024,
               "failover_s": t_failover, "replaced_s": t_replaced, "done_s": t_done,
               "failed_calls": sum(errors.values()),
               "under_replicated_end": sum(1 for x in gs if len(x.in_sync) < 3),
               "other_cpu": other_cpu}
        _log(f"replace: {json.dumps(_round(res))} victim {name} (member of groups {member_of}, "
             f"home {own}); objects per node {per_node}; end: "
             + "; ".join(f"g{x.gid} p={x.primary} r={list(x.replicas)} "
                         f"in_sync={list(x.in_sync_nodes)}" for x in gs))
        for e, k in errors.most_common(6):
            _log(f"  failed call x{k}: {e}")
        return res
    finally:
        await cluster.stop()


async def bench_replace(opts: argparse.Namespace) -> Table:
    runs = []
    for run in range(opts.runs):
        runs.append(await clean_run(opts, f"replace run {run + 1}",
                                    lambda d: replace_run(opts, d)))
    t = Table(f"A node lost for good: 4 nodes, replicas=3, --replace-after {opts.replace_after:g}",
              command_line(), [
                  ("groups", "groups", 0), ("groups it was in", "member_of", 0),
                  ("data MiB", "data_mib", 0),
                  ("kill → its group failed over s", "failover_s", 2),
                  ("kill → replaced in every group s", "replaced_s", 2),
                  ("kill → 3 in-sync copies everywhere s", "done_s", 2),
                  ("failed calls", "failed_calls", 0), ("other CPU", "other_cpu", 2)])
    t.add(f"us-east × 4 nodes, lease TTL {opts.lease_ttl} s, {opts.replace_writers} writers", runs)
    t.notes.append("The killed node is a follower of us-east-0's group (and the primary of its "
                   "own home group). 'replaced': no group lists it in its replicas any more; "
                   "'3 in-sync copies': every group has three in-sync members, none of them the "
                   "dead node.")
    return t


# -- main ---------------------------------------------------------------------------------------

def machine() -> str:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!bench"], cwd=ROOT, check=False, capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    dirty = " + uncommitted changes outside bench/" if dirty else ""
    return (f"{platform.platform()}, {os.cpu_count()} CPUs ({model}), Python "
            f"{platform.python_version()}, commit {commit}{dirty}, "
            f"load average {os.getloadavg()[0]:.2f}")


async def main_async(opts: argparse.Namespace) -> None:
    only = opts.only or PARTS
    print(f"# {command_line()}\n# {machine()}", flush=True)
    tables = []
    if "writes" in only:
        tables.append(await bench_writes(opts))
        print(tables[-1].render(), flush=True)
    if "failover" in only:
        tables.append(await bench_failover(opts))
        print(tables[-1].render(), flush=True)
    if "refill" in only:
        tables.append(await bench_refill(opts))
        print(tables[-1].render(), flush=True)
    if "replace" in only:
        tables.append(await bench_replace(opts))
        print(tables[-1].render(), flush=True)
    for d in DISCARDED:
        print(f"# {d}", flush=True)
    print(f"# done, load average {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="*", choices=PARTS, help="parts to run (default: all)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--lease-ttl", type=int, default=2, help="node lease TTL, s (default 2)")
    p.add_argument("--etcd-no-fsync", action="store_true", help="etcd without fsync")
    p.add_argument("--node-args", default="",
                   help="extra node flags for every node, e.g. '--no-sync-wal' (experiments)")
    p.add_argument("--tmp", default=None, help="where cluster directories go")
    p.add_argument("--quiet-limit", type=float, default=0.15,
                   help="before each run, wait until other processes use fewer cores than this")
    p.add_argument("--quiet-timeout", type=float, default=900.0,
                   help="wait at most this long for a quiet machine (0: do not wait)")
    p.add_argument("--max-other", type=float, default=0.25,
                   help="measure a run again if other processes used more cores than this")
    p.add_argument("--retries", type=int, default=3, help="at most this many times per run")
    p.add_argument("--keep", action="store_true",
                   help="keep each run's cluster directory (logs, data) and print its path")
    # writes
    p.add_argument("--callers", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    # failover
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--writers", type=int, default=64)
    p.add_argument("--pre", type=float, default=3.0, help="seconds of writes before the kill")
    p.add_argument("--failover-replicas", type=int, nargs="+", default=[3, 1])
    p.add_argument("--r1-restart-after", type=float, default=5.0,
                   help="replicas=1: restart the killed node this many s after the kill")
    p.add_argument("--failover-timeout", type=float, default=40.0)
    # refill
    p.add_argument("--fill-mb", type=float, default=200.0)
    p.add_argument("--value-size", type=int, default=4096)
    p.add_argument("--refill-timeout", type=float, default=300.0)
    # replace
    p.add_argument("--replace-after", type=float, default=5.0)
    p.add_argument("--replace-objects", type=int, default=200)
    p.add_argument("--replace-kib", type=int, default=100)
    p.add_argument("--replace-writers", type=int, default=4)
    p.add_argument("--replace-timeout", type=float, default=120.0)
    opts = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.install()
    asyncio.run(main_async(opts))


if __name__ == "__main__":
    main()
