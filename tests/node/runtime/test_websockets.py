"""The node side of the hibernation API, in process: a SocketHub on a Testbed's host with a fake
edge link (the edge and the gRPC stream are covered by tests/edge)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from duro import _codec
from duro._http import Request, Response
from duro._namespace import Call, CallKind
from duro.errors import InvalidArgumentError
from duro.node.runtime.grant import Grant
from duro.node.runtime.websockets import Frame, Op, SocketHub
from duro.testing import Testbed

APP = Path(__file__).resolve().parents[2] / "edge" / "app"


class FakeLink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.acks: dict[int, int] = {}

    def push(self, frame: Frame) -> None:
        self.frames.append(frame)

    def ack(self, socket_id: int) -> None:
        self.acks[socket_id] = self.acks.get(socket_id, 0) + 1

    def take(self, op: Op = Op.MESSAGE) -> list[Frame]:
        out = [f for f in self.frames if f.op == op]
        self.frames = [f for f in self.frames if f.op != op]
        return out


@pytest.fixture
async def env(tmp_path):
    async with Testbed(app=APP, data_dir=tmp_path) as tb:
        hub = SocketHub(tb.host, edge_grace=0.2)
        tb.host.sockets = hub
        link = FakeLink()
        hub.attach("e1", link)
        yield tb, hub, link
        await hub.close()


async def upgrade(tb, name: str, sid: int, i: int, tags: str = "") -> bytes:
    stub = tb.env.ROOM.get_by_name(name)
    req = Request(f"/room/{name}/ws?i={i}&tags={tags}",
                  headers={"Upgrade": "websocket", "Duro-Socket": f"e1 {sid}"})
    resp = Response.from_wire(await tb.host.invoke(Call(
        binding="ROOM", object_id=stub.id.raw, kind=CallKind.FETCH, payload=req.to_wire())))
    assert resp.status == 101
    return stub.id.raw


def message(oid: bytes, sid: int, text: str) -> Frame:
    return Frame(Op.MESSAGE, sid, binding="ROOM", object_id=oid, data=text.encode(), text=True)


async def settle(hub: SocketHub) -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)
        if not hub._tasks:
            return


async def test_sockets_survive_eviction_with_attachments_and_tags(env):
    tb, hub, link = env
    for sid in range(1, 21):
        oid = await upgrade(tb, "r", sid, sid * 10, tags=f"g{sid % 2}")
    accepts = link.take(Op.ACCEPT)
    assert [f.socket_id for f in accepts] == list(range(1, 21))
    assert accepts[0].tags == ("g1",) and _codec.decode(accepts[0].attachment)["i"] == 10
    assert await tb.evict(oid.hex())
    assert tb.host.activation(oid) is None
    hub.receive("e1", message(oid, 3, "broadcast"))
    await settle(hub)
    out = link.take()
    assert sorted(f.socket_id for f in out) == list(range(1, 21))
    by_sid = {f.socket_id: json.loads(f.data) for f in out}
    assert all(by_sid[sid]["att"] == sid * 10 for sid in by_sid)
    assert {m["acts"] for m in by_sid.values()} == {2}  # a new instance
    assert link.acks == {3: 1}
    hub.receive("e1", message(oid, 4, "broadcast:g0"))
    await settle(hub)
    assert sorted(f.socket_id for f in link.take()) == list(range(2, 21, 2))


async def test_client_close_is_delivered_and_socket_forgotten(env):
    tb, hub, link = env
    oid = await upgrade(tb, "c", 1, 7)
    await upgrade(tb, "c", 2, 8)
    await tb.evict(oid.hex())
    hub.receive("e1", Frame(Op.CLOSE, 1, binding="ROOM", object_id=oid, code=4001,
                            reason="bye", was_clean=True))
    await settle(hub)
    stats = await tb.env.ROOM.get_by_name("c").stats()
    assert stats["sockets"] == 1 and stats["closes"] == {"7": [4001, "bye", True]}
    hub.receive("e1", message(oid, 1, "count"))  # a message for the closed socket
    await settle(hub)
    [unknown] = link.take(Op.UNKNOWN)
    assert unknown.socket_id == 1 and unknown.data == b"count"


async def test_edge_that_does_not_return_closes_its_sockets(env):
    tb, hub, link = env
    oid = await upgrade(tb, "gone", 1, 5)
    hub.detach("e1", link)
    await asyncio.sleep(0.4)  # edge_grace 0.2 s
    await settle(hub)
    stats = await tb.env.ROOM.get_by_name("gone").stats()
    assert stats["sockets"] == 0
    assert stats["closes"] == {"5": [1006, "edge connection lost", False]}
    assert oid not in hub.objects


async def test_reregistration_restores_sockets(env):
    tb, hub, link = env
    oid = await upgrade(tb, "re", 1, 1, tags="a")
    hub.objects.clear()  # as after a node restart: the registry is gone
    hub.receive("e1", message(oid, 1, "count"))
    await settle(hub)
    assert link.take(Op.UNKNOWN)
    hub.receive("e1", Frame(Op.REGISTER, 1, binding="ROOM", object_id=oid, tags=("a",),
                            attachment=_codec.encode({"i": 1, "pad": ""})))
    hub.receive("e1", message(oid, 1, "count"))
    await settle(hub)
    [out] = link.take()
    assert json.loads(out.data) == {"type": "count", "n": 1, "tags": ["a"]}


async def test_sends_wait_for_the_output_gate(env):
    tb, hub, link = env
    oid = await upgrade(tb, "gate", 1, 1)
    link.take(Op.ACCEPT)
    hub.receive("e1", message(oid, 1, "store:v"))
    seen_before_commit = []
    orig = link.push

    def push(frame: Frame) -> None:
        if frame.op == Op.MESSAGE:
            seen_before_commit.append(tb.storage(oid.hex()).get("stored"))
        orig(frame)

    link.push = push  # type: ignore[method-assign]
    await settle(hub)
    assert seen_before_commit == ["v"]  # durable when the frame left


async def test_limits(env):
    tb, hub, link = env
    oid = await upgrade(tb, "lim", 1, 1)
    act = tb.host.activation(oid)
    ctx = act.ctx
    [ws] = ctx.get_web_sockets()
    with pytest.raises(InvalidArgumentError, match="16384"):
        ws.serialize_attachment("x" * 17000)
    with pytest.raises(InvalidArgumentError, match="str or bytes"):
        ws.send(5)
    with pytest.raises(InvalidArgumentError):
        ws.close(1005)
    with pytest.raises(InvalidArgumentError, match="at most 10 tags"):
        from duro.node.runtime.websockets import _check_tags
        _check_tags([f"t{i}" for i in range(11)])
    with pytest.raises(InvalidArgumentError, match="256"):
        _check_tags(["x" * 257])
    with pytest.raises(InvalidArgumentError):
        ctx.set_web_socket_auto_response("ping", "")
    with pytest.raises(InvalidArgumentError, match="upgrade"):
        Request("/x").web_socket_pair()


async def test_socket_and_message_limits(env, monkeypatch):
    from duro.node.runtime import websockets

    tb, hub, link = env
    monkeypatch.setattr(websockets, "MAX_SOCKETS_PER_OBJECT", 3)
    monkeypatch.setattr(websockets, "MAX_MESSAGE_BYTES", 1000)
    for sid in (1, 2, 3):
        oid = await upgrade(tb, "full", sid, sid)
    stub = tb.env.ROOM.get_by_name("full")
    req = Request("/room/full/ws?i=4", headers={"Upgrade": "websocket", "Duro-Socket": "e1 4"})
    with pytest.raises(InvalidArgumentError, match="the limit is 3"):
        await tb.host.invoke(Call(binding="ROOM", object_id=stub.id.raw, kind=CallKind.FETCH,
                                  payload=req.to_wire()))
    [ws, *_] = tb.host.activation(oid).ctx.get_web_sockets()
    with pytest.raises(InvalidArgumentError, match="limit is 1000"):
        ws.send("x" * 1001)
    ws.send("x" * 1000)


async def test_registry_travels_with_a_migration(env, tmp_path):
    """export() on the source, install() on the target: the target's first broadcast reaches
    every socket with its attachment and tags, with no REGISTER from any edge."""
    tb, hub, link = env
    for sid in range(1, 6):
        oid = await upgrade(tb, "moving", sid, sid * 10, tags=f"g{sid % 2}")
    link.take(Op.ACCEPT)
    link.take()
    records, auto = hub.export(oid)
    assert sorted(r[1] for r in records) == [1, 2, 3, 4, 5]
    async with Testbed(app=APP, data_dir=tmp_path / "target") as tb2:
        hub2 = SocketHub(tb2.host, edge_grace=0.2)
        tb2.host.sockets = hub2
        link2 = FakeLink()
        hub2.attach("e1", link2)
        assert hub2.install(oid, "ROOM", records, auto, 7) == 5
        hub2.receive("e1", message(oid, 2, "broadcast:g1"))
        await settle(hub2)
        out = {f.socket_id: json.loads(f.data) for f in link2.take()}
        assert sorted(out) == [1, 3, 5]
        assert all(out[sid]["att"] == sid * 10 for sid in out)
        await hub2.close()


async def test_flush_frames_waits_for_the_edges_barrier(env):
    tb, hub, link = env
    oid = await upgrade(tb, "flush", 1, 1)
    task = asyncio.ensure_future(hub.flush_frames(oid, 1.0))
    await asyncio.sleep(0.01)
    (barrier,) = link.take(Op.BARRIER)
    assert link.frames == [] or all(f.op != Op.BARRIER for f in link.frames)
    assert not task.done()
    hub.receive("e1", Frame(Op.BARRIER, 0, seq=barrier.seq))  # the edge's answer
    assert await task is True
    assert await hub.flush_frames(oid, 0.05) is False  # no answer: gives up, says so


class _ColdCache:
    """Ownership as a migration's new owner has it (``NodeOwnership.acquire``): its directory
    cache has no entry for the object yet, so a call asks the object's partition (an await,
    ``fresh_entry``); once the cache has the entry (another call's answer, or the directory
    watch), calls that come after pass at once, while the first ones' answers are still on their
    way."""

    def __init__(self) -> None:
        self.cached = False
        self.answers: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.asking = 0

    async def acquire(self, call: Call) -> Grant:
        if not self.cached:
            self.asking += 1
            await self.answers
        return Grant()

    def still_owner(self, object_id: bytes, grant: Grant) -> bool:
        return True

    def evicted(self, act) -> None:  # noqa: ANN001
        pass


async def test_a_sockets_messages_run_in_order_while_the_new_owner_looks_itself_up(env, tmp_path):
    """Right after a move, the new owner's first socket events wait for its partition's answer
    (its directory cache is cold); a message of the same socket that arrives once the cache is
    warm must not overtake them. (It did: each message was a task of its own up to the input
    gate, and the later one skipped the await, so the chat test saw 'u0#100' before 'u0#98'
    now and then.)"""
    tb, hub, link = env
    oid = await upgrade(tb, "cold", 1, 1)
    link.take(Op.ACCEPT)
    records, auto = hub.export(oid)
    async with Testbed(app=APP, data_dir=tmp_path / "target") as tb2:
        hub2 = SocketHub(tb2.host, edge_grace=0.2)
        tb2.host.sockets = hub2
        tb2.host.ownership = ownership = _ColdCache()
        link2 = FakeLink()
        hub2.attach("e1", link2)
        hub2.install(oid, "ROOM", records, auto, 7)
        hub2.receive("e1", message(oid, 1, "m1"))
        hub2.receive("e1", message(oid, 1, "m2"))
        await asyncio.sleep(0.01)
        assert ownership.asking >= 1  # m1 asks the partition
        ownership.cached = True  # the entry is in the cache now...
        hub2.receive("e1", message(oid, 1, "m3"))  # ...so m3 and m4 would pass at once
        hub2.receive("e1", message(oid, 1, "m4"))
        await asyncio.sleep(0.01)
        ownership.answers.set_result(None)  # the answers to the first calls arrive
        await settle(hub2)
        assert [f.data for f in link2.take()] == [b"m1", b"m2", b"m3", b"m4"]
        assert link2.acks == {1: 4}
        await hub2.close()
