"""The first hour with the CLI, through real ``duro`` processes: a dead or missing cluster fails in
seconds with one line; ``duro dev --simulate-latency`` slows cross-region calls; a second
``duro dev`` refuses at once and leaves the first one working; ``duro dev --app DIR`` hints at
DIR's bindings and serves changed code without losing acknowledged writes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import pytest

import duro.client
from duro import tls
from duro.errors import DuroError

from duro._dev_guard import port_taken
from duro._etcd import free_port
from tests.cluster.conftest import ROOT, processes_mentioning

pytestmark = [pytest.mark.cluster]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURO_") or k == "DURO_ETCD_BIN"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def cli(*args: str, cwd: Path, env: dict[str, str] | None = None
              ) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duro.cli", *args, cwd=cwd, env=env or _env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - t0


# -- a cluster that is not there ------------------------------------------------------------------

@pytest.mark.timeout(120)
async def test_cli_without_a_cluster_fails_within_5_s_with_one_line(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    cases = [
        ("call", "COUNTER", "x", "increment", "--etcd", dead),
        ("status", "--etcd", dead),
        ("where", "COUNTER", "x", "--etcd", dead),
        ("migrate", "COUNTER", "x", "--to-region", "eu-west", "--etcd", dead),
        ("drain", "us-east-0", "--etcd", dead),
    ]
    for args in cases:
        rc, out, err, took = await cli(*args, cwd=tmp_path)  # outside the repository
        assert rc == 1, (args, out, err)
        assert took < 5.0, (args, took)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (args, err)
        line = lines[0]
        assert line.startswith(f"duro {args[0]}: cannot reach etcd at {dead}"), line
        assert "refused" in line.lower() and "--etcd" in line, line
        assert out == ""

    # No flag, no DURO_ETCD, no duro dev here: the default endpoint, and what to do about it.
    if not port_taken(2379):
        rc, _, err, took = await cli("call", "COUNTER", "x", "increment", cwd=tmp_path)
        assert rc == 1 and took < 5.0
        assert err.count("\n") == 1 and "127.0.0.1:2379" in err
        assert "no duro dev runs in" in err and "duro dev" in err, err

    # A duro dev that is gone but left its state file: the message names the file.
    state = tmp_path / ".duro" / "dev" / "cluster.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"etcd": dead, "cluster": "duro"}))
    rc, _, err, took = await cli("status", cwd=tmp_path)
    assert rc == 1 and took < 5.0 and err.count("\n") == 1, err
    assert f"cannot reach etcd at {dead}" in err and ".duro/dev/cluster.json" in err, err
    assert "not running" in err


# -- duro dev --------------------------------------------------------------------------------------

class Dev:
    """One ``duro dev`` process: its banner lines, and its output kept drained."""

    def __init__(self, proc: asyncio.subprocess.Process, data: Path) -> None:
        self.proc = proc
        self.data = data
        self.lines: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, *args: str, cwd: Path, data: Path) -> Dev:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "duro.cli", "dev", *args, cwd=cwd, env=_env(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        dev = cls(proc, data)
        try:
            await dev.wait_line("DURO-DEV-READY", 90)
        except BaseException:
            await dev.stop()
            raise
        return dev

    async def wait_line(self, prefix: str, timeout: float) -> str:
        """The next line starting with ``prefix`` (read here until the drain task starts)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {prefix!r} line in time:\n" + "".join(self.lines)
            raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            assert raw, "duro dev exited:\n" + "".join(self.lines) + _logs(self.data)
            line = raw.decode()
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    @property
    def banner(self) -> str:
        return "".join(self.lines)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.communicate(), 60)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for pid, _ in processes_mentioning(str(self.data)):  # never leave strays behind
            os.kill(pid, signal.SIGKILL)


def _logs(data: Path) -> str:
    parts = []
    for log in sorted((data / "logs").glob("*.log")):
        parts.append(f"--- {log.name}\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(parts)


def _edge_urls(banner: str) -> dict[str, str]:
    """region -> HTTP URL of its edge (a separate process, or a node that is its edge too)."""
    return dict(re.findall(r"^edge(?: in)?\s+\S+\s+region (\S+)\s+HTTP (http://\S+)", banner,
                           re.M))


async def _timed_get(http: aiohttp.ClientSession, url: str) -> float:
    t0 = time.monotonic()
    async with http.get(url) as r:
        assert r.status == 200, (url, r.status, await r.text())
        await r.read()
    return time.monotonic() - t0


@pytest.mark.timeout(240)
async def test_simulated_latency_and_a_second_dev_that_refuses(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    base = free_port()
    dev = await Dev.start("--data-dir", str(data), "--base-port", str(base), "--http-port", "0",
                          "--simulate-latency", "--no-reload", cwd=ROOT, data=data)
    try:
        assert "latency simulated between regions" in dev.banner
        edges = _edge_urls(dev.banner)
        assert set(edges) == {"us-east", "eu-west", "ap-south"}, dev.banner
        # The app's own hints: the examples' bindings.
        assert "duro call COUNTER demo" in dev.banner and "duro call BANK demo" in dev.banner

        # -- latency: an object placed by a us-east caller, called from both regions' edges
        async with aiohttp.ClientSession() as http:
            await _timed_get(http, f"{edges['us-east']}/counter/lat/get")  # placed in us-east
            same, cross = [], []
            for _ in range(6):  # interleaved, so that load on the machine hits both alike
                same.append(await _timed_get(http, f"{edges['us-east']}/counter/lat/get"))
                cross.append(await _timed_get(http, f"{edges['eu-west']}/counter/lat/get"))
        # us-east <-> eu-west is 40 ms each way: a call from eu-west waits 80 ms more.
        assert statistics.median(cross) >= statistics.median(same) + 0.05, (same, cross)
        assert min(cross) >= 0.075, cross

        # -- a second duro dev: on the same data directory, or on the same ports
        rc, _, err, took = await cli("dev", "--data-dir", str(data), "--base-port",
                                     str(free_port()), "--http-port", "0", cwd=ROOT)
        assert rc == 1 and took < 10, err
        assert f"another duro dev (pid {dev.proc.pid})" in err and str(data) in err, err
        other = tmp_path / "other"
        rc, _, err, took = await cli("dev", "--data-dir", str(other), "--base-port", str(base),
                                     "--http-port", "0", cwd=ROOT)
        assert rc == 1 and took < 10, err
        assert f"port {base} (etcd) already in use" in err and "--base-port" in err, err
        assert not processes_mentioning(str(other)), "the refused duro dev started something"

        # The first one still serves, with its own bindings.
        state = json.loads((data / "cluster.json").read_text())
        tls = [f for k in ("ca", "cert", "key") for f in (f"--tls-{k}", state[f"tls_{k}"])]
        rc, out, err, _ = await cli("call", "COUNTER", "lat", "increment", "--etcd",
                                    f"127.0.0.1:{base}", *tls, cwd=ROOT)
        assert (rc, out.strip()) == (0, "1"), err
    finally:
        await dev.stop()


APP_PY = """\
from duro import DurableObject


class Tally(DurableObject):
    async def add(self, n: int = 1) -> int:
        total = await self.ctx.storage.get("total", 0) + {factor} * n
        await self.ctx.storage.put("total", total)
        return total
"""


@pytest.mark.timeout(300)
async def test_dev_on_a_users_app_hints_at_it_and_reloads_changed_code(tmp_path: Path) -> None:
    app = tmp_path / "tally"
    app.mkdir()
    # No duro.toml: the binding TALLY is discovered from the class (duro._app).
    (app / "app.py").write_text(APP_PY.format(factor=1))
    data = app / ".duro" / "dev"  # the default data directory, inside the watched app
    dev = await Dev.start("--app", "app.py", "--base-port", str(free_port()), "--http-port",
                          "0", cwd=app, data=data)
    try:
        banner = dev.banner
        assert "duro call TALLY demo add    (Tally: add)" in banner, banner
        assert "COUNTER" not in banner and "/counter/" not in banner, banner
        assert "reaches nothing yet" in banner  # nothing exposed over HTTP, and it says how
        assert f"watching {app}" in banner

        async def add(n: int) -> int:
            rc, out, err, _ = await cli("call", "TALLY", "t", "add", f"[{n}]", cwd=app)
            assert rc == 0, err
            return int(out)

        assert await add(1) == 1
        assert await add(5) == 6  # acknowledged writes, before the change

        # A writer keeps adding through the reload; every total it was told must still be there.
        state = json.loads((data / "cluster.json").read_text())
        tls.configure(tls.TlsConfig(state["tls_ca"], state["tls_cert"], state["tls_key"]))
        acked: list[int] = []
        failed: list[DuroError] = []
        stop = asyncio.Event()

        async def writer(c: duro.client.Client) -> None:
            stub = c.namespace("TALLY").get_by_name("w")
            while not stop.is_set():
                try:
                    acked.append(await stub.add(1))
                except DuroError as exc:  # a node restarting: may or may not have applied
                    failed.append(exc)
                    stub = c.namespace("TALLY").get_by_name("w")
                    await asyncio.sleep(0.05)

        async with duro.client.connect(etcd=state["etcd"], region="us-east") as c:
            task = asyncio.create_task(writer(c))
            await asyncio.sleep(1.0)
            (app / "app.py").write_text(APP_PY.format(factor=100))
            await dev.wait_line("DURO-DEV-RELOADED", 120)
            await asyncio.sleep(1.0)
            stop.set()
            await task
            final = await c.namespace("TALLY").get_by_name("w").add(0)
        assert all(e.retryable for e in failed), failed
        assert acked == sorted(set(acked)), acked  # totals only grow: nothing went back
        steps = {b - a for a, b in zip(acked, acked[1:])}
        assert 1 in steps and 100 in steps, steps  # served by the old code, then the new
        assert final == acked[-1] and acked[-1] - acked[-2] == 100, acked[-5:]
        took = [line.strip() for line in dev.lines if "reloaded in" in line]
        print(f"writer through the reload: {len(acked)} acknowledged, {len(failed)} failed; "
              f"{took}")
        assert await add(1) == 106  # the new code, on the storage the old code wrote

        # A change that does not load: reported, and the code that runs keeps serving.
        (app / "app.py").write_text(APP_PY.format(factor=100) + "\ndef broken(:\n")
        await dev.wait_line("DURO-DEV-RELOAD-FAILED", 60)
        assert "SyntaxError" in dev.banner and "still serving" in dev.banner
        assert await add(1) == 206
    finally:
        await dev.stop()
    assert not processes_mentioning(str(data))
