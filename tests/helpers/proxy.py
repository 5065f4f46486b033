"""A TCP proxy that can silently stop forwarding: a network partition between two processes.

Used by the membership tests and by cluster tests, which put it between a node process and etcd
(``--etcd 127.0.0.1:<proxy.port>``).
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["BlackholeProxy", "DelayProxy"]


class BlackholeProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``; ``blocked = True`` holds every byte.

    While blocked the peers' connections stay open but nothing arrives (what a partition looks
    like to TCP: no RST, no FIN, only silence). ``port`` may be fixed in advance (``listen_port``)
    so that a child process can be given the address before the proxy runs.
    """

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.blocked = False
        self.port = listen_port
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await r.read(65536):
                while self.blocked:
                    await asyncio.sleep(0.05)  # hold the bytes: the peer hears nothing
                w.write(data)
                await w.drain()
        w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.blocked:  # a partition also refuses new conversations (silently)
            while self.blocked:
                await asyncio.sleep(0.05)
        try:
            ur, uw = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            w.close()
            return
        self.connections += 1
        self._writers.update((w, uw))
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        self._writers.difference_update((w, uw))


class DelayProxy(BlackholeProxy):
    """Like :class:`BlackholeProxy`, and every chunk is held ``delay`` seconds (each direction)
    before it is forwarded, in order: a slow link (this kernel has no ``sch_netem``)."""

    def __init__(self, target_port: int, *, delay: float = 0.0, **kw: object) -> None:
        super().__init__(target_port, **kw)  # type: ignore[arg-type]
        self.delay = delay

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def forward() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while (item := await queue.get()) is not None:
                    due, data = item
                    if due > loop.time():
                        await asyncio.sleep(due - loop.time())
                    while self.blocked:
                        await asyncio.sleep(0.05)
                    w.write(data)
                    await w.drain()
            w.close()

        fwd = asyncio.ensure_future(forward())
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await r.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
        queue.put_nowait(None)
        await fwd
