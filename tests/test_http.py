"""HTTP fidelity in process (issue 13): ``Headers`` as the Fetch API's (several values per name),
request and response bodies as streams, and both through the Testbed's real runtime and RocksDB.
The same through the edge and the Gateway: tests/edge/test_http_bodies.py."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import pytest

from duro import Headers, Request, Response
from duro._http import stream_token
from duro.errors import InvalidArgumentError, InvalidValueError, ObjectError
from duro.testing import Testbed

pytestmark = pytest.mark.timeout(60)

APP = Path(__file__).resolve().parent / "edge" / "http_app"


# -- Headers ---------------------------------------------------------------------------------------


def test_headers_keep_every_value_case_insensitively():
    h = Headers([("Set-Cookie", "a=1"), ("X-Multi", "one")])
    h.append("set-cookie", "b=2")
    h.append("x-multi", "two")
    assert h.get("X-MULTI") == "one, two"  # the Fetch API's get() joins
    assert h["x-multi"] == "one, two"
    assert h.get_all("x-multi") == ["one", "two"]
    assert h.get_set_cookie() == h.getSetCookie() == ["a=1", "b=2"]  # never joined
    assert h.items() == [("Set-Cookie", "a=1"), ("X-Multi", "one"), ("set-cookie", "b=2"),
                         ("x-multi", "two")]  # the wire form: every line, in order
    assert h.entries() == [("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-multi", "one, two")]
    h.set("X-Multi", "three")  # set replaces every value, at the first one's place
    assert h.items()[1] == ("X-Multi", "three") and h.get_all("x-multi") == ["three"]
    del h["SET-COOKIE"]
    assert "set-cookie" not in h and h.get_set_cookie() == [] and len(h) == 1
    assert h.get("nope") is None and h.get("nope", "d") == "d"
    with pytest.raises(KeyError):
        h["nope"]
    assert Headers({"A": "1"}) == Headers([("a", "1")])


@pytest.mark.parametrize("pair", [("Bad Name", "v"), ("X", "a\r\nInjected: 1"), ("", "v"),
                                  ("X", 1), ("X:", "v")])
def test_bad_headers_are_refused_clearly(pair):
    with pytest.raises(InvalidArgumentError):
        Headers([pair])
    with pytest.raises(InvalidArgumentError):
        Headers().append(*pair)
    with pytest.raises(InvalidArgumentError):
        Headers(["not a pair"])


def test_repeated_headers_survive_the_wire_form():
    req = Request("/x", headers=[("X-Multi", "one"), ("x-multi", "two")])
    back = Request.from_wire(req.to_wire())
    assert back.headers.get_all("x-multi") == ["one", "two"]
    resp = Response("b", headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert Response.from_wire(resp.to_wire()).headers.get_set_cookie() == ["a=1", "b=2"]


# -- bodies ------------------------------------------------------------------------------------------


async def _gen(*chunks):
    for c in chunks:
        yield c


async def test_a_streamed_body_is_read_once_as_chunks():
    req = Request("/u", method="POST", body=_gen(b"ab", "cd", b""))
    assert req.streamed
    with pytest.raises(InvalidArgumentError, match="streamed"):
        req.body
    assert [c async for c in req] == [b"ab", b"cd"]  # str chunks are UTF-8, empty ones skipped
    with pytest.raises(InvalidArgumentError, match="already read"):
        async for _ in req:
            pass
    buffered = Request("/u", body=b"xyz")
    assert not buffered.streamed and [c async for c in buffered] == [b"xyz"]
    assert await buffered.read() == b"xyz"


async def test_read_collects_a_stream_up_to_a_limit():
    assert await Response(_gen(b"a", b"b")).read() == b"ab"
    with pytest.raises(InvalidValueError, match="over 3 bytes"):
        await Response(_gen(b"ab", b"cd")).read(3)
    with pytest.raises(InvalidArgumentError, match="str or bytes chunks"):
        await Response(_gen(b"a", 3)).read()
    with pytest.raises(InvalidArgumentError, match="no single wire form"):
        Response(_gen(b"a")).to_wire()


def test_a_streamed_response_head_names_its_token():
    assert stream_token(Response("x").to_wire()) is None
    assert stream_token(Response(_gen(b"a"), status=201).to_wire(7)) == 7
    with pytest.raises(InvalidArgumentError, match="without its body"):
        Response.from_wire(Response(status=200).to_wire(7))


# -- through the Testbed -----------------------------------------------------------------------------


async def test_testbed_carries_repeated_headers_both_ways(tmp_path):
    async with Testbed(APP, tmp_path) as tb:
        stub = tb.env.MIRROR.get_by_name("h")
        resp = await stub.fetch("/mirror/h/headers",
                                headers=[("X-Multi", "one"), ("x-multi", "two")])
        assert resp.json_body() == {"joined": "one, two", "all": ["one", "two"],
                                    "streamed": False}
        assert resp.headers.get_set_cookie() == ["a=1; Path=/", "b=2; Path=/"]
        assert resp.headers.get_all("x-multi") == ["one", "two"]


async def test_testbed_streams_a_large_upload_in_chunks(tmp_path):
    chunk = bytes(range(256)) * 1024  # 256 KiB
    n = 64  # 16 MiB, never held whole by the caller
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(chunk, crc)

    async def upload():
        for _ in range(n):
            yield chunk

    async with Testbed(APP, tmp_path) as tb:
        stub = tb.env.MIRROR.get_by_name("u")
        resp = await stub.fetch(Request("/mirror/u/count", method="POST", body=upload()))
        assert resp.json_body() == {"bytes": n * len(chunk), "crc32": crc, "chunks": n,
                                    "streamed": True}


async def test_testbed_streams_events_before_the_handler_finishes(tmp_path):
    async with Testbed(APP, tmp_path) as tb:
        stub = tb.env.MIRROR.get_by_name("s")
        resp = await stub.fetch("/mirror/s/sse?n=3")
        assert resp.streamed and resp.headers["content-type"] == "text/event-stream"
        events = resp.__aiter__()
        first = await asyncio.wait_for(events.__anext__(), 10)
        assert first == b"id: 0\ndata: event 0\n\n"
        # The generator now waits for `release`: the first event came before it finished. The
        # object still takes calls meanwhile (the stream holds no gate), and the event's write
        # was durable before the event left.
        assert tb.storage(stub.id)["sent"] == 0
        assert (await stub.fetch("/mirror/s/release")).text() == "released"
        rest = [c async for c in events]
        assert rest == [b"id: 1\ndata: event 1\n\n", b"id: 2\ndata: event 2\n\n"]
        assert tb.storage(stub.id)["sent"] == 2


async def test_testbed_echoes_a_stream_while_reading_it(tmp_path):
    async def upload():
        for i in range(10):
            yield b"%d," % i

    async with Testbed(APP, tmp_path) as tb:
        stub = tb.env.MIRROR.get_by_name("e")
        resp = await stub.fetch(Request("/mirror/e/echo", method="PUT", body=upload()))
        assert await resp.read() == b"".join(b"%d," % i for i in range(10))


async def test_testbed_a_stream_that_fails_midway_raises_to_the_reader(tmp_path):
    async with Testbed(APP, tmp_path) as tb:
        resp = await tb.env.MIRROR.get_by_name("b").fetch("/mirror/b/broken")
        chunks = resp.__aiter__()
        assert await chunks.__anext__() == b"first chunk\n"
        with pytest.raises(RuntimeError, match="the stream broke"):
            await chunks.__anext__()


async def test_a_stream_nobody_takes_is_closed_and_frees_its_object(tmp_path):
    async with Testbed(APP, tmp_path) as tb:
        tb.host.bodies.unclaimed_timeout = 0.2
        stub = tb.env.MIRROR.get_by_name("x")
        await stub.fetch("/mirror/x/release")
        act = tb.host.activation(stub.id.raw)
        call_head = await tb.host.invoke(_fetch_call(stub, "/mirror/x/sse?n=2"))
        token = stream_token(call_head)
        assert token is not None and act.running == 1  # held: not evicted meanwhile
        for _ in range(100):
            if not len(tb.host.bodies):
                break
            await asyncio.sleep(0.05)
        assert len(tb.host.bodies) == 0 and act.running == 0
        with pytest.raises(InvalidArgumentError, match="unclaimed"):
            tb.host.bodies.take(token)


def _fetch_call(stub, url):
    from duro._namespace import Call, CallKind

    return Call(binding="MIRROR", object_id=stub.id.raw, kind=CallKind.FETCH,
                payload=Request(url).to_wire(), stream_response=True)


async def test_a_caller_that_cannot_stream_gets_the_body_collected(tmp_path):
    async with Testbed(APP, tmp_path) as tb:
        stub = tb.env.MIRROR.get_by_name("c")
        call = _fetch_call(stub, "/mirror/c/echo")
        call.stream_response = False  # an older edge, or a call between objects
        call.payload = Request("/mirror/c/echo", method="POST", body=b"whole").to_wire()
        resp = Response.from_wire(await tb.host.invoke(call))
        assert resp.body == b"whole" and not resp.streamed
        broken = _fetch_call(stub, "/mirror/c/broken")
        broken.stream_response = False
        with pytest.raises(ObjectError, match="the stream broke"):
            await tb.host.invoke(broken)


async def test_testbed_a_stream_the_caller_closes_closes_the_generator(tmp_path):
    async with Testbed(APP, tmp_path) as tb:
        stub = tb.env.MIRROR.get_by_name("g")
        resp = await stub.fetch("/mirror/g/sse?n=2")
        events = resp.__aiter__()
        assert await events.__anext__() == b"id: 0\ndata: event 0\n\n"
        act = tb.host.activation(stub.id.raw)
        assert act.running == 1  # the stream counts as a running event: not evicted midway
        await events.aclose()
        assert act.running == 0
        assert (await stub.fetch("/mirror/g/closed")).json_body() == {"closed": 1}
