"""Objects for the edge tests: ``Room`` (hibernation, tags, attachments, auto-response, output
gate) and the examples' ``Counter``, behind a worker ``fetch`` (``/room/<name>/...``)."""

from __future__ import annotations

import hashlib
import json

from duro import DurableObject, Request, Response


class Room(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.acts = 0
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        self.acts = await self.ctx.storage.get("acts", 0) + 1  # one per activation
        await self.ctx.storage.put("acts", self.acts)

    async def fetch(self, request: Request) -> Response:
        if request.path.endswith("/ws"):
            q = request.query
            ws = request.web_socket_pair()
            ws.serialize_attachment({"i": int(q.get("i", "0")), "pad": q.get("pad", "")})
            tags = [t for t in q.get("tags", "").split(",") if t]
            self.ctx.accept_web_socket(ws, tags)
            return Response(status=101, web_socket=ws)
        return Response("Not found", status=404)

    async def stats(self) -> dict:
        closes = await self.ctx.storage.list(prefix="closed:")
        return {"acts": self.acts, "sockets": len(self.ctx.get_web_sockets()),
                "closes": {k[7:]: v for k, v in closes.items()}}

    async def web_socket_message(self, ws, message) -> None:
        if isinstance(message, bytes):
            if message.startswith(b"digest:"):  # big messages: answer their size and hash
                ws.send(json.dumps({"type": "digest", "len": len(message),
                                    "sha256": hashlib.sha256(message).hexdigest()}))
                return
            ws.send(message)  # binary echo
            return
        cmd, _, arg = message.partition(":")
        if cmd == "broadcast":
            for s in self.ctx.get_web_sockets(arg or None):
                s.send(json.dumps({"type": "b", "att": s.deserialize_attachment()["i"],
                                   "acts": self.acts}))
        elif cmd == "auto":
            self.ctx.set_web_socket_auto_response("ping", "pong")
        elif cmd == "store":
            self.ctx.storage.put("stored", arg)  # the send below waits for this write
            ws.send(json.dumps({"type": "stored", "value": arg}))
        elif cmd == "count":
            ws.send(json.dumps({"type": "count", "n": len(self.ctx.get_web_sockets()),
                                "tags": self.ctx.get_tags(ws)}))
        elif cmd == "close":
            ws.close(4000, "bye from object")
        elif cmd == "flood":
            n, size = (int(x) for x in arg.split(","))
            for _ in range(n):
                ws.send("x" * size)
        else:
            ws.send(message)

    async def web_socket_close(self, ws, code, reason, was_clean) -> None:
        att = ws.deserialize_attachment()
        self.ctx.storage.put(f"closed:{att['i']}", [code, reason, was_clean])


class Counter(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.value = 0
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        self.value = await self.ctx.storage.get("value", 0)

    async def increment(self, by: int = 1) -> int:
        self.value += by
        self.ctx.storage.put("value", self.value)
        return self.value

    async def get(self) -> int:
        return self.value

    async def echo(self, value):
        return value

    async def fail(self) -> None:
        raise KeyError("boom")

    async def fetch(self, request: Request) -> Response:
        if request.method == "POST":
            return Response.json({"got": request.json(), "path": request.path})
        return Response.json({"value": self.value, "path": request.path})


async def fetch(request: Request, env) -> Response:
    """The worker: ``/room/<name>/<rest>`` to a Room, ``/count/<name>`` to a Counter."""
    parts = request.path.split("/")
    if len(parts) >= 3 and parts[1] == "room":
        return await env.ROOM.get_by_name(parts[2]).fetch(request)
    if len(parts) >= 3 and parts[1] == "count":
        return await env.COUNTER.get_by_name(parts[2]).fetch(request)
    return Response("worker: no such route", status=404)
