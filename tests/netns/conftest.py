"""Fixtures of the network-namespace suite (topology: see ``topology.py`` and README.md).

* ``netns_topology`` (module scope): the namespaces, veths and netem delays; skips the module
  with the failing command when they cannot be made (not root, no ``ip``/``tc``, no namespaces).
  Always destroyed at teardown (processes in the namespaces killed, namespaces deleted), and the
  teardown fails if any of its namespaces is left.
* ``need_delays(topo)``: skips a test that needs real delays when ``tc ... netem`` failed (the
  command and error are in the reason); ``DURO_NETNS_REQUIRE_NETEM=1`` turns that skip into a
  failure (for CI machines known to have ``sch_netem``).
* ``make_netns_cluster(**kw)`` (function scope): a :class:`~tests.netns.cluster.NetnsCluster`;
  stopped at teardown, which fails if any process it started is alive or any process is left in
  its namespaces.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.etcd_fixture import pid_alive
from tests.netns.cluster import ROUTER_DELAYS_ENV, NetnsCluster
from tests.netns.topology import Topology, Unavailable, namespace_pids

APP = Path(__file__).resolve().parents[1] / "cluster" / "apps" / "migapp"


@pytest.fixture(scope="module")
def netns_topology() -> Iterator[Topology]:
    topo = Topology()
    try:
        topo.create()
    except Unavailable as exc:
        pytest.skip(f"cannot build the network-namespace regions: {exc}")
    try:
        yield topo
    finally:
        topo.destroy()
        left = topo.leftovers()
        assert not left, f"namespaces left behind: {left}"


def delays_or_router_fallback(topo: Topology, monkeypatch: pytest.MonkeyPatch) -> str:
    """Real netem delays when the kernel has them; otherwise the same matrix injected by the
    routers (``DURO_SIMULATE_LATENCY``) while the traffic still crosses the namespaces' real network
    stack. Returns which one is in force, for the test's output."""
    if topo.delay_error is None:
        return "netem"
    if os.environ.get("DURO_NETNS_REQUIRE_NETEM") == "1":
        pytest.fail(f"no netem: {topo.delay_error} (DURO_NETNS_REQUIRE_NETEM=1)")
    monkeypatch.setenv(ROUTER_DELAYS_ENV, "1")
    return f"router-injected (no netem here: {topo.delay_error})"


def need_delays(topo: Topology) -> None:
    if topo.delay_error is None:
        return
    reason = f"no real inter-region delay: {topo.delay_error}"
    if os.environ.get("DURO_NETNS_REQUIRE_NETEM") == "1":
        pytest.fail(reason + " (DURO_NETNS_REQUIRE_NETEM=1)")
    pytest.skip(reason)


@pytest.fixture
async def make_netns_cluster(
    netns_topology: Topology, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[NetnsCluster]]]:
    clusters: list[NetnsCluster] = []

    async def make(**kw: Any) -> NetnsCluster:
        kw.setdefault("app", str(APP))
        kw.setdefault("regions", netns_topology.regions)
        c = NetnsCluster(netns_topology, tmp_path / f"netns{len(clusters)}", **kw)
        clusters.append(c)
        await c.start()
        return c

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for c in clusters:
            try:
                await c.stop()
            except Exception as exc:
                errors.append(exc)
        deadline = time.monotonic() + 10
        while True:
            alive = [p for c in clusters for p in c.all_pids() if pid_alive(p)]
            inside = {ns: namespace_pids(ns) for ns in netns_topology.namespaces}
            inside = {ns: pids for ns, pids in inside.items() if pids}
            if not alive and not inside:
                break
            if time.monotonic() > deadline:
                errors.append(AssertionError(
                    f"leaked processes: pids {alive}, in namespaces {inside}"))
                break
            await asyncio.sleep(0.1)
        if errors:
            raise errors[0]
