"""etcd + placement in the hub namespace, one node per region namespace, in-namespace clients.

The same processes and flags as :class:`duro.dev.LocalCluster`, each started as
``ip netns exec NS <command>`` (``ip netns exec`` execs the command itself, so the pid we hold is
the process's own and signals reach it). Nodes listen on and advertise their region's home
address; everything reaches etcd at ``10.77.0.1:2379``. The test process stays in the root
namespace and never opens a socket to the cluster: it observes through :meth:`run_client`, which
runs ``tests/netns/client.py`` inside a namespace and returns the JSON it prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from duro._etcd import EtcdProcess
from duro.client.latency import ENV as LATENCY_ENV
from duro.dev import ProcSpec, read_ready
from tests.netns.topology import Topology

__all__ = ["NetnsCluster", "run_client"]

CLIENT = Path(__file__).resolve().parent / "client.py"
ROOT = Path(__file__).resolve().parents[2]
ETCD_PORT, PLACEMENT_PORT, NODE_PORT = 2379, 7000, 7100


# Set by a test when the kernel has no netem: the children then inject the delays in their routers.
ROUTER_DELAYS_ENV = "DURO_NETNS_ROUTER_DELAYS"


def _env() -> dict[str, str]:
    """The children's environment: the net delays, not the in-process latency simulation — unless
    netem is missing and the test asked for router-injected delays (ROUTER_DELAYS_ENV)."""
    # Plaintext (the suite's DURO_TLS_* certificate is not for this cluster): these tests are
    # about the network between regions, not its security (docs/security.md).
    env = {k: v for k, v in os.environ.items()
           if k not in (LATENCY_ENV, "DURO_MIGRATION_FAULT") and not k.startswith("DURO_TLS_")}
    if os.environ.get(ROUTER_DELAYS_ENV) == "1":
        env[LATENCY_ENV] = "1"
    return {**env, "PYTHONUNBUFFERED": "1"}


class NetnsCluster:
    def __init__(
        self, topo: Topology, root: Path, *, app: str, regions: tuple[str, ...],
        cluster: str = "duro", lease_ttl: int = 3, placement_args: tuple[str, ...] = (),
        python: str = sys.executable,
    ) -> None:
        self.topo, self.root, self.app, self.cluster, self.python = topo, root, app, cluster, python
        hub = topo.hub_addr
        self.etcd_endpoint = f"{hub}:{ETCD_PORT}"
        self.etcd = EtcdProcess(root / "etcd" / "data", host=hub, client_port=ETCD_PORT,
                                peer_port=ETCD_PORT + 1, log_path=root / "logs" / "etcd.log",
                                unsafe_no_fsync=True)
        self.etcd_spec = ProcSpec("etcd", "etcd", self.etcd.command(), root / "logs" / "etcd.log")
        self.placement = ProcSpec(
            "placement", "placement-0",
            [python, "-m", "duro.placement", "--etcd", self.etcd_endpoint, "--cluster", cluster,
             "--listen", f"{hub}:{PLACEMENT_PORT}", "--id", "placement-0", "--log-level",
             "WARNING", "--insecure", *placement_args],
            root / "logs" / "placement-0.log")
        self.nodes: list[ProcSpec] = []
        for region in regions:
            name = f"{region}-0"
            addr = f"{topo.addr(region)}:{NODE_PORT}"
            self.nodes.append(ProcSpec(
                "node", name,
                [python, "-m", "duro.cli", "node", "--app", app, "--etcd", self.etcd_endpoint,
                 "--cluster", cluster, "--region", region, "--zone", f"{region}-a",
                 "--node-id", name, "--data-dir", str(root / "nodes" / name),
                 "--listen", addr, "--advertise", addr, "--lease-ttl", str(lease_ttl),
                 "--log-level", "WARNING", "--insecure"],
                root / "logs" / f"{name}.log", region=region))
        self._ns = {"etcd": topo.hub, "placement-0": topo.hub,
                    **{n.name: topo.ns(n.region) for n in self.nodes}}

    # -- processes ----------------------------------------------------------------------------
    async def _spawn(self, spec: ProcSpec, env: dict[str, str] | None = None) -> None:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(spec.log_path, "ab")  # noqa: SIM115 - the child holds it
        try:
            spec.proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self._ns[spec.name], *spec.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if spec.role == "node" else log,
                stderr=log if spec.role != "etcd" else asyncio.subprocess.STDOUT,
                start_new_session=True, cwd=ROOT,
                env={**_env(), **(env or {})})
        finally:
            log.close()
        spec.pids.append(spec.proc.pid)

    async def start(self, timeout: float = 60.0) -> None:
        await self._spawn(self.etcd_spec)
        await self.run_client(self.topo.hub, "wait-etcd", timeout=timeout)
        await self._spawn(self.placement)
        await self.run_client(self.topo.hub, "wait-leader", timeout=timeout)
        await asyncio.gather(*(self.start_node(i, timeout) for i in range(len(self.nodes))))
        # Every group with its copies (the cluster's default replicas=3, or as many nodes as
        # there are): before, a first write may be refused as under-replicated (retryable).
        await self.run_client(self.topo.hub, "wait-replicated", timeout=timeout,
                              nodes=[n.name for n in self.nodes], want=min(3, len(self.nodes)),
                              wait=timeout)

    async def start_node(self, i: int, timeout: float = 60.0,
                         env: dict[str, str] | None = None) -> ProcSpec:
        spec = self.nodes[i]
        if spec.running:
            raise RuntimeError(f"{spec.name} is already running")
        await self._spawn(spec, env)
        try:
            spec.ready = await read_ready(spec, "DURO-NODE-READY", timeout)
        except RuntimeError:
            await spec.terminate(1.0)
            raise
        return spec

    async def stop_node(self, i: int, grace: float = 10.0) -> None:
        await self.nodes[i].terminate(grace)

    async def stop(self, grace: float = 10.0) -> None:
        await asyncio.gather(*(n.terminate(grace) for n in self.nodes))
        await self.placement.terminate(grace)
        await self.etcd_spec.terminate(grace)

    def all_pids(self) -> list[int]:
        return [p for s in (self.etcd_spec, self.placement, *self.nodes) for p in s.pids]

    def node_by_id(self, node_id: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.name == node_id)

    def node_addresses(self) -> dict[str, str]:
        return {n.name: n.address for n in self.nodes if n.running}

    # -- clients --------------------------------------------------------------------------------
    async def run_client(self, ns: str, command: str, *, timeout: float = 120.0,
                         **args: Any) -> dict[str, Any]:
        """Run ``client.py COMMAND`` inside namespace *ns*; return its JSON (last stdout line)."""
        return await run_client(ns, command, timeout=timeout, python=self.python,
                                etcd=self.etcd_endpoint, cluster=self.cluster, app=self.app,
                                **args)


async def run_client(ns: str, command: str, *, timeout: float = 120.0,
                     python: str = sys.executable, **args: Any) -> dict[str, Any]:
    """Run ``client.py COMMAND`` inside namespace *ns*; return its JSON (last stdout line)."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, python, str(CLIENT), command, json.dumps(args),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, start_new_session=True, env=_env())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"client {command} in {ns} timed out after {timeout}s; "
                             f"stderr:\n{err.decode()[-3000:]}") from None
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"client {command} in {ns} failed (exit {proc.returncode}); "
                             f"stderr:\n{err.decode()[-3000:]}")
    return json.loads(lines[-1])
