"""Bodies of :class:`~duro.Request` and :class:`~duro.Response`: bytes, or a stream of chunks.

A body is either *buffered* (``bytes``, read with ``.body``/``.text()``/``.json()``) or *streamed*
(an async iterator of ``bytes`` chunks, read once with ``async for chunk in request`` or
``await request.read()``). A streamed body is what the edge delivers for a request body larger than
its ``stream_threshold``, and what an object returns as ``Response(async_generator())`` (e.g.
server-sent events). See docs/runtime.md, "Streamed bodies".

Reading ``.body`` of a streamed body raises :class:`~duro.errors.InvalidArgumentError` (it would
have to hold the whole stream in memory, which streaming exists to avoid); ``await read()`` does
hold it, up to ``max_bytes``.
"""

from __future__ import annotations

from typing import Any, AsyncIterable, AsyncIterator

from duro.errors import InvalidArgumentError, InvalidValueError

__all__ = ["HasBody", "body_bytes", "chunk_bytes", "DEFAULT_READ_LIMIT", "COLLECTED_BODY_LIMIT"]

DEFAULT_READ_LIMIT = 64 * 1024 * 1024  # what `await read()` holds at most unless told otherwise
# A streamed body sent over a path that carries bodies whole (a call between objects, a caller
# that cannot pull a streamed response, the Gateway) is collected, up to this many bytes (beyond:
# `invalid_value`); under the node protocol's 64 MiB message limit with room to spare.
COLLECTED_BODY_LIMIT = 32 * 1024 * 1024


def body_bytes(body: Any) -> bytes:
    """A buffered body as bytes (None is empty, str is UTF-8), else a clear error."""
    return b"" if body is None else _as_bytes(
        body, "body must be str, bytes or an async iterable of them")


def chunk_bytes(chunk: Any) -> bytes:
    """One chunk of a streamed body as bytes (str is UTF-8 encoded), else a clear error."""
    return _as_bytes(chunk, "a streamed body must yield str or bytes chunks")


def _as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise InvalidArgumentError(f"{what}, not {type(value).__name__}")


async def _chunks(source: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    try:
        async for chunk in source:
            data = chunk_bytes(chunk)
            if data:
                yield data
    finally:  # closing the body closes its source (an object's generator, a node's stream) now
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


class HasBody:
    """The body part of Request and Response (their ``__slots__`` hold ``_body``/``_stream``)."""

    __slots__ = ()
    _body: bytes
    _stream: AsyncIterator[bytes] | None

    def _set_body(self, body: Any) -> None:
        if hasattr(body, "__aiter__") and not isinstance(body, (bytes, str)):
            self._body = b""
            self._stream = _chunks(body)
        else:
            self._body = body_bytes(body)
            self._stream = None

    @property
    def streamed(self) -> bool:
        """Whether the body is a stream (read it with ``async for`` or ``await read()``)."""
        return self._stream is not None

    @property
    def body(self) -> bytes:
        if self._stream is not None:
            raise InvalidArgumentError(
                "the body is streamed (a request body over the edge's stream_threshold, 1 MiB by "
                "default, or a stream given to the constructor): read it with `async for chunk in "
                "...` or `data = await ....read()`; .body, .text() and .json() need it whole")
        return self._body

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The body's chunks: a streamed body once (a second reader gets an error), a buffered
        one as a single chunk."""
        stream = self._stream
        if stream is None:
            return _one(self._body)
        self._stream = _used()
        return stream

    async def read(self, max_bytes: int = DEFAULT_READ_LIMIT) -> bytes:
        """The whole body; a streamed one is collected (``InvalidValueError`` past ``max_bytes``)."""
        if self._stream is None:
            return self._body
        out = bytearray()
        async for chunk in self:
            if len(out) + len(chunk) > max_bytes:
                raise InvalidValueError(
                    f"the streamed body is over {max_bytes} bytes; read it with `async for`")
            out += chunk
        self._body, self._stream = bytes(out), None
        return self._body


async def _one(body: bytes) -> AsyncIterator[bytes]:
    if body:
        yield body


async def _used() -> AsyncIterator[bytes]:
    raise InvalidArgumentError("the streamed body was already read (a stream is read once)")
    yield b""  # pragma: no cover (makes this an async generator)
