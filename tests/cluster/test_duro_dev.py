"""``duro dev`` as the README runs it: a subprocess, the CLI against it, Ctrl-C, no orphans."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from duro._etcd import free_port
from tests.cluster.conftest import ROOT, processes_mentioning, wait_until

pytestmark = [pytest.mark.cluster]


def _get(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURO_") or k == "DURO_ETCD_BIN"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duro.cli", *args, cwd=cwd, env=_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(150)
async def test_duro_dev_cli_and_clean_stop(tmp_path: Path) -> None:
    data = tmp_path / ".duro" / "dev"  # the default layout, under a scratch directory
    port = free_port()
    dev = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duro.cli", "dev", "--data-dir", str(data), "--base-port", str(port),
        "--http-port", "0",  # free edge ports: never collide with a developer's duro dev on 8787
        cwd=ROOT, env=_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert dev.stdout is not None
    lines: list[str] = []
    try:
        endpoint = ""
        while not endpoint:
            raw = await asyncio.wait_for(dev.stdout.readline(), 60)
            assert raw, "duro dev exited before it was ready:\n" + "".join(lines) + _logs(data)
            line = raw.decode()
            lines.append(line)
            if line.startswith("DURO-DEV-READY"):
                endpoint = line.split("etcd=", 1)[1].strip()
        assert endpoint == f"127.0.0.1:{port}"
        banner = "".join(lines)
        for region in ("us-east", "eu-west", "ap-south"):
            assert f"region {region}" in banner
        assert (data / "cluster.json").is_file()
        # mTLS by default: from another directory, the CLI needs the admin certificate duro dev
        # made (it finds it itself in the directory duro dev runs in: the README form below).
        state = json.loads((data / "cluster.json").read_text())
        tls = [f for k in ("ca", "cert", "key") for f in (f"--tls-{k}", state[f"tls_{k}"])]
        assert "mTLS on" in banner
        # The banner names the console; it answers there, on the first edge's admin listener.
        console = re.search(r"console: (http://\S+/console/)", banner)
        assert console, banner
        page = await asyncio.to_thread(_get, console.group(1) + "api/session")
        assert page["actions"] is True and "COUNTER" in page["bindings"]

        # Keep draining its output so that it can never block on a full pipe.
        drain = asyncio.create_task(_drain(dev.stdout, lines))

        rc, out, err = await cli("call", "COUNTER", "demo", "increment", "--etcd", endpoint,
                                 *tls, cwd=ROOT)
        assert (rc, out.strip()) == (0, "1"), err
        rc, out, err = await cli("call", "COUNTER", "demo", "increment", "[2]",
                                 "--etcd", endpoint, *tls, cwd=ROOT)
        assert (rc, out.strip()) == (0, "3"), err

        rc, out, err = await cli("where", "COUNTER", "demo", "--etcd", endpoint, *tls, cwd=ROOT)
        assert rc == 0, err
        where = json.loads(out)
        assert where["node"] in {"us-east-0", "eu-west-0", "ap-south-0"}
        assert where["epoch"] >= 1 and where["live"] is True
        assert [m["in_sync"] for m in where["group"]["replicas"]] == [True, True, True]
        assert where["region"] == where["node"].rsplit("-", 1)[0]

        rc, out, err = await cli("status", "--etcd", endpoint, *tls, cwd=ROOT)
        assert rc == 0, err
        status = json.loads(out)
        assert status["regions"] == ["ap-south", "eu-west", "us-east"]
        assert len(status["nodes"]) == 3 and status["leader"]["id"] == "placement-0"
        assert status["directory"]["assigned"] >= 1  # the partition demo's entry is in
        assert len(status["groups"]) == 3 and status["under_replicated_groups"] == []
        assert status["groups_without_primary"] == []

        # The README form, without --etcd: from the directory duro dev keeps its state in.
        rc, out, err = await cli("call", "COUNTER", "demo", "get", cwd=tmp_path)
        assert (rc, out.strip()) == (0, "3"), err
        rc, out, err = await cli("where", "COUNTER", "demo", cwd=tmp_path)
        assert rc == 0 and json.loads(out)["node"] == where["node"], err

        # The Gateway takes the token duro dev made in its data directory and printed.
        token_file = data / "gateway" / "gateway-token"
        assert f"Gateway token in {token_file}" in banner
        assert token_file.stat().st_mode & 0o077 == 0  # private to the user
        gateway = re.search(r"edge .*us-east\S* .*gRPC Gateway (\S+)", banner)
        assert gateway, banner
        assert await _gateway_get(gateway.group(1), token_file.read_text().strip()) == 3
        assert await _gateway_get(gateway.group(1), "") == "UNAUTHENTICATED"

        children = processes_mentioning(str(data))
        assert len(children) >= 5, children  # etcd, placement, 3 nodes (and duro dev itself)

        dev.send_signal(signal.SIGINT)  # Ctrl-C
        assert await asyncio.wait_for(dev.wait(), 60) == 0
        await drain
        assert "duro dev: stopping" in "".join(lines)
        await wait_until(lambda: not processes_mentioning(str(data)), timeout=10,
                         message=f"processes left after duro dev stopped: "
                                 f"{processes_mentioning(str(data))}")
        assert not (data / "cluster.json").exists()
    finally:
        if dev.returncode is None:
            dev.kill()
            await dev.wait()
        for pid, _ in processes_mentioning(str(data)):  # never leave strays behind on failure
            os.kill(pid, signal.SIGKILL)


async def _gateway_get(address: str, token: str) -> object:
    """COUNTER demo's value through the Gateway, or the gRPC status that refused the call."""
    from grpc import aio

    from duro._pb import gateway_pb2, gateway_pb2_grpc

    async with aio.insecure_channel(address) as ch:
        request = gateway_pb2.InvokeRequest(binding="COUNTER", name="demo", method="get")
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            r = await gateway_pb2_grpc.GatewayStub(ch).Invoke(request, metadata=metadata,
                                                              timeout=30)
        except aio.AioRpcError as exc:
            return exc.code().name
    return json.loads(r.result_json) if r.WhichOneof("outcome") == "result_json" else r.error


def _logs(data: Path) -> str:
    """The tail of every log ``duro dev`` left under ``data``, for a failure message."""
    parts = []
    for log in sorted((data / "logs").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(parts)


async def _drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while raw := await stream.readline():
        lines.append(raw.decode())


@pytest.mark.timeout(120)
async def test_duro_dev_killed_leaves_no_orphans(tmp_path: Path) -> None:
    """Even SIGKILL of ``duro dev`` (no chance to clean up) takes its cluster down with it: every
    child has a parent-death signal. Run with ``--separate-edges``, so that the edge processes
    that flag starts (instead of edges inside the nodes) are among the children checked."""
    data = tmp_path / "dev"
    dev = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duro.cli", "dev", "--data-dir", str(data),
        "--base-port", str(free_port()), "--http-port", "0", "--separate-edges",
        cwd=ROOT, env=_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert dev.stdout is not None
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(dev.stdout.readline(), 60)
        assert raw, "duro dev exited before it was ready:\n" + "".join(lines) + _logs(data)
        lines.append(raw.decode())
        if raw.startswith(b"DURO-DEV-READY"):
            break
    assert processes_mentioning(str(data)), "the cluster's processes are running"
    banner = "".join(lines)
    edges = [cmd for _, cmd in processes_mentioning(str(data)) if " duro.cli edge " in cmd]
    assert len(edges) == 3 and "edge       edge-us-east" in banner, (edges, banner)
    nodes = [cmd for _, cmd in processes_mentioning(str(data)) if " duro.cli node " in cmd]
    assert nodes and not any("--edge" in cmd.split() for cmd in nodes), nodes
    dev.kill()
    await dev.wait()
    deadline = time.monotonic() + 30
    while processes_mentioning(str(data)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not processes_mentioning(str(data)), processes_mentioning(str(data))
