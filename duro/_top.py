"""``duro top``: the cluster picture in the terminal, refreshed like ``htop`` (rich's ``Live``).

The data come from :mod:`duro.client.cluster_view`; this module only draws them::

    duro top                  # live, every --interval seconds; Ctrl-C quits
    duro top --once           # two samples --interval apart, one frame as plain text, exit
    duro top --json           # the same picture as JSON (for scripts)
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from duro.client.cluster_view import Sample, sample, view

__all__ = ["render", "run_top", "collect"]

_HEALTH_STYLE = {"serving": "green", "draining": "yellow", "fenced": "red bold",
                 "unreachable": "red", "unknown": "magenta"}


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.0f} MiB"


def _rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}"


def render(pic: dict[str, Any]) -> Group:
    """One frame of ``duro top`` for the picture :func:`~duro.client.cluster_view.view` made."""
    nodes = [n for zones in pic["regions"].values() for ns in zones.values() for n in ns]
    serving = sum(1 for n in nodes if n["health"] == "serving")
    rep = pic["replication"]
    head = Text.assemble(
        ("duro top", "bold"), f"  cluster {pic['cluster']}  ",
        ("leader ", "dim"), (pic["leader"] or "none", "bold" if pic["leader"] else "red bold"),
        f"  nodes {serving}/{len(nodes)} serving  groups {pic['groups']} "
        f"(replicas {rep['replicas']}, min in sync {rep['min_in_sync']})",
    )
    t = Table(box=box.SIMPLE_HEAD, expand=False, title_justify="left")
    for col, just in (("region", "left"), ("zone", "left"), ("node", "left"),
                      ("health", "left"), ("objects", "right"), ("load", "right"),
                      ("memory", "right"), ("events/s", "right"), ("commits/s", "right"),
                      ("leads", "left")):
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for region in sorted(pic["regions"]):
        for zone in sorted(pic["regions"][region]):
            for n in pic["regions"][region][zone]:
                leads = ",".join(str(g) for g in n["leads"]) or "-"
                t.add_row(region, zone, n["node_id"],
                          Text(n["health"], style=_HEALTH_STYLE.get(n["health"], "")),
                          "-" if n["objects"] is None else str(n["objects"]),
                          f"{n['load']}/{n['capacity']}", _mib(n["memory_bytes"]),
                          _rate(n["events_per_s"]), _rate(n["commits_per_s"]), leads)
    under, orphan = pic["under_replicated_groups"], pic["groups_without_primary"]
    groups = Text.assemble(
        ("under-replicated groups: ", "dim"),
        (", ".join(map(str, under)) or "none", "yellow bold" if under else "green"),
        ("   groups without a primary: ", "dim"),
        (", ".join(map(str, orphan)) or "none", "red bold" if orphan else "green"),
    )
    b = Table(box=box.SIMPLE_HEAD, expand=False)
    b.add_column("binding")
    b.add_column("calls/s", justify="right")
    b.add_column("p99 ms", justify="right")
    b.add_column("calls", justify="right")
    for name, agg in pic["bindings"].items():
        p99 = "-" if agg["p99_ms"] is None else f"{agg['p99_ms']:g}"
        b.add_row(name, _rate(agg["per_s"]), p99, str(agg["calls"]))
    if not pic["bindings"]:
        b.add_row("(no calls yet)", "-", "-", "-")
    return Group(head, t, groups, b)


async def collect(etcd: str, cluster: str, interval: float) -> dict[str, Any]:
    """Two samples ``interval`` seconds apart, as one picture (``--once``, ``--json``)."""
    first = await sample(etcd, cluster)
    await asyncio.sleep(interval)
    return view(await sample(etcd, cluster), first)


async def run_top(etcd: str, cluster: str, *, interval: float = 2.0, once: bool = False,
                  as_json: bool = False, console: Console | None = None) -> int:
    if interval <= 0:
        raise ValueError("--interval must be positive")
    console = console or Console()
    if once or as_json:
        try:
            pic = await collect(etcd, cluster, interval)
        except Exception as exc:  # etcd unreachable, refused credentials: one line, no trace
            print(f"duro top: cannot read cluster {cluster!r} from etcd {etcd}: {_reason(exc)}",
                  file=sys.stderr)
            return 1
        if as_json:
            console.print_json(json.dumps(pic))
        else:
            console.print(render(pic))
        return 0
    prev: Sample | None = None
    with Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            try:
                cur = await sample(etcd, cluster)
            except Exception as exc:  # keep trying, as htop would, and say why on screen
                live.update(Text(f"duro top: cannot read cluster {cluster!r} from etcd {etcd}: "
                                 f"{_reason(exc)}; retrying every {interval:g} s", style="red"),
                            refresh=True)
                prev = None
            else:
                live.update(render(view(cur, prev)), refresh=True)
                prev = cur
            await asyncio.sleep(interval)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
