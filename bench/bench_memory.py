"""Memory per idle active object and per evicted object (issue 2, "What must be measured").

One process runs the real runtime (``duro.testing.Testbed``: ObjectHost, real RocksDB) on the
Counter example. Per run, in a fresh child process:

1. warm-up: activate and evict a few hundred other objects (imports, caches, code paths);
2. **bare**: the memory of N bare instances of the user class (``Counter(ctx, env)`` with a shared
   dummy ctx): what the user's own object costs, subtracted from the figures below;
3. **active**: call every one of N objects once (``increment`` by default: one durable write;
   or ``--variant get``: never written), wait until idle; memory growth minus the bare cost, / N;
4. **evicted**: evict all N; memory still held over the pre-activation level, / N. Then a second
   cycle (activate and evict N *other* objects): growth over the post-eviction level, / N; this
   shows nothing is retained per evicted object (no leak) apart from container high-water marks.

``tracemalloc`` gives byte-accurate Python heap figures (the main result); RSS (``/proc/self/statm``,
a separate child without tracemalloc, whose per-allocation bookkeeping would inflate RSS) is the
cross-check and also includes RocksDB's native memory (memtable) and allocator slack.

    python bench/bench_memory.py --objects 20000 --runs 3
    python bench/bench_memory.py --objects 20000 --runs 3 --variant get
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import COUNTER_APP, Table, command_line  # noqa: E402

CHUNK = 500  # concurrent calls per chunk (their writes share group commits)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _DummyCtx:
    """Stands in for ``ctx`` when building bare instances of the user class."""

    def block_concurrency_while(self, fn):  # noqa: ANN001, ANN201
        return None


def _print_breakdown(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> None:
    """Where the bytes of one active idle object are allocated (top sites, bytes per object)."""
    skip = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    diff = after.filter_traces(skip).compare_to(before.filter_traces(skip), "lineno")
    total = sum(d.size_diff for d in diff)
    print(f"allocation sites, bytes per active object (total {total / n:.0f}):", file=sys.stderr)
    for d in diff[:20]:
        frame = d.traceback[0]
        name = frame.filename
        for marker in ("/duro/", "/node/", "/examples/", "/lib/python"):
            if marker in name:
                name = name[name.index(marker) + 1:]
                break
        print(f"  {d.size_diff / n:8.1f} B  {d.count_diff / n:5.2f} blocks  {name}:{frame.lineno}",
              file=sys.stderr)


async def _child(mode: str, n: int, variant: str, breakdown: bool = False) -> dict[str, float]:
    from duro import _codec
    from duro._namespace import Call, CallKind
    from duro.testing import Testbed

    def measure() -> int:
        gc.collect()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else _rss()

    with tempfile.TemporaryDirectory(prefix="duro-mem-") as tmp:
        # sync_wal=False: fsync costs time, not memory; idle timeout and sweeps off so nothing
        # is evicted behind our back.
        async with Testbed(app=COUNTER_APP, data_dir=tmp, sync_wal=False, idle_timeout=1e9,
                           sweep_interval=1e9, max_active_objects=10 * n + 10_000) as tb:
            host = tb.host
            assert host is not None
            ns = tb.env.COUNTER
            cls = tb.app.bindings["COUNTER"].cls
            payload = _codec.encode([[], {}])
            ids_a = [ns.id_from_name(f"a{i}").raw for i in range(n)]
            ids_b = [ns.id_from_name(f"b{i}").raw for i in range(n)]
            ids_w = [ns.id_from_name(f"w{i}").raw for i in range(500)]

            async def touch(ids: list[bytes]) -> None:
                for i in range(0, len(ids), CHUNK):
                    # A fresh bytes object per call, as a node gets one from the wire, so the
                    # runtime's copy of the id counts as runtime overhead.
                    await asyncio.gather(*(
                        host.invoke(Call(binding="COUNTER", object_id=bytes(bytearray(raw)),
                                         kind=CallKind.RPC, method=variant, payload=payload))
                        for raw in ids[i:i + CHUNK]
                    ))
                for raw in ids:  # wait until every activation is idle (writes durable)
                    act = host.activation(raw)
                    if act is not None and not act.is_idle():
                        await act.storage.sync()

            def evict(ids: list[bytes]) -> None:
                for raw in ids:
                    assert host.evict(raw), "object not idle"

            # 1. warm-up
            await touch(ids_w)
            evict(ids_w)
            if mode == "tracemalloc":
                tracemalloc.start()

            # 2. bare instances of the user class
            m0 = measure()
            dummy, env = _DummyCtx(), tb.env
            bare = [cls(dummy, env) for _ in range(n)]
            bare_bytes = measure() - m0
            del bare

            # 3. active idle objects
            m_before = measure()
            snap0 = tracemalloc.take_snapshot() if breakdown else None
            await touch(ids_a)
            assert host.active_count == n
            m_active = measure()
            if snap0 is not None:
                _print_breakdown(snap0, tracemalloc.take_snapshot(), n)
            # 4. evicted
            evict(ids_a)
            assert host.active_count == 0
            m_evicted = measure()
            await touch(ids_b)
            evict(ids_b)
            m_cycle2 = measure()
            if mode == "tracemalloc":
                tracemalloc.stop()
    active = m_active - m_before
    return {
        "bare_per_obj": bare_bytes / n,
        "active_total_per_obj": active / n,
        "active_runtime_per_obj": (active - bare_bytes) / n,
        "evicted_per_obj": (m_evicted - m_before) / n,
        "cycle2_per_obj": (m_cycle2 - m_evicted) / n,
        "active_mib": active / 2**20,
    }


def _run_child(mode: str, n: int, variant: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--objects", str(n), "--variant", variant],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--objects", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--variant", choices=["increment", "get"], default="increment",
                   help="the call that activates each object (increment writes once; get never)")
    p.add_argument("--breakdown", action="store_true",
                   help="print where the bytes of an active object are allocated (one run)")
    p.add_argument("--child", choices=["tracemalloc", "rss"], help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="append the markdown table to this file")
    args = p.parse_args()
    if args.breakdown and not args.child:
        args.child = "tracemalloc"
    if args.child:
        import uvloop

        res = uvloop.run(_child(args.child, args.objects, args.variant, args.breakdown))
        print(json.dumps(res))
        return
    table = Table(
        title=f"Memory per object, {args.objects:,} Counter objects activated by `{args.variant}`",
        command=command_line(),
        columns=[("user's bare instance B", "bare_per_obj", 0),
                 ("active idle: total B", "active_total_per_obj", 0),
                 ("active idle: runtime overhead B", "active_runtime_per_obj", 0),
                 ("after evicting all B", "evicted_per_obj", 0),
                 ("2nd activate+evict cycle B", "cycle2_per_obj", 0)],
    )
    for mode in ("tracemalloc", "rss"):
        runs = []
        for r in range(args.runs):
            res = _run_child(mode, args.objects, args.variant)
            print(f"{mode} run={r + 1}: {json.dumps({k: round(v, 1) for k, v in res.items()})}",
                  file=sys.stderr, flush=True)
            runs.append(res)
        table.add(f"{mode} (bytes per object)", runs)
    table.notes.append(
        "runtime overhead = (growth after activating N objects − N bare user instances) / N. "
        "\"after evicting all\" = memory still held over the level before activation, / N; "
        "\"2nd cycle\" = growth from activating and evicting N other objects after that, / N."
    )
    text = table.render()
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
