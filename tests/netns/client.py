"""The test's client, run INSIDE a namespace: ``ip netns exec NS python client.py COMMAND JSON``.

Prints one JSON object (the last stdout line) with what it observed; exits non-zero on an
unexpected error. Commands (arguments in the JSON object, with ``etcd``, ``cluster``, ``app``):

* ``wait-etcd``, ``wait-leader`` -- poll until etcd is healthy / placement elected a leader;
* ``rtt`` -- median TCP connect time (SYN -> RST from a closed port) to each of ``targets``;
* ``call`` -- ``times`` calls of ``method`` on ``binding/name`` as a client of ``region``;
* ``follow`` -- call ``add`` from ``region`` until the object has moved to ``to_node`` and
  ``after`` more calls were made there; every call's latency, the owner seen after it, errors;
* ``registered`` -- wait until node ``node`` is registered in etcd;
* ``migrate`` -- ``duro.client.admin.migrate`` to ``to_node``;
* ``settle`` -- wait until exactly one node of ``nodes`` serves the object and it holds
  ``acked``; then one more ``add`` and (``alarm``) wait for the alarm to have fired.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


async def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.1) -> float:
    t0 = time.monotonic()
    last: object = None
    while time.monotonic() - t0 < timeout:
        try:
            if await pred():
                return time.monotonic() - t0
        except Exception as exc:  # keep polling; report the last one
            last = exc
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout}s (last error: {last!r})")


async def wait_etcd(a: dict[str, Any]) -> dict[str, Any]:
    host, port = a["etcd"].rsplit(":", 1)

    async def healthy() -> bool:
        r, w = await asyncio.open_connection(host, int(port))
        w.write(f"GET /health HTTP/1.0\r\nHost: {a['etcd']}\r\n\r\n".encode())
        data = await r.read()
        w.close()
        return b'"health":"true"' in data

    return {"seconds": await wait_for(healthy, 30, "etcd healthy", 0.05)}


async def wait_leader(a: dict[str, Any]) -> dict[str, Any]:
    from etcd3aio import Etcd3Client

    from duro.topology.etcdkv import get_value
    from duro.topology.keys import leader_key

    async with Etcd3Client([a["etcd"]]) as client:
        async def leader() -> bool:
            return await get_value(client, leader_key(a["cluster"])) is not None

        return {"seconds": await wait_for(leader, 30, "placement leader")}


async def wait_replicated(a: dict[str, Any]) -> dict[str, Any]:
    """Until every running node leads its home group and every group has ``want`` members in
    sync: the steady state after a start (before it, a write may be refused as under-replicated,
    a retryable error the caller would see)."""
    from etcd3aio import Etcd3Client

    from duro.dev import groups_replicated
    from duro.topology.etcdkv import get_prefix
    from duro.topology.groups import GroupConfig, groups_prefix
    from duro.topology.nodes import NodeInfo, nodes_prefix

    nodes, want = set(a["nodes"]), a["want"]
    async with Etcd3Client([a["etcd"]]) as client:
        async def replicated() -> bool:
            groups = [GroupConfig.from_json(v, 0)
                      for _, v in await get_prefix(client, groups_prefix(a["cluster"]))]
            sids = {i.node_id: i.storage_id for i in (
                NodeInfo.from_json(v) for _, v in
                await get_prefix(client, nodes_prefix(a["cluster"])))}
            return groups_replicated(groups, sids, nodes, want)

        return {"seconds": await wait_for(replicated, a.get("wait", 60), "replica groups in sync")}


async def rtt(a: dict[str, Any]) -> dict[str, Any]:
    out = {}
    loop = asyncio.get_running_loop()
    for name, host, port in a["targets"]:
        samples = []
        for _ in range(a.get("samples", 5)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            t0 = time.perf_counter()
            try:
                await loop.sock_connect(s, (host, port))
                raise SystemExit(f"{host}:{port} accepted a connection: pick a closed port")
            except ConnectionRefusedError:
                samples.append((time.perf_counter() - t0) * 1000)
            finally:
                s.close()
        out[name] = {"median_ms": statistics.median(samples), "samples_ms": samples}
    return out


def _connect(a: dict[str, Any]):  # noqa: ANN202
    import duro.client

    return duro.client.connect(etcd=a["etcd"], cluster=a["cluster"], app=a["app"],
                               region=a["region"])


async def _owner(client: Any, stub: Any, cluster: str) -> tuple[str, int]:
    entry = await client.invoker.directory.resolve(stub.id.raw, create=False, fresh=True)
    if entry is None:
        return ("", 0)
    owner = await client.invoker.await_owner(entry, None)
    return (owner[0], entry.epoch)


async def call(a: dict[str, Any]) -> dict[str, Any]:
    async with _connect(a) as c:
        stub = c.namespace(a["binding"]).get_by_name(a["name"])
        results = [await getattr(stub, a["method"])(*a.get("args", []))
                   for _ in range(a.get("times", 1))]
        node, epoch = await _owner(c, stub, a["cluster"])
        return {"results": results, "owner": node, "epoch": epoch}


async def follow(a: dict[str, Any]) -> dict[str, Any]:
    """Calls from one region only; the latency of each and the owner seen right after it."""
    async with _connect(a) as c:
        stub = c.namespace(a["binding"]).get_by_name(a["name"])
        calls: list[list[Any]] = []  # [seconds, owner after the call]
        errors: list[str] = []
        acked = None
        t_start = time.monotonic()
        moved_at = None
        after = 0
        while time.monotonic() - t_start < a["max_seconds"] and after < a["after"]:
            t0 = time.perf_counter()
            try:
                acked = await stub.add()
            except Exception as exc:  # any error fails the test (asserted by the caller)
                errors.append(repr(exc))
                continue
            dt = time.perf_counter() - t0
            node, _ = await _owner(c, stub, a["cluster"])
            calls.append([dt, node])
            if node == a["to_node"]:
                moved_at = moved_at or time.monotonic() - t_start
                after += 1
        final = await stub.get()
        node, epoch = await _owner(c, stub, a["cluster"])
        return {"calls": calls, "errors": errors, "acked": acked, "final": final,
                "moved_after_s": moved_at, "owner": node, "epoch": epoch}


async def registered(a: dict[str, Any]) -> dict[str, Any]:
    from etcd3aio import Etcd3Client

    from duro.topology.etcdkv import get_value
    from duro.topology.nodes import node_key

    async with Etcd3Client([a["etcd"]]) as client:
        async def present() -> bool:
            return await get_value(client, node_key(a["cluster"], a["node"])) is not None

        return {"seconds": await wait_for(present, a.get("wait", 20), "node registered")}


async def migrate(a: dict[str, Any]) -> dict[str, Any]:
    from duro.client.admin import migrate as do_migrate

    try:
        res = await do_migrate(a["etcd"], a["cluster"], a["app"], a["binding"], a["name"],
                               to_node=a["to_node"])
    except Exception as exc:  # the source may die mid-call (fault injection)
        return {"outcome": "error", "error": repr(exc)}
    return dict(res)


async def _serving(a: dict[str, Any], stub: Any) -> list[str]:
    """Ask every node directly: which of them answers for the object (not a redirect)?"""
    from duro import _codec
    from duro._namespace import Call, CallKind
    from duro._wire import RedirectError
    from duro.client.connection import NodeConnection
    from duro.errors import DuroError

    serving = []
    for name, address in a["nodes"].items():
        try:
            async with NodeConnection(address) as conn:
                call = Call(a["binding"], stub.id.raw, CallKind.RPC, "get",
                            _codec.encode([[], {}]))
                await conn.invoke(call, timeout=10.0)
                serving.append(name)
        except (RedirectError, DuroError, OSError):
            pass  # redirect / fenced / unavailable / down: not serving
    return serving


async def settle(a: dict[str, Any]) -> dict[str, Any]:
    async with _connect(a) as c:
        ns = c.namespace(a["binding"])
        seen: dict[str, Any] = {}

        async def one_owner_with_all_writes() -> bool:
            seen["serving"] = await _serving(a, ns.get_by_name(a["name"]))
            if len(seen["serving"]) != 1:
                return False
            seen["value"] = await ns.get_by_name(a["name"]).get()
            return seen["value"] == a["acked"]

        out: dict[str, Any] = {}
        try:
            out["settle_s"] = await wait_for(one_owner_with_all_writes, a.get("wait", 40),
                                             "one owner with every acknowledged write", 0.2)
        except TimeoutError as exc:
            return {"error": str(exc), **seen}
        out.update(seen)
        out["owner"], out["epoch"] = await _owner(c, ns.get_by_name(a["name"]), a["cluster"])
        out["add_after"] = await ns.get_by_name(a["name"]).add()
        if a.get("alarm"):
            async def fired() -> bool:
                return await ns.get_by_name(a["name"]).fired() >= 1

            try:
                out["alarm_s"] = await wait_for(fired, a.get("wait", 40), "alarm fired", 0.3)
            except TimeoutError as exc:
                out["alarm_error"] = str(exc)
        return out


COMMANDS = {"wait-etcd": wait_etcd, "wait-leader": wait_leader,
            "wait-replicated": wait_replicated, "rtt": rtt, "call": call,
            "follow": follow, "registered": registered, "migrate": migrate, "settle": settle}


def main() -> None:
    command, args = sys.argv[1], json.loads(sys.argv[2])
    result = asyncio.run(COMMANDS[command](args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
