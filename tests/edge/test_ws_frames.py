"""The WebSocket frame path, property-based: client frames through the edge's mask check and
aiohttp's own reader, server frames from the edge's fast-path header (no sockets; the same
paths over a real socket are in test_ws_masking.py)."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiohttp import WSCloseCode, WSMsgType
from aiohttp._websocket.helpers import websocket_mask
from aiohttp._websocket.reader import WebSocketDataQueue
from aiohttp.http_websocket import WebSocketError, WebSocketReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duro.edge.ws_frames import frame_header as _frame_header
from duro.edge.ws_masking import UNMASKED_REASON, MaskCheck

SETTINGS = settings(max_examples=int(os.environ.get("DURO_FUZZ_EXAMPLES", "150")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT, BINARY, CONT, PING = 0x1, 0x2, 0x0, 0x9


class _Protocol:
    """What aiohttp's queue needs of a transport protocol (flow control)."""

    _reading_paused = False

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True,
          mask: bytes = b"\x5a\x17\xc3\x01") -> bytes:
    """One client frame, as RFC 6455 §5.2 lays it out."""
    n = len(payload)
    bit = 0x80 if masked else 0
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    body = bytearray(payload)
    websocket_mask(mask, body)
    return head + mask + bytes(body)


def message_frames(kind: int, data: bytes, parts: int, ping_between: bool,
                   masked: bool = True) -> list[bytes]:
    """A message as ``parts`` frames (first TEXT/BINARY, then continuations), maybe with a
    ping between its fragments (control frames may interleave, RFC 6455 §5.4)."""
    step = max(1, -(-len(data) // parts))
    pieces = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
    out = []
    for i, piece in enumerate(pieces):
        out.append(frame(kind if i == 0 else CONT, piece, fin=i == len(pieces) - 1,
                         masked=masked or i > 0))
        if ping_between and i < len(pieces) - 1:
            out.append(frame(PING, b"p"))
    return out


sizes = st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 127, 65535, 65536, 70001]))
messages = st.lists(
    st.tuples(st.sampled_from([TEXT, BINARY]), sizes, st.integers(1, 4), st.booleans(),
              st.integers(0, 255)),
    min_size=1, max_size=6)


def payload(kind: int, size: int, seed: int) -> bytes:
    if kind == TEXT:
        return (chr(0x61 + seed % 26) * size).encode()
    start = seed % 256
    return (bytes(range(256)) * (size // 256 + 2))[start:start + size]


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


async def read_all(queue: WebSocketDataQueue, n: int) -> list[tuple[WSMsgType, object]]:
    out = []
    for _ in range(n):
        msg = await asyncio.wait_for(queue.read(), 1)
        out.append((msg.type, msg.data))
    return out


def new_reader() -> tuple[WebSocketDataQueue, WebSocketReader]:
    queue = WebSocketDataQueue(_Protocol(), 2 ** 16, loop=asyncio.get_running_loop())
    return queue, WebSocketReader(queue, 0, compress=False, decode_text=True)


def expected(msgs: list[tuple[int, int, int, bool, int]]) -> list[tuple[WSMsgType, object]]:
    out: list[tuple[WSMsgType, object]] = []
    for kind, size, parts, ping, seed in msgs:
        data = payload(kind, size, seed)
        if ping:  # a ping after every fragment but the last, each read as it comes
            out += [(WSMsgType.PING, b"p")] * (len(message_frames(kind, data, parts, False)) - 1)
        out.append((WSMsgType.TEXT, data.decode()) if kind == TEXT else (WSMsgType.BINARY, data))
    return out


@SETTINGS
@given(msgs=messages, cuts=st.lists(st.integers(0, 1 << 20), max_size=12))
def test_masked_frames_pass_unchanged_however_the_stream_is_cut(msgs, cuts):
    async def run() -> None:
        queue, reader = new_reader()
        check = MaskCheck(reader, queue)
        stream = b"".join(f for kind, size, parts, ping, seed in msgs
                          for f in message_frames(kind, payload(kind, size, seed), parts, ping))
        for piece in chunks(stream, cuts):
            assert check.feed_data(piece) == (False, b"")
        want = expected(msgs)
        assert await read_all(queue, len(want)) == want

    asyncio.run(run())


@SETTINGS
@given(msgs=messages, bad=st.integers(0, 5), cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
       after=st.binary(max_size=64))
def test_an_unmasked_frame_fails_the_connection_with_1002(msgs, bad, cuts, after):
    async def run() -> None:
        queue, reader = new_reader()
        check = MaskCheck(reader, queue)
        i = bad % len(msgs)
        stream = b""
        for k, (kind, size, parts, ping, seed) in enumerate(msgs):
            stream += b"".join(message_frames(kind, payload(kind, size, seed), parts, ping,
                                              masked=k != i))
        stream += after  # whatever follows is never read
        eof = False
        for piece in chunks(stream, cuts):
            eof, tail = check.feed_data(piece)
        assert eof
        good = expected(msgs[:i])
        assert await read_all(queue, len(good)) == good
        with pytest.raises(WebSocketError) as err:
            await asyncio.wait_for(queue.read(), 1)
        assert err.value.code == WSCloseCode.PROTOCOL_ERROR
        assert UNMASKED_REASON in str(err.value)
        assert check.feed_data(b"\x81\x01x") == (True, b"")  # nothing more after a failure

    asyncio.run(run())


@SETTINGS
@given(data=st.binary(max_size=70_000) | st.sampled_from([b"x" * 125, b"y" * 126,
                                                          b"z" * 65535, b"w" * 65536]),
       text=st.booleans())
def test_server_frame_header_reads_back_as_the_same_message(data, text):
    """The edge writes frames straight into the transport (ws_frames.frame_header): a client's
    reader sees exactly the message."""
    async def run() -> None:
        queue, reader = new_reader()
        body = data.decode("latin-1").encode() if text else data
        reader.feed_data(_frame_header(len(body), text) + body)
        msg = await asyncio.wait_for(queue.read(), 1)
        assert (msg.type, msg.data) == ((WSMsgType.TEXT, body.decode()) if text
                                        else (WSMsgType.BINARY, body))

    asyncio.run(run())
