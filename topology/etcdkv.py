"""etcd helpers the callers share: making a client, and three small reads/writes (etcd3aio speaks
raw Range/Put requests)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any, Iterable

from etcd3aio import Etcd3Client, prefix_range_end

from duro import tls as _tls
from duro.errors import UnavailableError

_PROCESS: Any = object()  # the process's certificate (duro.tls.configured())

__all__ = ["etcd_client", "resolve_endpoint", "get_value", "get_prefix", "put_value",
           "check_reachable", "EtcdUnreachableError", "watch", "describe_etcd_error"]

_PROBE_KEY = b"/duro/-reachable"  # read (never written): any answer proves etcd is there


def resolve_endpoint(endpoint: str) -> str:
    """``host:port`` with the host resolved to an IP address (etcd3aio refuses host names, which
    compose and Kubernetes service names are)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        raise ValueError(f"etcd endpoint must be host:port, got {endpoint!r}")
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
        return endpoint
    except ValueError:
        pass
    try:
        addr = socket.getaddrinfo(bare, int(port), type=socket.SOCK_STREAM)[0][4][0]
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot resolve etcd endpoint {endpoint!r}: {exc}") from None
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def etcd_client(endpoints: str | Iterable[str], *, tls: Any = _PROCESS) -> Etcd3Client:
    """An etcd client for ``endpoints`` (one ``host:port``, a comma list, or a sequence), over
    mTLS with this process's certificate when it has one (``tls``: another
    :class:`~duro.tls.TlsMaterial`, or None for plaintext; docs/security.md)."""
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    args = _tls.etcd_client_args() if tls is _PROCESS else _tls.etcd_client_args(tls)
    return Etcd3Client([resolve_endpoint(e.strip()) for e in endpoints], **args)


async def get_value(client: Etcd3Client, key: str, *, timeout: float | None = 5.0) -> bytes | None:
    resp = await client.kv.get(key.encode(), timeout=timeout)
    return resp.kvs[0].value if resp.kvs else None


async def get_prefix(
    client: Etcd3Client, prefix: str, *, timeout: float | None = 10.0
) -> list[tuple[str, bytes]]:
    p = prefix.encode()
    resp = await client.kv.get(p, prefix_range_end(p), timeout=timeout)
    return [(kv.key.decode(), kv.value) for kv in resp.kvs]


async def put_value(client: Etcd3Client, key: str, value: bytes | str, *,
                    timeout: float | None = 5.0) -> None:
    await client.kv.put(key.encode(), value.encode() if isinstance(value, str) else value,
                        timeout=timeout)


class EtcdUnreachableError(UnavailableError):
    """etcd did not answer within the time given (``duro.client.connect(timeout=)``)."""

    def __init__(self, endpoint: str, timeout: float, reason: str) -> None:
        super().__init__(f"cannot reach etcd at {endpoint} within {timeout:g} s ({reason})")
        self.endpoint, self.timeout, self.reason = endpoint, timeout, reason


async def check_reachable(client: Etcd3Client, endpoint: str, timeout: float) -> None:
    """Return once etcd answers one read; raise :class:`EtcdUnreachableError` (an
    :class:`~duro.errors.UnavailableError`) naming ``endpoint`` and the last error if it does
    not within ``timeout`` seconds (connection refused, a TLS mismatch, a host that does not
    answer). Tries again every 0.2 s until then,
    so a cluster that is still starting is waited for, but never longer than ``timeout``."""
    from duro.topology.watch import ETCD_ERRORS

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no answer"
    while True:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            await client.kv.get(_PROBE_KEY, timeout=left, max_attempts=1)
            return
        except ETCD_ERRORS as exc:
            last = describe_etcd_error(exc)
        await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
    raise EtcdUnreachableError(endpoint, timeout, last)


def describe_etcd_error(exc: BaseException) -> str:
    """The useful end of an etcd/gRPC error: "Connection refused", not three lines of gRPC."""
    import grpc

    text = ""
    if isinstance(exc, grpc.aio.AioRpcError):
        text = exc.details() or exc.code().name
    elif isinstance(exc.__cause__, grpc.aio.AioRpcError):
        text = exc.__cause__.details() or exc.__cause__.code().name
    text = text or str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError) and not str(exc):
        text = "no answer"
    return text.rsplit(": ", 1)[-1] if "Failed to connect" in text else text


async def watch(client: Etcd3Client, key: str | bytes, range_end: bytes | None = None, *,
                start_revision: int = 0) -> AsyncIterator[Any]:
    """The ``WatchResponse`` messages of one etcd watch stream, until it ends or fails (the
    error is raised: the caller re-reads and watches again, as ``PrefixView`` and the placement
    election do). Use it inside ``contextlib.aclosing``.

    Why not ``etcd3aio``'s ``watch.watch()``: its request iterator never ends (it awaits a
    future forever after the create request), and when the stream fails (etcd restarted) grpc
    leaves the task that consumes that iterator pending; once the call is dropped the task is
    garbage, and the process prints "Task was destroyed but it is pending!" and "aclose():
    asynchronous generator is already running" (at a garbage collection, or when its client
    closes). Here the request iterator ends as soon as the stream does, so that task finishes.
    """
    from etcd3aio._protobuf import WatchCreateRequest, WatchRequest

    key_bytes = key.encode() if isinstance(key, str) else key
    done = asyncio.Event()

    async def requests() -> AsyncIterator[Any]:
        yield WatchRequest(create_request=WatchCreateRequest(
            key=key_bytes, range_end=range_end or b"", start_revision=start_revision))
        await done.wait()

    service = client.watch
    call = service._stub.Watch(requests(), metadata=service._metadata or None)
    try:
        async for response in call:
            yield response
    finally:
        done.set()  # the request iterator returns: grpc's task that drives it finishes
        call.cancel()
