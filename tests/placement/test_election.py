"""Leader election: in-process basics, and takeover after SIGKILL of a placement process."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from etcd3aio import Etcd3Client

from duro._etcd import EtcdProcess, free_port
from duro._pb import placement_pb2, placement_pb2_grpc
from duro.node.membership import Membership
from duro.placement.election import Election
from duro.topology.nodes import NodeInfo
from tests.cluster.etcd_fixture import assert_eventually, etcd, etcd_client, pid_alive  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

CLUSTER = "t"


async def test_one_leader_and_resign_hands_over(etcd_client: Etcd3Client) -> None:
    changes: list[tuple[str, bool]] = []
    es = [
        Election(etcd_client, CLUSTER, f"e{i}", f"127.0.0.1:{7000 + i}", ttl=2,
                 on_change=lambda leading, i=i: changes.append((f"e{i}", leading)))
        for i in range(3)
    ]
    for e in es:
        await e.start()
    try:
        await assert_eventually(lambda: sum(e.is_leader() for e in es) == 1, timeout=10)
        first = next(e for e in es if e.is_leader())
        for e in es:
            await assert_eventually(lambda e=e: e.leader is not None, timeout=10)
            assert e.leader.leader_id == first.me.leader_id  # type: ignore[union-attr]
        await first.stop()
        rest = [e for e in es if e is not first]
        t0 = time.monotonic()
        await assert_eventually(lambda: sum(e.is_leader() for e in rest) == 1, timeout=10)
        assert time.monotonic() - t0 < 3  # resignation: no need to wait for the lease
        second = next(e for e in rest if e.is_leader())
        assert second.guard is not None and first.guard is None
        assert (first.me.leader_id, False) in changes and (second.me.leader_id, True) in changes
    finally:
        for e in es:
            await e.stop()


def spawn_placement(etcd: EtcdProcess, replica: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "duro.placement", "--etcd", etcd.endpoint, "--cluster", CLUSTER,
           "--listen", f"127.0.0.1:{port}", "--id", replica, "--leader-ttl", "3"]
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            cwd=str(Path(__file__).resolve().parents[2]))


async def status(port: int) -> placement_pb2.PlacementStatusResponse | None:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = placement_pb2_grpc.PlacementStub(ch)
            return await stub.Status(placement_pb2.PlacementStatusRequest(), timeout=2)
    except grpc.aio.AioRpcError:
        return None


async def test_standby_takes_over_after_leader_sigkill(etcd: EtcdProcess, tmp_path: Path) -> None:
    ports = {"pa": free_port(), "pb": free_port()}
    procs = {r: spawn_placement(etcd, r, p, tmp_path / f"{r}.log") for r, p in ports.items()}
    try:
        async with Etcd3Client([etcd.endpoint]) as client:
            node = Membership(client, CLUSTER, NodeInfo("n1", "127.0.0.2:9000", "us-east",
                                                        storage_id="sid-n1"), ttl=3)
            await node.start(timeout=10)
            try:
                leader_id = ""

                async def someone_leads() -> bool:
                    nonlocal leader_id
                    for p in ports.values():
                        st = await status(p)
                        if st is not None and st.is_leader:
                            leader_id = st.replica_id
                            return True
                    return False

                await assert_eventually(someone_leads, timeout=30, interval=0.2, message="no leader")
                standby = "pb" if leader_id == "pa" else "pa"
                procs[leader_id].send_signal(signal.SIGKILL)
                procs[leader_id].wait()
                t_kill = time.monotonic()

                async def assigned_by_standby() -> bool:
                    try:
                        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[standby]}") as ch:
                            stub = placement_pb2_grpc.PlacementStub(ch)
                            r = await stub.AssignPartitions(placement_pb2.AssignPartitionsRequest(
                                partitions=[random.randrange(1024)]), timeout=2)
                            return len(r.groups) == 1 and r.groups[0] > 0  # n1's home group
                    except grpc.aio.AioRpcError:
                        return False

                await assert_eventually(assigned_by_standby, timeout=15, interval=0.1,
                                        message="standby did not take over")
                takeover = time.monotonic() - t_kill
                print(f"\nplacement takeover after SIGKILL: {takeover:.2f}s (leader TTL 3s)")
                assert takeover < 10
                st = await status(ports[standby])
                assert st is not None and st.is_leader and st.leader_id == standby
            finally:
                await node.stop()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for r, p in procs.items():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                pytest.fail(f"placement {r} did not stop on SIGTERM")
            assert not pid_alive(p.pid)
        # The surviving replica stopped cleanly on SIGTERM.
        codes = {r: p.returncode for r, p in procs.items()}
        assert sorted(codes.values()) == [-signal.SIGKILL, 0], codes


async def test_placement_process_stops_on_sigterm(etcd: EtcdProcess, tmp_path: Path) -> None:
    port = free_port()
    p = spawn_placement(etcd, "solo", port, tmp_path / "solo.log")
    try:
        await assert_eventually(lambda: _leads(port), timeout=30, interval=0.2)
    finally:
        p.send_signal(signal.SIGTERM)
        await asyncio.to_thread(p.wait, 15)
    assert p.returncode == 0, (tmp_path / "solo.log").read_text()
    async with Etcd3Client([etcd.endpoint]) as c:  # resigned: the leader key is gone at once
        assert (await c.kv.get(f"/duro/{CLUSTER}/placement/leader")).kvs == []


async def _leads(port: int) -> bool:
    st = await status(port)
    return st is not None and st.is_leader
