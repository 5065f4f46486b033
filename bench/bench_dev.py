#!/usr/bin/env python3
"""`duro dev` as a user starts it, measured with wrk, against workerd in the same run (issue 12).

    python bench/bench_dev.py --workerd PATH                    # defaults below, median of 3
    python bench/bench_dev.py --workerd PATH --runs 3 --seconds 8 --connections 1,8,64 \\
        --objects 1,1000 --variants default,separate,replicas1

Each variant is a real ``duro dev`` process tree started the way the README says (``duro dev
--app examples`` plus only the flags the variant names; its own data directory and ports), the
article's Counter, ``wrk -t1 -cN -dS --latency`` on ``/counter/<name>/increment`` of the first
region's edge (HTTP keep-alive, as wrk does), access log ON (the default). Variants:

* ``default``: ``duro dev`` with no flags: three regions, three copies of every object, mTLS,
  co-located edges (every region's edge runs in its node);
* ``separate``: ``--separate-edges``: one edge process per region, as before co-location;
* ``replicas1``: ``--replicas 1 --min-in-sync 1``: one copy (workerd keeps one);
* ``separate1``: both.

``--objects N`` spreads the requests over N objects (a wrk Lua script picks one at random per
request); every object is called once before the measurement (warm). workerd runs the same
Counter (bench/workerd) with on-disk storage; ``duro dev`` and workerd alternate within a run
and the order of the variants rotates between runs. Per run, row and system: ops/s and wrk's
latency percentiles. Tables (median over runs, min-max) to stdout; per-run JSON lines to stderr.
A run during which processes outside the benchmark used more than ``--max-other`` cores is
measured again (``--retries``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_edge import http_load, start_workerd  # noqa: E402
from common import ROOT, ForeignCpu, Table, command_line, wait_quiet  # noqa: E402

VARIANTS = {
    "default": [],
    "separate": ["--separate-edges"],
    "replicas1": ["--replicas", "1", "--min-in-sync", "1"],
    "separate1": ["--separate-edges", "--replicas", "1", "--min-in-sync", "1"],
}
LUA = """
local n = {n}
request = function()
  return wrk.format("GET", "/counter/o" .. math.random(0, n - 1) .. "/increment")
end
"""


def _log(msg: str) -> None:
    print(f"[bench_dev {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port_block(n: int = 3) -> int:
    """A port p with p..p+n-1 free (duro dev uses http, http+1, http+2)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n >= 65535:
            continue
        try:
            socks = []
            for k in range(n):
                t = socket.socket()
                t.bind(("127.0.0.1", p + k))
                socks.append(t)
            for t in socks:
                t.close()
            return p
        except OSError:
            for t in socks:
                t.close()
    raise RuntimeError("no block of free ports")


class DuroDev:
    """One ``duro dev`` process tree."""

    def __init__(self, variant: str, root: Path) -> None:
        self.variant = variant
        self.root = root
        self.http = free_port_block(3)
        self.etcd = free_port_block(2)
        exe = shutil.which("duro") or f"{sys.executable} -m duro.cli"
        self.args = [*exe.split(), "dev", "--app", str(ROOT / "examples"),
                     "--data-dir", str(root / "data"), "--http-port", str(self.http),
                     "--base-port", str(self.etcd), *VARIANTS[variant]]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> DuroDev:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "dev.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith("DURO-DEV-READY"):
                return self
        self.stop()
        raise RuntimeError(f"duro dev ({self.variant}) did not start: "
                           + (self.root / "dev.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"


def warm(url: str, objects: int) -> None:
    """Call every object once (activated, placed, its directory entry cached at the edge)."""
    if objects <= 2000:
        # The edge limits new objects per client (50/s, bursts of 200: docs/security.md), and
        # every request here comes from 127.0.0.1: wait as its 429 says.
        import urllib.error

        for k in range(objects):
            while True:
                try:
                    urllib.request.urlopen(f"{url}/counter/o{k}/get", timeout=60).read()
                    break
                except urllib.error.HTTPError as exc:
                    if exc.code != 429:
                        raise
                    time.sleep(float(exc.headers.get("Retry-After") or 1))
        return
    # More: wrk walks the names in order (one thread, a counter shared by its connections).
    fd, name = tempfile.mkstemp(suffix=".lua")
    os.close(fd)
    script = Path(name)
    script.write_text("local i = 0\nrequest = function()\n  i = i + 1\n"
                      f"  return wrk.format('GET', '/counter/o' .. ((i - 1) % {objects}) .. '/get')"
                      "\nend\n")
    try:
        subprocess.run(["wrk", "-t1", "-c16", f"-d{objects // 1000 + 5}s", "-s", str(script),
                        url], capture_output=True, check=True)
    finally:
        script.unlink()


def own(url: str, connections: int, seconds: float, objects: int) -> dict[str, float]:
    """bench_edge's own HTTP/1.1 client (uvloop, keep-alive, one object) instead of wrk."""
    import uvloop

    if objects != 1:
        raise ValueError("--load own measures one object only")
    r = uvloop.run(http_load(f"{url}/counter/o0/increment", connections, seconds))
    return {"ops_s": r["ops_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": 0.0}


def wrk(url: str, connections: int, seconds: float, objects: int) -> dict[str, float]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    script = None
    if objects > 1:
        fd, name = tempfile.mkstemp(suffix=".lua")
        os.close(fd)
        script = Path(name)
        script.write_text(LUA.format(n=objects))
        args += ["-s", str(script), url]
    else:
        args.append(f"{url}/counter/o0/increment")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    if script is not None:
        script.unlink()
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["ops_s"] = float(m.group(1)) if m else float("nan")
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            v = float(m.group(1))
            res[f"p{q}_ms"] = v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["errors"] = float(m.group(1)) if m else 0.0
    if res["errors"]:
        _log(f"wrk saw {int(res['errors'])} non-2xx responses at {url}")
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workerd", default=os.environ.get("WORKERD_BIN", ""), required=False)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--connections", default="1,8,64")
    p.add_argument("--objects", default="1,1000")
    p.add_argument("--variants", default="default,separate")
    p.add_argument("--load", choices=["wrk", "own"], default="wrk",
                   help="the load generator: wrk (default) or bench_edge's own client")
    p.add_argument("--max-other", type=float, default=0.25)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--quiet-timeout", type=float, default=600)
    opts = p.parse_args()
    conns = [int(c) for c in opts.connections.split(",")]
    objects = [int(o) for o in opts.objects.split(",")]
    variants = [v for v in opts.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r} (one of {sorted(VARIANTS)})")
    systems = variants + (["workerd"] if opts.workerd else [])
    load = wrk if opts.load == "wrk" else own
    results: dict[tuple[str, int, int], list[dict[str, float]]] = {}

    def measure(system: str, run: int, tmp: Path) -> None:
        for attempt in range(opts.retries + 1):
            wait_quiet(log=_log, timeout=opts.quiet_timeout)
            foreign = ForeignCpu()
            rows: dict[tuple[int, int], dict[str, float]] = {}
            if system == "workerd":
                port = free_port_block(1)
                proc = start_workerd(opts.workerd, port, tmp / f"workerd-{run}-{attempt}")
                try:
                    url = f"http://127.0.0.1:{port}"
                    for n in objects:
                        warm(url, n)
                        for c in conns:
                            rows[(n, c)] = load(url, c, opts.seconds, n)
                finally:
                    proc.terminate()
                    proc.wait()
            else:
                with DuroDev(system, tmp / f"{system}-{run}-{attempt}") as dev:
                    for n in objects:
                        warm(dev.url, n)
                        for c in conns:
                            rows[(n, c)] = load(dev.url, c, opts.seconds, n)
            other = foreign.cores()
            if other > opts.max_other and attempt < opts.retries:
                _log(f"run {run} {system}: other processes used {other:.2f} cores; again")
                continue
            for (n, c), r in rows.items():
                r["other_cores"] = other
                results.setdefault((system, n, c), []).append(r)
                print(json.dumps({"run": run, "system": system, "objects": n,
                                  "connections": c, **r}), file=sys.stderr, flush=True)
            return

    with tempfile.TemporaryDirectory(prefix="bench-dev-") as tmpdir:
        tmp = Path(tmpdir)
        for run in range(opts.runs):
            order = systems[run % len(systems):] + systems[:run % len(systems)]
            for system in order:
                _log(f"run {run + 1}/{opts.runs}: {system}")
                measure(system, run, tmp)

    for n in objects:
        table = Table(f"duro dev as started by a user vs workerd: {n} object(s), "
                      + ("wrk -t1" if opts.load == "wrk" else "bench_edge's client"),
                      command_line(), [("ops/s", "ops_s", 0), ("p50 ms", "p50_ms", 2),
                                       ("p99 ms", "p99_ms", 2)])
        for c in conns:
            for system in systems:
                table.add(f"{system}, {c} connections", results.get((system, n, c), []))
        if opts.workerd:
            import statistics
            for c in conns:
                wd = statistics.median(r["ops_s"] for r in results[("workerd", n, c)])
                ratios = []
                for v in variants:
                    med = statistics.median(r["ops_s"] for r in results[(v, n, c)])
                    ratios.append(f"{v} {med / wd:.2f}x")
                table.notes.append(f"{c} connections, ops/s vs workerd: " + ", ".join(ratios))
        print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
