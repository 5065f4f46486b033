"""Shared helpers for the node benchmarks: node processes, percentiles, median-of-runs tables.

Not a test fixture: a benchmark starts a real ``duro node`` process (its own interpreter, its own
uvloop) so the load generator never shares a CPU-time slice or event loop with the node.
"""

from __future__ import annotations

import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
COUNTER_APP = ROOT / "examples" / "counter"

__all__ = [
    "ROOT",
    "COUNTER_APP",
    "NodeHandle",
    "start_node",
    "percentile",
    "lat_summary",
    "median_spread",
    "Table",
    "command_line",
    "cpu_seconds",
    "rss_bytes",
    "ForeignCpu",
    "wait_quiet",
]


@dataclass
class NodeHandle:
    proc: subprocess.Popen
    address: str
    metrics_port: int
    data_dir: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics(self) -> dict[str, float]:
        """The node's Prometheus counters (name without labels -> value); {} if metrics are off."""
        if not self.metrics_port:
            return {}
        out: dict[str, float] = {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if not line or line.startswith("#"):
                    continue
                name, _, value = line.rpartition(" ")
                out[name.split("{", 1)[0]] = float(value)
        return out

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: drain, flush, close RocksDB) and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_node(data_dir: Path, *, sync: bool = True, extra: Sequence[str] = (),
               app: Path = COUNTER_APP, metrics: bool = True) -> NodeHandle:
    """Start ``python -m duro.cli node`` and wait for its DURO-NODE-READY line."""
    data_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = data_dir / "node.stderr"
    cmd = [
        sys.executable, "-m", "duro.cli", "node", "--app", str(app), "--data-dir", str(data_dir),
        "--listen", "127.0.0.1:0", "--log-level", "WARNING",
        "--sync-wal" if sync else "--no-sync-wal",
        "--metrics-port", "0" if metrics else "-1",
        *extra,
    ]
    err = open(stderr_path, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    err.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("DURO-NODE-READY"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"node did not start: {line!r}\n{stderr_path.read_text()[-4000:]}")
    fields = dict(f.split("=", 1) for f in line.split()[1:])
    return NodeHandle(proc, fields["address"], int(fields.get("metrics_port", 0) or 0), data_dir,
                      stderr_path)


def rss_bytes(pid: int) -> int:
    """Resident memory of a live process (``/proc/<pid>/status`` VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def lat_summary(latencies_ns: Iterable[int]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    s = sorted(latencies_ns)
    return {
        "p50_ms": percentile(s, 50) / 1e6,
        "p99_ms": percentile(s, 99) / 1e6,
        "max_ms": (s[-1] / 1e6) if s else float("nan"),
    }


def median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) over runs."""
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(vals), min(vals), max(vals)


def _fmt(v: float, digits: int) -> str:
    if v != v:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def fmt_cell(values: Sequence[float], digits: int = 2) -> str:
    """``median (min–max)`` over runs, or just the value for one run."""
    med, lo, hi = median_spread(values)
    if len(values) <= 1:
        return _fmt(med, digits)
    return f"{_fmt(med, digits)} ({_fmt(lo, digits)}–{_fmt(hi, digits)})"


@dataclass
class Table:
    """A markdown table whose cells are median (min–max) over runs."""

    title: str
    command: str
    columns: list[tuple[str, str, int]]  # (header, key in each run dict, digits)
    rows: list[tuple[str, list[dict[str, float]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, runs: list[dict[str, float]]) -> None:
        self.rows.append((label, runs))

    def render(self) -> str:
        head = ["configuration", "runs"] + [c[0] for c in self.columns]
        lines = [f"### {self.title}", "", "```", self.command, "```", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, runs in self.rows:
            cells = [label, str(len(runs))]
            for _h, key, digits in self.columns:
                cells.append(fmt_cell([r.get(key, float("nan")) for r in runs], digits))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Cells: median over runs (min–max in brackets).")
        for n in self.notes:
            lines.append(n)
        lines.append("")
        return "\n".join(lines)


def command_line() -> str:
    """The command that produced this output, relative to the repository root."""
    argv = list(sys.argv)
    try:
        argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
    except ValueError:
        pass
    return "python " + " ".join(shlex.quote(a) for a in argv)


def wait_gone(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


# -- other processes on the machine -------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all CPUs; /proc/stat, idle and iowait
    excluded; guest time is already in user)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_tree_seconds() -> float:
    """CPU seconds of this process and its live descendants, including their reaped children
    (utime + stime + cutime + cstime): everything this benchmark ran."""
    parent: dict[int, int] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        parent[pid] = int(fields[1])
        stats[pid] = sum(int(x) for x in fields[11:15]) / _TICK
    me = os.getpid()
    total = 0.0
    for pid, secs in stats.items():
        p = pid
        while p > 1 and p != me:
            p = parent.get(p, 0)
        if p == me:
            total += secs
    return total


class ForeignCpu:
    """CPU used by processes that are not this benchmark (nor its children) over an interval:
    another engineer's test suite on the same machine shows up here. ``cores()`` is CPU seconds
    per wall second since the object was made (or ``reset``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._t = time.monotonic()
        self._busy = _busy_seconds()
        self._own = _own_tree_seconds()

    def cores(self) -> float:
        wall = time.monotonic() - self._t
        if wall <= 0:
            return 0.0
        other = (_busy_seconds() - self._busy) - (_own_tree_seconds() - self._own)
        return max(0.0, other / wall)


def wait_quiet(limit: float = 0.15, window: float = 3.0, timeout: float = 900.0,
               log: Callable[[str], None] | None = None) -> float:
    """Wait (up to ``timeout`` s) until other processes use less than ``limit`` cores over a
    ``window``-second sample; returns the last sample."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        probe = ForeignCpu()
        time.sleep(window)
        other = probe.cores()
        if other < limit or time.monotonic() > deadline:
            if said and log is not None:
                log(f"quiet again (other processes {other:.2f} cores)")
            return other
        if not said and log is not None:
            log(f"other processes use {other:.2f} cores: waiting for a quiet machine")
            said = True
