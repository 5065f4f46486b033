#!/usr/bin/env python3
"""Memory a node process holds over activate/evict cycles (issue 12): the process users run.

    python bench/bench_node_memory.py                         # 10,000 objects, 14 cycles, 3 runs
    python bench/bench_node_memory.py --objects 10000 --cycles 14 --runs 3 --variant get

A real ``duro node`` (standalone, synced WAL, the article's Counter, its default settings except
``--idle-timeout 0.3 --sweep-interval 0.1`` so that objects are evicted between cycles), driven
through the client library's stream from this process. One cycle: call every one of N objects
once (500 at a time), then wait until the node reports no active object. The node's RSS
(``/proc/<pid>/status`` VmRSS) is read after each cycle. Reported: RSS after the first and the
last cycle, and the growth per re-activation ``(last - first) / (N * (cycles - 1))``.

``--variant increment`` writes once per call (RocksDB's memtable grows with the writes, which is
RocksDB's memory, not the runtime's); ``--variant get`` (default) only reads. ``--gc-threshold``
passes the node's flag (0: Python's default collector thresholds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Table, command_line, rss_bytes, start_node  # noqa: E402

from duro import _codec  # noqa: E402
from duro._namespace import Call, CallKind  # noqa: E402
from duro.client.connection import NodeConnection  # noqa: E402

CHUNK = 500


async def drive(address: str, pid: int, metrics, n: int, cycles: int,  # noqa: ANN001
                method: str) -> list[int]:
    payload = _codec.encode([[], {}])
    out = []
    async with NodeConnection(address) as conn:
        for _ in range(cycles):
            for start in range(0, n, CHUNK):
                await asyncio.gather(*(
                    conn.invoke(Call("COUNTER", i.to_bytes(32, "big"), CallKind.RPC, method,
                                     payload))
                    for i in range(start, min(n, start + CHUNK))))
            deadline = time.monotonic() + 60
            while metrics().get("duro_runtime_active_objects", 1) > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("objects were not evicted")
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            out.append(rss_bytes(pid))
    return out


def one_run(n: int, cycles: int, method: str, gc_threshold: int | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-node-mem-") as tmp:
        extra = ["--idle-timeout", "0.3", "--sweep-interval", "0.1"]
        if gc_threshold is not None:
            extra += ["--gc-threshold", str(gc_threshold)]
        node = start_node(Path(tmp) / "node", extra=extra)
        try:
            rss = asyncio.run(drive(node.address, node.pid, node.metrics, n, cycles, method))
        finally:
            node.stop()
    first, last = rss[0], rss[-1]
    return {"rss_first_mib": first / 2**20, "rss_last_mib": last / 2**20,
            "per_reactivation_b": (last - first) / (n * (cycles - 1)),
            "rss_curve_mib": [round(r / 2**20, 1) for r in rss]}  # type: ignore[dict-item]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=10_000)
    p.add_argument("--cycles", type=int, default=14)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--variant", choices=["get", "increment"], default="get")
    p.add_argument("--gc-threshold", type=int, default=None,
                   help="the node's --gc-threshold (default: the node's own default)")
    opts = p.parse_args()
    runs = []
    for r in range(opts.runs):
        res = one_run(opts.objects, opts.cycles, opts.variant, opts.gc_threshold)
        print(json.dumps({"run": r + 1, **res}), file=sys.stderr, flush=True)
        runs.append(res)
    table = Table(f"Node RSS over {opts.cycles} activate/evict cycles of {opts.objects:,} objects "
                  f"(`{opts.variant}`)", command_line(),
                  [("RSS after cycle 1 MiB", "rss_first_mib", 1),
                   ("RSS after last cycle MiB", "rss_last_mib", 1),
                   ("growth per re-activation B", "per_reactivation_b", 1)])
    table.add("node process", runs)
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
