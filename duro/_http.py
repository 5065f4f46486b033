"""HTTP-shaped messages for ``fetch``: :class:`Request` and :class:`Response`.

They are plain data (url, method, headers, body bytes) so that they cross processes unchanged; the
edge converts them to and from aiohttp's. A WebSocket upgrade is a ``Response(status=101,
web_socket=...)`` returned by an object that accepted the socket (see the edge).
"""

from __future__ import annotations

import json as _json
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

from duro import _codec
from duro import _json as strict_json
from duro.errors import InvalidArgumentError

__all__ = ["Request", "Response", "Headers"]

HeadersInit = Mapping[str, str] | Iterable[tuple[str, str]] | None


class Headers:
    """Case-insensitive, order-keeping headers (one value per name; later wins)."""

    __slots__ = ("_items",)

    def __init__(self, init: HeadersInit = None) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        if init is None:
            return
        pairs = init.items() if isinstance(init, Mapping) else init
        for k, v in pairs:
            self[k] = v

    def __setitem__(self, name: str, value: str) -> None:
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidArgumentError("header names and values must be str")
        self._items[name.lower()] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __delitem__(self, name: str) -> None:
        del self._items[name.lower()]

    def get(self, name: str, default: str | None = None) -> str | None:
        item = self._items.get(name.lower())
        return item[1] if item else default

    def items(self) -> list[tuple[str, str]]:
        return list(self._items.values())

    def __iter__(self):
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


def _body_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    raise InvalidArgumentError(f"body must be str or bytes, not {type(body).__name__}")


class Request:
    """An HTTP request delivered to ``fetch``."""

    __slots__ = ("url", "method", "headers", "body", "_split", "_ws_factory")

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: HeadersInit | Headers = None,
        body: str | bytes | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise InvalidArgumentError("url must be a str")
        if "://" not in url:
            url = "http://do" + (url if url.startswith("/") else "/" + url)
        self.url = url
        self.method = method.upper()
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = _body_bytes(body)
        self._split = urlsplit(url)
        self._ws_factory: Any = None  # set by the node runtime for an upgrade from an edge

    @property
    def path(self) -> str:
        return self._split.path or "/"

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self._split.query, keep_blank_values=True))

    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        """The body parsed as JSON, as ``JSON.parse`` would: ``ValueError`` for anything that is
        not JSON, including ``NaN``/``Infinity`` and nesting too deep to parse."""
        return strict_json.loads(self.body)

    def web_socket_pair(self) -> Any:
        """The server end of this upgrade request's WebSocket (accept it, return it with 101).

        Only an upgrade request (``Upgrade: websocket``) that came through an edge has one; the
        edge terminates the client's socket and carries its frames to the object.
        """
        if self._ws_factory is None:
            raise InvalidArgumentError(
                "not a WebSocket upgrade through an edge: web_socket_pair() needs a request with "
                "'Upgrade: websocket' delivered by duro's edge (run `duro dev`)"
            )
        return self._ws_factory()

    def to_wire(self) -> bytes:
        return _codec.encode([self.url, self.method, self.headers.items(), self.body])

    @classmethod
    def from_wire(cls, data: bytes) -> Request:
        url, method, headers, body = _codec.decode(data)
        return cls(url, method=method, headers=[tuple(h) for h in headers], body=body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


class Response:
    """An HTTP response returned by ``fetch``."""

    __slots__ = ("status", "headers", "body", "web_socket")

    def __init__(
        self,
        body: str | bytes | None = None,
        *,
        status: int = 200,
        headers: HeadersInit | Headers = None,
        web_socket: Any = None,
    ) -> None:
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise InvalidArgumentError(f"status must be an int in 100..599, got {status!r}")
        self.status = status
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = _body_bytes(body)
        self.web_socket = web_socket

    @classmethod
    def json(cls, value: Any, *, status: int = 200, headers: HeadersInit = None) -> Response:
        resp = cls(_json.dumps(value), status=status, headers=headers)
        if "content-type" not in resp.headers:
            resp.headers["Content-Type"] = "application/json"
        return resp

    def text(self) -> str:
        return self.body.decode()

    def json_body(self) -> Any:
        return _json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def to_wire(self) -> bytes:
        return _codec.encode([self.status, self.headers.items(), self.body])

    @classmethod
    def from_wire(cls, data: bytes) -> Response:
        status, headers, body = _codec.decode(data)
        return cls(body, status=status, headers=[tuple(h) for h in headers])

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)}B>"
