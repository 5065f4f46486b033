"""Client WebSockets whose unmasked frames fail the connection (RFC 6455 §5.1).

A client must mask every frame it sends; a server that receives an unmasked frame must fail
the connection (close code 1002, protocol error). aiohttp's reader (C or Python) reads the mask
bit and unmasks when it is set, but accepts unmasked frames as they are. :class:`ClientWebSocket`
puts :class:`MaskCheck` in front of aiohttp's reader: it follows the frame boundaries of the
byte stream, reading only each frame's header (2-14 bytes) and skipping payloads by length, and
on the first unmasked frame it hands aiohttp's reader everything before that frame and then a
``WebSocketError(PROTOCOL_ERROR)``, exactly what aiohttp's own protocol checks do: ``receive()``
closes with 1002 and the edge reports it to the object as ``web_socket_close(ws, 1002, ...)``.

It depends on two private names of aiohttp's server protocol (``_payload_parser``,
``_message_tail``, unchanged from 3.9 to 3.14); ``tests/edge/test_ws_masking.py`` fails if that
changes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

__all__ = ["ClientWebSocket", "MaskCheck", "UNMASKED_REASON"]

UNMASKED_REASON = "unmasked client frame (RFC 6455 section 5.1)"


class MaskCheck:
    """A WebSocket reader in front of another: passes bytes through, fails on unmasked frames."""

    __slots__ = ("_parser", "_queue", "_head", "_skip", "_failed")

    def __init__(self, parser: Any, queue: Any) -> None:
        self._parser = parser
        self._queue = queue
        self._head = b""  # the current frame's header bytes so far (it may span chunks)
        self._skip = 0  # payload bytes of the current frame still to come
        self._failed = False

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        bad = self._scan(data)
        if bad < 0:
            return self._parser.feed_data(data)
        if bad:
            eof, tail = self._parser.feed_data(data[:bad])
            if eof:
                return eof, tail
        self._failed = True
        self._queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, UNMASKED_REASON))
        return True, b""

    def _scan(self, data: bytes) -> int:
        """Where in ``data`` the first unmasked frame starts (0 if its header began in an earlier
        chunk), or -1 if every frame header in it is masked."""
        pos, n = 0, len(data)
        head = self._head
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            start = pos - len(head)
            if len(head) < 2:
                take = min(2 - len(head), n - pos)
                head += data[pos:pos + take]
                pos += take
                if len(head) < 2:
                    break
            second = head[1]
            if not second & 0x80:
                self._head = b""
                return max(start, 0)
            flag = second & 0x7F
            need = 2 + (2 if flag == 126 else 8 if flag == 127 else 0) + 4
            if len(head) < need:
                take = min(need - len(head), n - pos)
                head += data[pos:pos + take]
                pos += take
                if len(head) < need:
                    break
            if flag == 126:
                length = int.from_bytes(head[2:4], "big")
            elif flag == 127:
                length = int.from_bytes(head[2:10], "big")
            else:
                length = flag
            self._skip = length
            head = b""
        self._head = head
        return -1


class ClientWebSocket(web.WebSocketResponse):
    """``web.WebSocketResponse`` whose client frames go through :class:`MaskCheck`."""

    def _post_start(self, request: web.BaseRequest, protocol: Any, writer: Any) -> None:
        proto = request.protocol
        # Bytes that came after the upgrade request, before the reader existed: aiohttp feeds
        # them to its reader in set_parser; take them first so they are checked too.
        tail, proto._message_tail = proto._message_tail, b""
        super()._post_start(request, protocol, writer)
        check = MaskCheck(proto._payload_parser, self._reader)
        proto._payload_parser = check
        if tail:
            eof, _ = check.feed_data(tail)
            if eof:
                proto.close()
