"""The seed article's Counter, on duro.

HTTP: ``/counter/<name>/increment``, ``/counter/<name>/get``, ``/counter/<name>/websocket``.
RPC: ``await env.COUNTER.get_by_name("x").increment()``.
"""

from __future__ import annotations

import json

from duro import DurableObject, Request, Response


class Counter(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.value = 0
        ctx.block_concurrency_while(self._load)  # runs before any event is delivered

    async def _load(self) -> None:
        self.value = await self.ctx.storage.get("value", 0)

    # -- RPC ----------------------------------------------------------------------------------
    async def increment(self, by: int = 1) -> int:
        if not isinstance(by, int) or isinstance(by, bool):
            raise TypeError(f"increment by an integer, not {type(by).__name__}")
        return self._add(by)

    def _add(self, by: int) -> int:
        # Store first, change the object second: a value storage refuses (an integer past
        # 2**64 - 1) leaves the counter as it was instead of ahead of its storage.
        value = self.value + by
        self.ctx.storage.put("value", value)  # coalesced; the output gate makes it durable
        self.value = value
        return value

    async def get(self) -> int:
        return self.value

    # -- HTTP, as in the article ----------------------------------------------------------------
    async def fetch(self, request: Request) -> Response:
        path = request.path.rstrip("/").rsplit("/", 1)[-1]
        if path == "increment":
            return Response(json.dumps({"value": self._add(1)}))
        if path == "get":
            return Response(json.dumps({"value": self.value}))
        if path == "websocket":
            return self._handle_web_socket(request)
        return Response("Not found", status=404)

    def _handle_web_socket(self, request: Request) -> Response:
        accept = getattr(self.ctx, "accept_web_socket", None)
        if accept is None:
            return Response("WebSockets need the edge (duro dev)", status=426)
        ws = request.web_socket_pair()
        accept(ws)
        ws.send(json.dumps({"type": "current", "value": self.value}))
        return Response(status=101, web_socket=ws)

    async def web_socket_message(self, ws, message) -> None:
        try:
            data = json.loads(message)
        except (ValueError, TypeError):
            data = None
        if not isinstance(data, dict):
            ws.send(json.dumps({"type": "error", "error": "message must be a JSON object"}))
            return
        if data.get("type") == "increment":
            self._add(1)
            for socket in self.ctx.get_web_sockets():
                socket.send(json.dumps({"type": "update", "value": self.value}))

    async def web_socket_close(self, ws, code, reason, was_clean) -> None:
        ws.close(code, reason)
