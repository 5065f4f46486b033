"""Micro-benchmark of the node transport: NodeConnection -> Node.Stream -> NodeServicer.

The host is a fake (an in-memory counter, no storage, no runtime), so this measures the gRPC
stream, batching and translation cost alone: the ceiling the real node works under.

    python bench/bench_stream.py                 # node in a subprocess (default), asyncio loops
    python bench/bench_stream.py --uvloop        # both sides on uvloop
    python bench/bench_stream.py --inproc        # client and node in one process and loop
    python bench/bench_stream.py --runs 3 --seconds 3 --callers 1 8 64

Each caller awaits one increment after another on the same object; the table gives acknowledged
calls/s and the per-call latency seen by callers (median over runs of each figure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from duro import _codec
from duro._namespace import Call, CallKind
from duro.client.connection import NodeConnection
from duro.node.server import NodeGrpcServer


class CounterHost:
    """Fake ObjectHost: one counter per object id."""

    def __init__(self) -> None:
        self.values: dict[bytes, int] = {}

    async def invoke(self, call: Call) -> bytes:
        args, _ = _codec.decode(call.payload)
        value = self.values.get(call.object_id, 0) + args[0]
        self.values[call.object_id] = value
        return _codec.encode(value)


def _install_uvloop(enabled: bool) -> None:
    if enabled:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve() -> None:
    async with NodeGrpcServer(CounterHost(), "127.0.0.1:0") as srv:
        print(srv.port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin


async def _run_callers(conn: NodeConnection, callers: int, seconds: float) -> tuple[int, list[int]]:
    call = Call(
        binding="COUNTER",
        object_id=b"\x07" * 32,
        kind=CallKind.RPC,
        method="increment",
        payload=_codec.encode([[1], {}]),
    )
    latencies: list[int] = []
    stop_at = time.perf_counter() + seconds
    clock = time.perf_counter_ns

    async def caller() -> None:
        record = latencies.append
        while time.perf_counter() < stop_at:
            t0 = clock()
            await conn.invoke(call)
            record(clock() - t0)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return len(latencies), latencies


def _pct(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


async def _bench(address: str, args: argparse.Namespace) -> list[tuple[int, float, float, float]]:
    conn = NodeConnection(address)
    try:
        await _run_callers(conn, 8, 0.5)  # warm up: stream open, code paths hot
        rows = []
        for callers in args.callers:
            rates, p50s, p99s = [], [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                n, lat = await _run_callers(conn, callers, args.seconds)
                elapsed = time.perf_counter() - t0
                lat.sort()
                rates.append(n / elapsed)
                p50s.append(_pct(lat, 0.50))
                p99s.append(_pct(lat, 0.99))
            med = statistics.median
            rows.append((callers, med(rates), med(p50s), med(p99s)))
        return rows
    finally:
        await conn.close()


async def _main_inproc(args: argparse.Namespace) -> list[tuple[int, float, float, float]]:
    async with NodeGrpcServer(CounterHost(), "127.0.0.1:0") as srv:
        return await _bench(srv.address, args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--inproc", action="store_true", help="node in this process and loop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _install_uvloop(args.uvloop)

    if args.serve:
        asyncio.run(_serve())
        return

    proc: subprocess.Popen[str] | None = None
    if args.inproc:
        rows = asyncio.run(_main_inproc(args))
        where = "in process"
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--serve"]
        if args.uvloop:
            cmd.append("--uvloop")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            rows = asyncio.run(_bench(f"127.0.0.1:{port}", args))
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=10)
        where = "node in a subprocess"

    loop = "uvloop" if args.uvloop else "asyncio"
    print(
        f"\nNodeConnection -> Node.Stream -> fake host, one object, {where}, {loop}, "
        f"{args.runs} run(s) x {args.seconds:g}s, median\n"
    )
    print(f"{'callers':>7}  {'calls/s':>9}  {'p50 µs':>8}  {'p99 µs':>8}")
    for callers, rate, p50, p99 in rows:
        print(f"{callers:>7}  {rate:>9,.0f}  {p50:>8.0f}  {p99:>8.0f}")


if __name__ == "__main__":
    main()
