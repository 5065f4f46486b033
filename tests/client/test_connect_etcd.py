"""``duro.client.connect`` and etcd: a dead endpoint fails within ``timeout`` with a clear error,
and a client that lived through an etcd restart closes without leftovers on stderr."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import duro.client
from duro._etcd import free_port
from duro.client import EtcdUnreachableError
from duro.errors import UnavailableError

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("plaintext")]


async def test_connect_to_a_dead_etcd_fails_within_its_timeout() -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    before = asyncio.all_tasks()
    t0 = time.monotonic()
    with pytest.raises(EtcdUnreachableError) as info:
        async with duro.client.connect(etcd=endpoint, bindings={"X": "X"}, timeout=1.5):
            pass
    elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed < 4.0, elapsed  # it tried for the whole timeout, and no longer
    err = info.value
    assert isinstance(err, UnavailableError) and err.retryable
    assert endpoint in str(err) and "1.5 s" in str(err)
    assert "refused" in err.reason.lower(), err.reason
    await asyncio.sleep(0.1)
    assert asyncio.all_tasks() == before  # nothing left running


async def test_connect_rejects_a_timeout_that_is_not_positive() -> None:
    from duro.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="timeout"):
        duro.client.connect(etcd="127.0.0.1:1", timeout=0)


async def test_connect_waits_for_an_etcd_that_comes_up_within_the_timeout(tmp_path: Path) -> None:
    """A cluster that is still starting is waited for (up to the timeout), not refused."""
    from duro._etcd import EtcdProcess

    proc = EtcdProcess(tmp_path / "etcd", unsafe_no_fsync=True)

    async def start_later() -> None:
        await asyncio.sleep(1.0)
        await proc.start_async()

    starter = asyncio.create_task(start_later())
    try:
        async with duro.client.connect(etcd=proc.endpoint, bindings={"X": "X"},
                                       timeout=20) as c:
            assert c.bindings == {"X": "X"}
        await starter
    finally:
        starter.cancel()
        await proc.stop_async()


CHILD = textwrap.dedent("""
    import asyncio, gc, sys
    from duro._etcd import EtcdProcess
    import duro.client

    async def main(root):
        etcd = EtcdProcess(root + "/etcd", unsafe_no_fsync=True)
        await etcd.start_async()
        try:
            async with duro.client.connect(etcd=etcd.endpoint, bindings={"X": "X"}) as c:
                await etcd.restart_async()  # every watch of the client fails and starts again
                await asyncio.sleep(3.0)  # the views re-read every 0.2 s until etcd answers
                gc.collect()  # what a long-lived process does sooner or later
                await asyncio.sleep(0.2)
            gc.collect()
            await asyncio.sleep(0.2)
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            print("tasks left:", left, flush=True)
        finally:
            await etcd.stop_async()
        print("CLOSED", flush=True)

    asyncio.run(main(sys.argv[1]))
    gc.collect()
""")


def test_close_after_an_etcd_restart_is_clean(tmp_path: Path) -> None:
    """Before the fix, etcd3aio's watch left grpc's request-iterator task pending when the
    stream failed: "Task was destroyed but it is pending!" and "aclose(): asynchronous generator
    is already running" on stderr at the next garbage collection or at close."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURO_TLS_")}
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=80)
    assert r.returncode == 0, r.stderr
    assert "CLOSED" in r.stdout and "tasks left: []" in r.stdout, (r.stdout, r.stderr)
    for bad in ("Task was destroyed", "aclose()", "Traceback", "never retrieved"):
        assert bad not in r.stderr, r.stderr
    # The outage was seen (so the test exercised the failing watches), once per view, not in
    # pages of retry lines.
    seen = [line for line in r.stderr.splitlines() if "etcd error" in line]
    assert seen, r.stderr
    assert len(seen) <= 8, r.stderr
