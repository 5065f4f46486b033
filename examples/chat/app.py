"""The seed article's ChatRoom, on duro.

HTTP (through the edge's default routing ``/chat/<room>/<rest>``):

* ``GET /chat/<room>/messages`` -> ``{"messages": [...last 100...]}``
* ``GET /chat/<room>/websocket?userId=..&username=..`` -> WebSocket upgrade (400 ``Missing userId or
  username`` without them; 426 when no edge terminates WebSockets, e.g. in the Testbed).

WebSocket messages, as in the article. Client -> room: ``{"type": "message", "content": "..."}`` and
``{"type": "typing"}``. Room -> clients: ``history`` (to the joiner, last 50), ``user_joined`` (to the
others, with ``userCount``), ``message`` (``{type, message: {id, userId, username, content,
timestamp}}``, to everyone), ``typing`` (to the others), ``user_left`` (with ``userCount``).

RPC: ``await env.CHAT.get_by_name("lobby").post(user_id, username, content)`` and
``.history(limit=50)``; a message posted by RPC is broadcast to connected sockets too.

Differences from the article, on purpose:

* It uses the **hibernation** API: who a socket belongs to is the socket's *attachment*
  (``ws.serialize_attachment``), not an in-memory ``Map``. The object can then be evicted while
  sockets stay open at the edge; the next event reactivates it and every socket still knows its
  user. The article's ``users`` map would be empty after such a wake-up.
* Each message is stored under its own key ``messages:<seq>`` (the newest 1000 kept) instead of
  one ``messages`` value holding the whole list: a storage value is limited to 128 KiB (as in
  Durable Objects), and 1000 messages of ordinary length do not fit in one; rewriting the whole
  list for every message would also cost ~100 KiB of writes per message.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from duro import DurableObject, Request, Response

log = logging.getLogger("duro.examples.chat")

KEEP = 1000  # messages kept in storage and memory
PAGE = 100  # GET /messages
JOIN_HISTORY = 50  # sent to a socket when it joins
MAX_CONTENT = 4000  # characters of one message
PREFIX = "messages:"


def _key(seq: int) -> str:
    return f"{PREFIX}{seq:020d}"  # zero-padded: key order is message order


class ChatRoom(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.messages: list[dict[str, Any]] = []
        self.seq = 0  # sequence number of the newest message
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        stored = await self.ctx.storage.list(prefix=PREFIX, reverse=True, limit=KEEP)
        if stored:
            self.seq = int(next(iter(stored))[len(PREFIX):])
        self.messages = list(reversed(list(stored.values())))

    # -- RPC ----------------------------------------------------------------------------------
    async def post(self, user_id: str, username: str, content: str) -> dict[str, Any]:
        """Add a message as ``user_id``/``username`` and broadcast it; returns the message."""
        _check_name("user_id", user_id)
        _check_name("username", username)
        msg = self._add(user_id, username, content)
        self._broadcast({"type": "message", "message": msg})
        return msg

    async def history(self, limit: int = JOIN_HISTORY) -> list[dict[str, Any]]:
        """The last ``limit`` messages (1..1000), oldest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= KEEP:
            raise ValueError(f"limit must be an int in 1..{KEEP}, got {limit!r}")
        return self.messages[-limit:]

    # -- HTTP, as in the article --------------------------------------------------------------
    async def fetch(self, request: Request) -> Response:
        path = request.path.rstrip("/").rsplit("/", 1)[-1]
        if path == "websocket":
            return self._handle_web_socket(request)
        if path == "messages":
            return Response.json({"messages": self.messages[-PAGE:]})
        return Response("Not found", status=404)

    def _handle_web_socket(self, request: Request) -> Response:
        user_id = request.query.get("userId")
        username = request.query.get("username")
        if not user_id or not username:
            return Response("Missing userId or username", status=400)
        if getattr(self.ctx, "accept_web_socket", None) is None:
            return Response(
                "WebSockets need the edge, which terminates them (run `duro dev`); "
                "this runtime has no ctx.accept_web_socket",
                status=426,
            )
        ws = request.web_socket_pair()
        self._join(ws, user_id, username)
        return Response(status=101, web_socket=ws)

    def _join(self, ws: Any, user_id: str, username: str) -> None:
        # The attachment is stored with the socket at the edge: it survives hibernation.
        ws.serialize_attachment({"userId": user_id, "username": username,
                                 "joinedAt": int(time.time() * 1000)})
        tag = f"user:{user_id}"
        self.ctx.accept_web_socket(ws, [tag] if len(tag) <= 256 else [])  # tags: 256 chars max
        ws.send(json.dumps({"type": "history", "messages": self.messages[-JOIN_HISTORY:]}))
        self._broadcast(
            {"type": "user_joined", "userId": user_id, "username": username,
             "userCount": self._user_count()},
            exclude_user_id=user_id,
        )

    # -- hibernatable WebSocket events ----------------------------------------------------------
    async def web_socket_message(self, ws: Any, message: str | bytes) -> None:
        user = _attachment(ws)
        if user is None:
            return
        try:
            data = json.loads(message)
        except (ValueError, TypeError):
            data = None
        if not isinstance(data, dict):  # the article's client never sends this: say so
            ws.send(json.dumps({"type": "error", "error": "message must be a JSON object"}))
            return
        if data.get("type") == "message":
            try:
                msg = self._add(user["userId"], user["username"], data.get("content"))
            except ValueError as exc:
                ws.send(json.dumps({"type": "error", "error": str(exc)}))
                return
            self._broadcast({"type": "message", "message": msg})
        elif data.get("type") == "typing":
            self._broadcast(
                {"type": "typing", "userId": user["userId"], "username": user["username"]},
                exclude_user_id=user["userId"],
            )

    async def web_socket_close(self, ws: Any, code: int, reason: str, was_clean: bool) -> None:
        user = _attachment(ws)
        if user is not None and not self._connected(user["userId"], besides=ws):
            self._broadcast(
                {"type": "user_left", "userId": user["userId"], "username": user["username"],
                 "userCount": self._user_count(besides=ws)},
                skip=ws,
            )
        try:
            ws.close(code, reason)
        except Exception:  # already closed
            pass

    async def web_socket_error(self, ws: Any, error: Any) -> None:
        log.warning("chat room %s: WebSocket error: %r", self.ctx.id, error)

    # -- helpers --------------------------------------------------------------------------------
    def _add(self, user_id: str, username: str, content: Any) -> dict[str, Any]:
        if not isinstance(content, str) or not content.strip():
            raise ValueError("content must be a non-empty string")
        if len(content) > MAX_CONTENT:
            raise ValueError(f"content is longer than {MAX_CONTENT} characters")
        msg = {
            "id": str(uuid.uuid4()),
            "userId": user_id,
            "username": username,
            "content": content,
            "timestamp": int(time.time() * 1000),
        }
        self.seq += 1
        storage = self.ctx.storage
        storage.put(_key(self.seq), msg)  # no await in between: the put and delete commit together
        if self.seq > KEEP:
            storage.delete(_key(self.seq - KEEP))
        self.messages.append(msg)
        if len(self.messages) > KEEP:
            del self.messages[: len(self.messages) - KEEP]
        return msg

    def _sockets(self) -> list[Any]:
        get = getattr(self.ctx, "get_web_sockets", None)
        return list(get()) if get is not None else []

    def _connected(self, user_id: str, *, besides: Any) -> bool:
        return any(
            s is not besides and (_attachment(s) or {}).get("userId") == user_id
            for s in self._sockets()
        )

    def _user_count(self, *, besides: Any = None) -> int:
        users = {(_attachment(s) or {}).get("userId") for s in self._sockets() if s is not besides}
        users.discard(None)
        return len(users)

    def _broadcast(self, data: dict[str, Any], exclude_user_id: str | None = None,
                   skip: Any = None) -> None:
        text = json.dumps(data)
        for s in self._sockets():
            if s is skip:
                continue
            user = _attachment(s)
            if exclude_user_id is not None and user is not None and user["userId"] == exclude_user_id:
                continue
            try:
                s.send(text)
            except Exception as exc:  # one dead socket must not stop the others
                log.debug("chat room %s: send failed: %r", self.ctx.id, exc)


def _attachment(ws: Any) -> dict[str, Any] | None:
    try:
        att = ws.deserialize_attachment()
    except Exception:
        return None
    return att if isinstance(att, dict) and "userId" in att else None


def _check_name(what: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
