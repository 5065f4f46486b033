"""``duro.client``: call objects from any Python process.

::

    async with duro.client.connect(etcd="127.0.0.1:2379", region="eu-west") as c:
        stub = c.namespace("COUNTER").get_by_name("x")
        await stub.increment()

``etcd=`` routes every call to the object's owner through the directory (placing new objects);
``node=`` talks to one node directly (a standalone node, or tools). The stub API is the one objects
use inside the cluster.

A cluster with mTLS (docs/security.md) needs a certificate of its CA: the client presents the one
named by ``DURO_TLS_CA``/``DURO_TLS_CERT``/``DURO_TLS_KEY``, or the one given to
``duro.tls.configure(duro.tls.TlsConfig(ca, cert, key))`` before connecting (one per process; a
``duro://client/<name>`` certificate from ``duro certs --client <name>``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

from duro._namespace import Invoker, Namespace
from duro.topology.etcdkv import EtcdUnreachableError

__all__ = ["Client", "connect", "EtcdUnreachableError"]


class Client:
    """A connection to a cluster (or one node): namespaces by binding name."""

    def __init__(self, invoker: Invoker, bindings: Mapping[str, str], region: str = "") -> None:
        self.invoker = invoker
        self.bindings = dict(bindings)  # binding name -> namespace class name
        self.region = region
        self._closers: list[Any] = []

    def namespace(self, binding: str) -> Namespace:
        try:
            class_name = self.bindings[binding]
        except KeyError:
            from duro.errors import InvalidArgumentError

            raise InvalidArgumentError(
                f"unknown binding {binding!r}; known: {sorted(self.bindings)}"
            ) from None
        return Namespace(binding, class_name, self.invoker, self.region)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            await closer()
        self._closers.clear()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _bindings_of(app: Any) -> dict[str, str]:
    from duro._app import App, load_app

    loaded = app if isinstance(app, App) else load_app(app)
    return {name: loaded.namespace_class(b.class_name) for name, b in loaded.bindings.items()}


def connect(
    *,
    etcd: str | None = None,
    node: str | None = None,
    app: Any = None,
    bindings: Mapping[str, str] | None = None,
    cluster: str = "duro",
    region: str = "",
    directory_cache: int = 100_000,
    timeout: float = 10.0,
) -> _Connecting:
    """Connect to a cluster through etcd, or to one node. Use with ``async with``.

    Binding names map to class names through ``bindings``, else ``app`` (a path or module), else
    (with ``etcd``) the bindings the cluster's nodes published. ``directory_cache`` bounds the
    object directory entries the client caches (docs/directory.md).

    ``timeout`` bounds connecting through etcd (seconds): if etcd does not answer, or the
    cluster's state cannot be read from it, within that time, entering the ``async with`` raises
    :class:`~duro.errors.UnavailableError` naming the endpoint and the cause, and leaves nothing
    running. Calls have their own deadline.
    """
    if timeout <= 0:
        from duro.errors import InvalidArgumentError

        raise InvalidArgumentError(f"connect(): timeout must be positive, got {timeout!r}")
    return _Connecting(etcd, node, app, bindings, cluster, region, directory_cache, timeout)


class _Connecting:
    def __init__(self, etcd, node, app, bindings, cluster, region, cache,  # noqa: ANN001
                 timeout: float) -> None:
        self._args = (etcd, node, app, bindings, cluster, region, cache)
        self._timeout = timeout
        self._client: Client | None = None

    async def __aenter__(self) -> Client:
        etcd, node, app, bindings, cluster, region, cache = self._args
        names = dict(bindings) if bindings else (_bindings_of(app) if app is not None else None)
        if node:
            from duro.client.connection import NodeConnection

            conn = NodeConnection(node)
            client = Client(conn, names or {}, region)
            client._closers.append(conn.close)
        elif etcd:
            client = await self._through_etcd(etcd, names, cluster, region, cache)
        else:
            from duro.errors import InvalidArgumentError

            raise InvalidArgumentError("connect() needs etcd= or node=")
        self._client = client
        return client

    async def _through_etcd(self, etcd: str, names: dict[str, str] | None, cluster: str,
                            region: str, cache: int) -> Client:
        """A client routing through the cluster of ``etcd``, within ``timeout``: first one
        read proves etcd answers, then the router loads its views."""
        from duro.client.router import Router
        from duro.errors import UnavailableError
        from duro.topology.etcdkv import check_reachable, etcd_client

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        kv = etcd_client(etcd)
        await kv.connect()
        router: Router | None = None
        try:
            await check_reachable(kv, etcd, self._timeout)
            router = Router(kv, cluster=cluster, region=region, cache_entries=cache)
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await router.start()
                    if names is None:
                        names = await router.published_bindings()
            except TimeoutError:
                raise UnavailableError(
                    f"etcd at {etcd} answered, but the cluster's state could not be read from it "
                    f"within {self._timeout:g} s") from None
        except BaseException:
            if router is not None:
                await router.close()
            await kv.close()
            raise
        client = Client(router, names, region)
        client._closers.extend((kv.close, router.close))  # closed in reverse: router first
        return client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
