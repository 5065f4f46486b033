#!/usr/bin/env python3
"""Edge benchmarks (issue 4): HTTP increments through the edge, WebSocket fan-out, idle sockets.

    python bench/bench_edge.py                       # everything, median of 3 runs
    python bench/bench_edge.py --only http --runs 1  # one part
    python bench/bench_edge.py --workerd PATH        # also the same Counter in workerd
    python bench/bench_edge.py --only http workerd --replicas 1 3 --workerd PATH
                                                     # replicated (3 copies) vs 1, vs workerd

A real cluster (``duro.dev.LocalCluster``: etcd, placement, one node and one edge, synced WAL)
runs as separate processes; the load generator (aiohttp clients on uvloop) is this process.
``--replicas N`` (default 1): with N > 1 the cluster has three regions with one node each and
keeps N copies of every replica group (``min_in_sync`` 2), and only the us-east edge is kept
(the others are stopped after the start): the objects are created through it, so they live in
us-east-0's group and every acknowledged increment is fsynced on N nodes. Several values run one
after the other in each run (their rows are labelled with the number of copies).

* http: ``GET /counter/<name>/increment`` (the article's Counter) with 1, 8, 64 concurrent
  clients on one object for ``--seconds`` each; then 1,000 objects once each (cold: placement and
  activation) and again (warm), 64 clients. ops/s and latency p50/p99 per request.
* fanout: 100 chat clients in one room (examples/chat), 1,000 messages sent by the clients in
  turn; each message is delivered to all 100. Deliveries/s and delivery latency (send to receipt)
  p50/p99, with the senders paced at ``--fanout-rate`` messages/s, and at full speed.
* idle: 10,000 idle WebSockets held by the edge: its RSS growth per socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    ForeignCpu,
    Table,
    command_line,
    cpu_seconds,
    lat_summary,
    rss_bytes,
    wait_quiet,
)

from duro.dev import LocalCluster  # noqa: E402

WORKERD_DIR = Path(__file__).resolve().parent / "workerd"



class _HttpConn(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client (GET, Content-Length bodies): the load generator
    should cost far less CPU than the servers it measures (aiohttp's client costs about as much as
    the edge per request, on the same 2 vCPUs)."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buf[:head_end].lower()
        i = head.find(b"content-length:")
        length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
        end = head_end + 4 + length
        if len(self.buf) < end:
            return
        status = int(self.buf[9:12])
        self.buf = self.buf[end:]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def get(self, request: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        return await self.waiter


async def _connect(url: str) -> tuple[_HttpConn, bytes]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    _, proto = await asyncio.get_running_loop().create_connection(
        _HttpConn, u.hostname, u.port)
    return proto, u.path.encode()


def _get(path: bytes, host: bytes = b"127.0.0.1") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"


def _cpu(pids: int | list[int]) -> float:
    """CPU seconds of one process, or of several together."""
    return sum(cpu_seconds(p) for p in (pids if isinstance(pids, list) else [pids]))


async def http_load(url: str, clients: int, seconds: float,
                    pids: dict[str, int | list[int]] | None = None) -> dict[str, float]:
    lat: list[int] = []
    stop = time.monotonic() + seconds
    conns = [await _connect(url) for _ in range(clients)]

    async def one(proto: _HttpConn, path: bytes) -> None:
        req = _get(path)
        while time.monotonic() < stop:
            t = time.perf_counter_ns()
            status = await proto.get(req)
            assert status == 200, status
            lat.append(time.perf_counter_ns() - t)

    cpu0 = {k: _cpu(p) for k, p in (pids or {}).items()}
    other = ForeignCpu()
    me0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(p, path) for p, path in conns))
    wall = time.perf_counter() - t0
    cpu = {f"{k}_cpu": (_cpu(p) - cpu0[k]) / wall for k, p in (pids or {}).items()}
    cpu["client_cpu"] = (time.process_time() - me0) / wall
    cpu["other_cpu"] = other.cores()
    for p, _ in conns:
        assert p.transport is not None
        p.transport.close()
    return {"ops_s": len(lat) / wall, **lat_summary(lat), **cpu}


async def http_many(base: str, names: list[str], clients: int) -> dict[str, float]:
    lat: list[int] = []
    queue = list(reversed(names))
    conns = [await _connect(base + "/") for _ in range(clients)]

    async def one(proto: _HttpConn) -> None:
        while queue:
            req = _get(f"/counter/{queue.pop()}/increment".encode())
            t = time.perf_counter_ns()
            status = await proto.get(req)
            assert status == 200, status
            lat.append(time.perf_counter_ns() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p, _ in conns))
    wall = time.perf_counter() - t0
    for p, _ in conns:
        assert p.transport is not None
        p.transport.close()
    return {"ops_s": len(lat) / wall, **lat_summary(lat)}


async def fanout(cluster: LocalCluster, room: str, n_clients: int, n_messages: int,
                 rate: float | None) -> dict[str, float]:
    base = cluster.edge_url(0)
    pids = {"edge": cluster.edges[0].proc.pid, "node": cluster.nodes[0].proc.pid}  # type: ignore
    conn = aiohttp.TCPConnector(limit=0)
    lat: list[int] = []
    expected = n_clients * n_messages
    done = asyncio.get_running_loop().create_future()
    async with aiohttp.ClientSession(connector=conn) as http:
        socks = []
        for i in range(n_clients):
            ws = await http.ws_connect(
                f"{base}/chat/{room}/websocket?userId=u{i}&username=user{i}", max_msg_size=0)
            socks.append(ws)
        await asyncio.sleep(1.0)  # let the user_joined broadcasts settle
        for ws in socks:  # drop what is buffered (history, user_joined)
            while True:
                try:
                    await asyncio.wait_for(ws.receive(), 0.01)
                except asyncio.TimeoutError:
                    break
        got = 0

        async def reader(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal got
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("type") != "message":
                    continue
                lat.append(time.perf_counter_ns() - int(data["message"]["content"]))
                got += 1
                if got == expected and not done.done():
                    done.set_result(None)

        readers = [asyncio.ensure_future(reader(ws)) for ws in socks]
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        me0 = time.process_time()
        t0 = time.perf_counter()
        for k in range(n_messages):
            await socks[k % n_clients].send_str(
                json.dumps({"type": "message", "content": str(time.perf_counter_ns())}))
            if rate:
                delay = t0 + (k + 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        await asyncio.wait_for(done, 120)
        wall = time.perf_counter() - t0
        cpu = {f"{k}_cpu": (cpu_seconds(p) - cpu0[k]) / wall for k, p in pids.items()}
        cpu["client_cpu"] = (time.process_time() - me0) / wall
        for ws in socks:
            await ws.close()
        for r in readers:
            r.cancel()
    return {"deliveries_s": expected / wall, **lat_summary(lat), **cpu}


async def idle_sockets(cluster: LocalCluster, n: int) -> dict[str, float]:
    pid = cluster.edges[0].proc.pid  # type: ignore[union-attr]
    base = cluster.edge_url(0)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        warm = [await http.ws_connect(f"{base}/counter/idle/websocket") for _ in range(100)]
        await asyncio.sleep(1.0)
        before = rss_bytes(pid)
        socks = []
        for start in range(0, n, 500):
            socks += await asyncio.gather(*(http.ws_connect(f"{base}/counter/idle/websocket")
                                            for _ in range(min(500, n - start))))
        for ws in socks:
            await ws.receive_str()  # "current"
        await asyncio.sleep(2.0)
        after = rss_bytes(pid)
        async with http.get(f"{cluster.edge_admin_url(0)}/health") as r:
            held = (await r.json())["sockets"]
        for ws in socks + warm:
            await ws.close()
    return {"sockets_held": held, "edge_rss_mib": after / 2**20,
            "bytes_per_socket": (after - before) / n}


async def check_home(cluster: LocalCluster, replicas: int) -> None:
    """The object the edge created runs on us-east-0 (the only node with an object in memory),
    the primary of its home group only, which has ``replicas`` copies in sync."""
    import urllib.request

    active = {}
    for n in cluster.nodes:
        url = f"http://127.0.0.1:{n.ready['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            active[n.name] = sum(float(line.rpartition(" ")[2]) for line in r.read().decode()
                                 .splitlines() if line.startswith("duro_runtime_active_objects"))
    home = cluster.nodes[0].name
    groups = await cluster.groups()
    led = [g for g in groups if g.primary == home]
    if (active[home] < 1 or sum(active.values()) != active[home] or len(led) != 1
            or len(led[0].in_sync) != replicas):
        raise RuntimeError(f"the bench object is not in {home}'s group with {replicas} copies: "
                           f"active objects {active}, groups {groups}")


def start_workerd(binary: str, port: int, data: Path) -> subprocess.Popen:
    data.mkdir(parents=True, exist_ok=True)
    config = (WORKERD_DIR / "config.capnp").read_text().replace("@PORT@", str(port)).replace(
        "@DATA@", str(data))
    cfg = data / "config.capnp"
    cfg.write_text(config)
    shutil.copy(WORKERD_DIR / "counter.js", data / "counter.js")
    import socket

    try:  # a workerd left over from an interrupted run would be measured instead
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        pass
    else:
        raise RuntimeError(f"port {port} is already taken (a workerd left running?)")
    proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(data / "workerd.log", "wb"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("workerd did not start: " + (data / "workerd.log").read_text()[-2000:])


async def run(opts: argparse.Namespace) -> None:
    only = set(opts.only or ["http", "fanout", "idle", "workerd"])
    results: dict[str, list[dict[str, float]]] = {}

    this_run: dict[str, list[dict[str, float]]] = {}
    discarded: list[str] = []  # runs measured again: other processes used the CPUs

    def add(label: str, r: dict[str, float]) -> None:
        this_run.setdefault(label, []).append(r)
        print(f"  {label}: " + ", ".join(f"{k}={v:,.2f}" for k, v in r.items()), flush=True)

    for run_no in range(opts.runs):
        for attempt in range(opts.retries + 1):
            this_run.clear()
            print(f"run {run_no + 1}/{opts.runs}" + (f" (again: {attempt})" if attempt else ""),
                  flush=True)
            if opts.quiet_timeout > 0:  # another engineer's test suite would be measured too
                wait_quiet(opts.quiet_limit, timeout=opts.quiet_timeout,
                           log=lambda m: print("  " + m, flush=True))
            with tempfile.TemporaryDirectory(prefix="duro-bench-edge-") as tmp:
                for replicas in (opts.replicas if only & {"http", "fanout", "idle"} else []):
                    # rows named as before when only one copy is measured
                    sfx = "" if opts.replicas == [1] else (
                        f", {replicas} cop{'y' if replicas == 1 else 'ies'}")
                    regions = ("us-east",) if replicas == 1 else ("us-east", "eu-west", "ap-south")
                    cluster = LocalCluster(
                        Path(tmp) / f"cluster-{replicas}", app=ROOT / "examples", regions=regions,
                        replicas=replicas, min_in_sync=min(2, replicas),
                        etcd_no_fsync=True,
                        # Every bench client is 127.0.0.1: the per-client limit on new objects
                        # would measure itself in the cold row, not the cluster.
                        edge_args=("--no-access-log", "--new-objects-per-second", "0"),
                        node_args=("--max-queued-events", "100000"),
                    )
                    await cluster.start()
                    try:
                        for i in range(1, len(cluster.edges)):  # one edge: us-east's
                            await cluster.stop_edge(i)
                        base = cluster.edge_url(0)
                        if "http" in only:
                            async with aiohttp.ClientSession() as http:  # place + activate first
                                await (await http.get(f"{base}/counter/one/increment")).read()
                            await check_home(cluster, replicas)
                            pids: dict[str, int | list[int]] = {
                                "edge": cluster.edges[0].proc.pid,  # type: ignore[union-attr]
                                "node": cluster.nodes[0].proc.pid}  # type: ignore[union-attr]
                            if replicas > 1:
                                pids["followers"] = [n.proc.pid for n in cluster.nodes[1:]]  # type: ignore[union-attr]
                            for c in opts.clients:
                                url = f"{base}/counter/one/increment"
                                add(f"http one object, {c} clients{sfx}",
                                    await http_load(url, c, opts.seconds, pids))
                            names = [f"obj-{run_no}-{i}" for i in range(opts.objects)]
                            add(f"http {opts.objects} objects cold, 64 clients{sfx}",
                                await http_many(base, names, 64))
                            add(f"http {opts.objects} objects warm, 64 clients{sfx}",
                                await http_many(base, names, 64))
                        if "fanout" in only:
                            add(f"fanout {opts.fanout_clients}x{opts.fanout_messages}, "
                                f"paced {opts.fanout_rate:g} msg/s{sfx}",
                                await fanout(cluster, f"paced-{run_no}", opts.fanout_clients,
                                             opts.fanout_messages, opts.fanout_rate))
                            add(f"fanout {opts.fanout_clients}x{opts.fanout_messages}, "
                                f"full speed{sfx}",
                                await fanout(cluster, f"full-{run_no}", opts.fanout_clients,
                                             opts.fanout_messages, None))
                        if "idle" in only:
                            add(f"idle sockets ({opts.idle}){sfx}",
                                await idle_sockets(cluster, opts.idle))
                    finally:
                        await cluster.stop()
                if "workerd" in only and opts.workerd:
                    port = 18788
                    proc = start_workerd(opts.workerd, port, Path(tmp) / "workerd")
                    try:
                        url = f"http://127.0.0.1:{port}/counter/one/increment"
                        async with aiohttp.ClientSession() as http:
                            await (await http.get(url)).read()
                        for c in opts.clients:
                            add(f"workerd one object, {c} clients",
                                await http_load(url, c, opts.seconds, {"workerd": proc.pid}))
                    finally:
                        proc.terminate()
                        proc.wait(10)
            other = max((r["other_cpu"] for rs in this_run.values() for r in rs
                         if "other_cpu" in r), default=0.0)
            if other <= opts.max_other or attempt == opts.retries:
                if other > opts.max_other:
                    discarded.append(f"run {run_no + 1} kept although other processes used "
                                     f"{other:.2f} cores (no retries left)")
                break
            discarded.append(f"run {run_no + 1} measured again (other processes used "
                             f"{other:.2f} cores)")
            print("  " + discarded[-1], flush=True)
        for label, rs in this_run.items():
            results.setdefault(label, []).extend(rs)

    cols = [("ops/s", "ops_s", 0), ("deliveries/s", "deliveries_s", 0), ("p50 ms", "p50_ms", 2),
            ("p99 ms", "p99_ms", 2), ("sockets held", "sockets_held", 0),
            ("edge B/socket", "bytes_per_socket", 0), ("edge RSS MiB", "edge_rss_mib", 1),
            ("edge CPU", "edge_cpu", 2), ("node CPU", "node_cpu", 2),
            ("followers CPU", "followers_cpu", 2),
            ("workerd CPU", "workerd_cpu", 2),
            ("client CPU", "client_cpu", 2), ("other CPU", "other_cpu", 2)]
    table = Table("Edge", command_line(), cols)
    for label, runs in results.items():
        table.add(label, runs)
    table.notes.append(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                       f"{platform.machine()}")
    table.notes.extend(discarded)
    print(table.render())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="*", choices=["http", "fanout", "idle", "workerd"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, nargs="*", default=[1, 8, 64])
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--fanout-clients", type=int, default=100)
    p.add_argument("--fanout-messages", type=int, default=1000)
    p.add_argument("--fanout-rate", type=float, default=250.0)
    p.add_argument("--idle", type=int, default=10_000)
    p.add_argument("--replicas", type=int, nargs="+", default=[1],
                   help="copies of every object (1: one node, as before; N > 1: three regions "
                        "with one node each, one edge in us-east); several values: each in turn")
    p.add_argument("--quiet-limit", type=float, default=0.15,
                   help="before each run, wait until other processes use fewer cores than this")
    p.add_argument("--quiet-timeout", type=float, default=900.0,
                   help="wait at most this long for a quiet machine (0: do not wait)")
    p.add_argument("--max-other", type=float, default=0.25,
                   help="measure a run again if other processes used more cores than this "
                        "during an HTTP measurement")
    p.add_argument("--retries", type=int, default=3, help="at most this many times per run")
    p.add_argument("--workerd", default=os.environ.get("WORKERD_BIN", ""),
                   help="workerd binary (npm install workerd) to measure the same Counter")
    opts = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(run(opts))
    except ImportError:
        asyncio.run(run(opts))


if __name__ == "__main__":
    main()
