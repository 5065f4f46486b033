"""HTTP-shaped messages for ``fetch``: :class:`Request` and :class:`Response`.

They are plain data (url, method, headers, body bytes) so that they cross processes unchanged; the
edge converts them to and from aiohttp's. A WebSocket upgrade is a ``Response(status=101,
web_socket=...)`` returned by an object that accepted the socket (see the edge).
"""

from __future__ import annotations

import json as _json
from typing import Any, AsyncIterable, Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

from duro import _codec
from duro import _json as strict_json
from duro._body import HasBody
from duro.errors import InvalidArgumentError

__all__ = ["Request", "Response", "Headers"]

HeadersInit = Mapping[str, str] | Iterable[tuple[str, str]] | None


class Headers:
    """HTTP headers as the Fetch API's ``Headers``: case-insensitive names, several values per name.

    * ``append(name, value)`` adds a value; ``set(name, value)`` (and ``h[name] = value``) replaces
      every value of the name; ``delete(name)`` (``del h[name]``) removes them all.
    * ``get(name)`` (and ``h[name]``, which raises ``KeyError`` when absent) joins the name's
      values with ``", "``, as ``Headers.get`` does; ``get_all(name)`` lists them one by one, and
      ``get_set_cookie()`` (alias ``getSetCookie()``) lists the ``Set-Cookie`` values, which must
      never be joined.
    * ``items()`` is every (name, value) pair in the order added, names as given: what travels on
      the wire and what the edge sends to the client (two ``Set-Cookie`` lines stay two).
      ``entries()`` is the Fetch API's view: lower-cased names in sorted order, one joined value
      per name except ``set-cookie``, which gets a pair per cookie.
    """

    __slots__ = ("_pairs",)

    def __init__(self, init: HeadersInit | Headers = None) -> None:
        self._pairs: list[tuple[str, str]] = []
        if init is None:
            return
        if isinstance(init, Headers):
            self._pairs = list(init._pairs)
            return
        pairs = init.items() if isinstance(init, Mapping) else init
        for pair in pairs:
            try:
                k, v = pair
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"headers must be (name, value) pairs or a mapping, got {pair!r}") from None
            self.append(k, v)

    @staticmethod
    def _check(name: object, value: object) -> None:
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidArgumentError("header names and values must be str")
        if not name or not _BAD_NAME_CHARS.isdisjoint(name):
            raise InvalidArgumentError(f"{name!r} is not a valid header name")
        if not _BAD_VALUE_CHARS.isdisjoint(value):
            raise InvalidArgumentError(f"the value of header {name!r} contains CR, LF or NUL")

    def append(self, name: str, value: str) -> None:
        """Add a value to ``name`` (keeping the values it has)."""
        self._check(name, value)
        self._pairs.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Make ``value`` the only value of ``name`` (at the position of its first value)."""
        self._check(name, value)
        low = name.lower()
        pairs = self._pairs
        for i, (k, _) in enumerate(pairs):
            if k.lower() == low:
                rest = [p for p in pairs[i + 1:] if p[0].lower() != low]
                self._pairs = [*pairs[:i], (name, value), *rest]
                return
        pairs.append((name, value))

    def delete(self, name: str) -> None:
        low = name.lower()
        self._pairs = [p for p in self._pairs if p[0].lower() != low]

    def has(self, name: str) -> bool:
        low = name.lower()
        return any(p[0].lower() == low for p in self._pairs)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        low = name.lower()
        return [v for k, v in self._pairs if k.lower() == low]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The values of ``name`` joined with ``", "`` (the Fetch API's ``get``), else ``default``."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_set_cookie(self) -> list[str]:
        """Every ``Set-Cookie`` value, unjoined (the Fetch API's ``getSetCookie()``)."""
        return self.get_all("set-cookie")

    getSetCookie = get_set_cookie  # noqa: N815 (the Fetch API's name)

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __delitem__(self, name: str) -> None:
        if not self.has(name):
            raise KeyError(name)
        self.delete(name)

    def items(self) -> list[tuple[str, str]]:
        """Every (name, value) pair, in the order added (the wire form)."""
        return list(self._pairs)

    def entries(self) -> list[tuple[str, str]]:
        """The Fetch API's iteration: sorted lower-case names, values joined except Set-Cookie."""
        names = sorted({k.lower() for k, _ in self._pairs})
        out: list[tuple[str, str]] = []
        for low in names:
            if low == "set-cookie":
                out.extend((low, v) for v in self.get_all(low))
            else:
                out.append((low, ", ".join(self.get_all(low))))
        return out

    def keys(self) -> list[str]:
        return [k for k, _ in self.entries()]

    def __iter__(self):
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self.entries() == other.entries()
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


# RFC 9110 token characters exclude these (and controls); a name with them could split a header.
_BAD_NAME_CHARS = frozenset('()<>@,;:\\"/[]?={} \t\r\n\0')
_BAD_VALUE_CHARS = frozenset("\r\n\0")


class Request(HasBody):
    """An HTTP request delivered to ``fetch``.

    ``body`` is bytes, or (for a large upload through the edge, or given an async iterable) a
    stream: ``async for chunk in request`` / ``await request.read()`` (see :mod:`duro._body`).
    """

    __slots__ = ("url", "method", "headers", "_body", "_stream", "_split", "_ws_factory")

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: HeadersInit | Headers = None,
        body: str | bytes | AsyncIterable[bytes] | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise InvalidArgumentError("url must be a str")
        if "://" not in url:
            url = "http://do" + (url if url.startswith("/") else "/" + url)
        self.url = url
        self.method = method.upper()
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self._set_body(body)
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
        """``[url, method, headers, body]``; a streamed body travels beside it (its ``b""`` here)."""
        return _codec.encode([self.url, self.method, self.headers.items(), self._body])

    @classmethod
    def from_wire(cls, data: bytes) -> Request:
        url, method, headers, body = _codec.decode(data)
        return cls(url, method=method, headers=[tuple(h) for h in headers], body=body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


class Response(HasBody):
    """An HTTP response returned by ``fetch``.

    ``body`` may be an async iterable of ``str``/``bytes`` chunks (an async generator): the edge
    sends each chunk to the client as it is produced, e.g. server-sent events.
    """

    __slots__ = ("status", "headers", "_body", "_stream", "web_socket")

    def __init__(
        self,
        body: str | bytes | AsyncIterable[bytes] | None = None,
        *,
        status: int = 200,
        headers: HeadersInit | Headers = None,
        web_socket: Any = None,
    ) -> None:
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise InvalidArgumentError(f"status must be an int in 100..599, got {status!r}")
        self.status = status
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self._set_body(body)
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

    def to_wire(self, stream_token: int | None = None) -> bytes:
        """``[status, headers, body]``; with a streamed body ``[status, headers, b"", token]``,
        the token naming the body at the node that holds it (``Node.Body``)."""
        if stream_token is None:
            if self._stream is not None:
                raise InvalidArgumentError("a streamed response has no single wire form")
            return _codec.encode([self.status, self.headers.items(), self._body])
        return _codec.encode([self.status, self.headers.items(), b"", stream_token])

    @classmethod
    def from_wire(cls, data: bytes, stream: AsyncIterable[bytes] | None = None) -> Response:
        """The response ``to_wire`` encoded; ``stream`` is the body of a streamed one."""
        fields = _codec.decode(data)
        if not isinstance(fields, list) or len(fields) not in (3, 4):
            raise InvalidArgumentError("not an encoded response")
        status, headers, body = fields[:3]
        if len(fields) == 4:
            if stream is None:
                raise InvalidArgumentError("a streamed response arrived without its body")
            body = stream
        return cls(body, status=status, headers=[tuple(h) for h in headers])

    def __repr__(self) -> str:
        size = "streamed" if self._stream is not None else f"{len(self._body)}B"
        return f"<Response {self.status} {size}>"


def stream_token(response_wire: bytes) -> int | None:
    """The body token of an encoded streamed response (``Response.to_wire(token)``), else None.

    Cheap on the hot path: a buffered response is a 3-element msgpack array (first byte 0x93), a
    streamed one a 4-element array (0x94); only the latter is decoded.
    """
    if response_wire[:1] != b"\x94":
        return None
    token = _codec.decode(response_wire)[3]
    if type(token) is not int:
        raise InvalidArgumentError("a streamed response's body token must be an int")
    return token
