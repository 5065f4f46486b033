"""ChatRoom through the Testbed: storage logic by RPC and HTTP, the WebSocket logic with a stand-in
for the edge's hibernation API (the Testbed has no WebSockets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duro import ObjectError
from duro.testing import Testbed

APP = Path(__file__).parent


@pytest.fixture
async def tb(tmp_path):
    async with Testbed(app=APP, data_dir=tmp_path) as tb:
        yield tb


async def test_post_and_history_in_order(tb):
    room = tb.env.CHAT.get_by_name("lobby")
    for i in range(5):
        msg = await room.post("u1", "alice", f"hello {i}")
        assert set(msg) == {"id", "userId", "username", "content", "timestamp"}
        assert (msg["userId"], msg["username"]) == ("u1", "alice")
    history = await room.history()
    assert [m["content"] for m in history] == [f"hello {i}" for i in range(5)]
    assert len({m["id"] for m in history}) == 5
    assert [m["timestamp"] for m in history] == sorted(m["timestamp"] for m in history)
    assert [m["content"] for m in await room.history(limit=2)] == ["hello 3", "hello 4"]


async def test_history_limit(tb):
    room = tb.env.CHAT.get_by_name("lobby")
    for i in range(60):
        await room.post("u1", "alice", str(i))
    assert [m["content"] for m in await room.history()] == [str(i) for i in range(10, 60)]
    assert len(await room.history(limit=1000)) == 60
    for bad in (0, -1, 1001, "5", True):
        with pytest.raises(ObjectError) as info:
            await room.history(limit=bad)
        assert info.value.remote_type == "ValueError"


async def test_bad_messages_are_refused(tb):
    room = tb.env.CHAT.get_by_name("lobby")
    for args in (("u1", "alice", ""), ("u1", "alice", "   "), ("u1", "alice", 5),
                 ("", "alice", "hi"), ("u1", "", "hi"), ("u1", "alice", "x" * 4001)):
        with pytest.raises(ObjectError):
            await room.post(*args)
    assert await room.history() == []


async def test_messages_persist_across_restart_and_eviction(tb):
    room = tb.env.CHAT.get_by_name("lobby")
    posted = [await room.post("u1", "alice", f"m{i}") for i in range(3)]
    await tb.evict(room.id)
    assert await tb.env.CHAT.get_by_name("lobby").history() == posted
    await tb.restart()
    room = tb.env.CHAT.get_by_name("lobby")
    assert await room.history() == posted
    resp = await room.fetch("/messages")
    assert resp.status == 200 and resp.json_body() == {"messages": posted}
    # numbering continues after a restart: new messages sort after the old ones
    await room.post("u2", "bob", "after restart")
    assert [m["content"] for m in await room.history()] == ["m0", "m1", "m2", "after restart"]


async def test_rooms_are_separate(tb):
    await tb.env.CHAT.get_by_name("a").post("u1", "alice", "in a")
    assert await tb.env.CHAT.get_by_name("b").history() == []


async def test_messages_endpoint_returns_last_100(tb):
    room = tb.env.CHAT.get_by_name("lobby")
    for i in range(130):
        await room.post("u1", "alice", str(i))
    resp = await room.fetch("http://example.com/chat/lobby/messages")
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert [m["content"] for m in resp.json_body()["messages"]] == [str(i) for i in range(30, 130)]
    assert (await room.fetch("/messages")).json_body() == resp.json_body()
    assert (await room.fetch("/nope")).status == 404


async def test_storage_keeps_the_newest_1000(tb):
    room = tb.env.CHAT.get_by_name("lobby")
    for i in range(1005):
        await room.post("u1", "alice", str(i))
    keys = list(tb.storage(room.id))
    assert len(keys) == 1000
    assert keys == sorted(keys)
    assert tb.storage(room.id)[keys[0]]["content"] == "5"
    await tb.restart()
    room = tb.env.CHAT.get_by_name("lobby")
    history = await room.history(limit=1000)
    assert [m["content"] for m in history] == [str(i) for i in range(5, 1005)]


async def test_websocket_needs_user_and_edge(tb):
    room = tb.env.CHAT.get_by_name("lobby")
    for url in ("/websocket", "/websocket?userId=u1", "/websocket?username=alice",
                "/websocket?userId=&username=alice"):
        resp = await room.fetch(url)
        assert (resp.status, resp.text()) == (400, "Missing userId or username")
    resp = await room.fetch("/chat/lobby/websocket?userId=u1&username=alice")
    assert resp.status == 426
    assert "edge" in resp.text()


# -- the WebSocket logic, against a stand-in for the hibernation API -------------------------------


class FakeSocket:
    """What the edge gives an object: send/close and an attachment kept outside the object."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closed: tuple[int, str] | None = None
        self._attachment = None

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def serialize_attachment(self, value) -> None:
        self._attachment = json.loads(json.dumps(value))  # a copy, as a real one is serialized

    def deserialize_attachment(self):
        return self._attachment

    def take(self) -> list[dict]:
        out, self.sent = self.sent, []
        return out


class FakeEdge:
    """The hibernation half of ``ctx`` (accept/get sockets); the rest goes to the real ctx."""

    def __init__(self) -> None:
        self.sockets: list[tuple[FakeSocket, list[str]]] = []

    def bind(self, ctx):
        edge = self

        class Ctx:
            def __getattr__(self, name):
                return getattr(ctx, name)

            def accept_web_socket(self, ws, tags=()):
                edge.sockets.append((ws, list(tags)))

            def get_web_sockets(self, tag=None):
                return [ws for ws, tags in edge.sockets if tag is None or tag in tags]

        return Ctx()


async def _instance(tb, stub, edge):
    await stub.history(limit=1)  # activate
    room = tb.host.activation(stub.id.raw).instance
    room.ctx = edge.bind(room.ctx)
    return room


async def test_websocket_protocol(tb):
    stub = tb.env.CHAT.get_by_name("lobby")
    await stub.post("u0", "old", "earlier")
    edge = FakeEdge()
    room = await _instance(tb, stub, edge)

    alice, bob = FakeSocket(), FakeSocket()
    room._join(alice, "u1", "alice")
    [hist] = alice.take()
    assert hist["type"] == "history" and [m["content"] for m in hist["messages"]] == ["earlier"]
    room._join(bob, "u2", "bob")
    assert bob.take()[0]["type"] == "history"
    assert alice.take() == [{"type": "user_joined", "userId": "u2", "username": "bob", "userCount": 2}]
    assert edge.sockets[0][1] == ["user:u1"]

    await room.web_socket_message(alice, json.dumps({"type": "message", "content": "hi bob"}))
    for ws in (alice, bob):
        [out] = ws.take()
        assert out["type"] == "message"
        assert {k: out["message"][k] for k in ("userId", "username", "content")} == {
            "userId": "u1", "username": "alice", "content": "hi bob"}

    await room.web_socket_message(bob, json.dumps({"type": "typing"}))
    assert alice.take() == [{"type": "typing", "userId": "u2", "username": "bob"}]
    assert bob.take() == []

    await room.web_socket_message(bob, "not json")
    await room.web_socket_message(bob, json.dumps({"type": "message", "content": ""}))
    assert bob.take()[0]["type"] == "error" and alice.take() == []

    # the room hibernates (evicted) while sockets stay open at the edge: the new instance still
    # knows who each socket is, from its attachment
    await tb.evict(stub.id)
    room = await _instance(tb, stub, edge)
    await room.web_socket_message(bob, json.dumps({"type": "message", "content": "still here"}))
    assert alice.take()[0]["message"]["username"] == "bob"
    assert bob.take()[0]["message"]["content"] == "still here"

    await room.web_socket_close(bob, 1000, "bye", True)
    assert bob.closed == (1000, "bye")
    edge.sockets = [(ws, t) for ws, t in edge.sockets if ws is not bob]
    assert alice.take() == [{"type": "user_left", "userId": "u2", "username": "bob", "userCount": 1}]

    assert [m["content"] for m in await stub.history()] == ["earlier", "hi bob", "still here"]


async def test_rpc_post_reaches_sockets(tb):
    stub = tb.env.CHAT.get_by_name("lobby")
    edge = FakeEdge()
    room = await _instance(tb, stub, edge)
    alice = FakeSocket()
    room._join(alice, "u1", "alice")
    alice.take()
    await room.post("bot", "bot", "announcement")
    assert alice.take()[0]["message"]["content"] == "announcement"
