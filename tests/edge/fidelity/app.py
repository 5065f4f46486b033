"""Objects that report what the runtime gives them (see duro.toml)."""

from __future__ import annotations

import asyncio

from duro import DurableObject, Request, Response


class Probe(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.constructed_as = ctx.id.name  # the name is known in the constructor already
        self.log: list[str] = []

    async def fetch(self, request: Request) -> Response:
        return Response.json({"name": self.ctx.id.name, "id": self.ctx.id.hex()})

    async def whoami(self) -> dict:
        return {"name": self.ctx.id.name, "constructed_as": self.constructed_as,
                "id": self.ctx.id.hex()}

    async def add(self, a: int, b: int = 0) -> int:
        return a + b

    async def raises_type_error(self, x: int) -> None:
        raise TypeError(f"raised inside the method with {x}")

    async def get_several_wrongly(self):
        return await self.ctx.storage.get(["a", "b"])

    # -- storage options ---------------------------------------------------------------------
    async def put(self, key: str, value, unconfirmed: bool = False) -> str:
        self.ctx.storage.put(key, value, allow_unconfirmed=unconfirmed)
        return "put"

    async def get(self, key: str, no_cache: bool = False):
        return await self.ctx.storage.get(key, no_cache=no_cache)

    async def fill(self, n: int, size: int = 16) -> int:
        value = "x" * size
        for i in range(n):
            self.ctx.storage.put(f"k{i:07d}", value)
        return n

    async def read_range(self, n: int, no_cache: bool) -> int:
        got = await self.ctx.storage.get_many([f"k{i:07d}" for i in range(min(n, 128))],
                                              no_cache=no_cache)
        listed = await self.ctx.storage.list(no_cache=no_cache)
        return len(got) + len(listed)

    async def scan(self, allow_concurrency: bool) -> int:
        self.log.append("list-start")
        listed = await self.ctx.storage.list(allow_concurrency=allow_concurrency)
        self.log.append("list-end")
        return len(listed)

    async def mark(self, tag: str) -> None:
        self.log.append(tag)

    async def events(self) -> list[str]:
        return self.log


class Room(DurableObject):
    """Accepts WebSockets; ``?timeout=<ms>`` sets the WebSocket event timeout."""

    async def fetch(self, request: Request) -> Response:
        if (request.headers.get("upgrade") or "").lower() != "websocket":
            return Response("expected a WebSocket", status=426)
        ws = request.web_socket_pair()
        self.ctx.accept_web_socket(ws)
        self.ctx.set_web_socket_auto_response("ping", "pong")
        timeout = request.query.get("timeout")
        if timeout is not None:
            self.ctx.set_hibernatable_web_socket_event_timeout(int(timeout))
        return Response(status=101, web_socket=ws)

    async def web_socket_message(self, ws, message) -> None:
        if message == "ts?":
            at = self.ctx.get_web_socket_auto_response_timestamp(ws)
            ws.send("none" if at is None else str(at.timestamp()))
        elif message == "timeout?":
            ws.send(str(self.ctx.get_hibernatable_web_socket_event_timeout()))
        elif message == "name?":
            ws.send(str(self.ctx.id.name))
        elif message.startswith("slow "):
            ws.send("started")
            await asyncio.sleep(float(message.split()[1]))
            ws.send("finished")
        else:
            ws.send("echo " + message)
