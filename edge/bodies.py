"""Request bodies at the edge: read under the limits that hold against hostile clients, buffered
when small, streamed to the object when large.

:class:`ClientBody` reads one request's body:

* **Time**: ``body_timeout`` seconds plus one second per ``body_min_rate`` bytes received (Apache's
  ``mod_reqtimeout`` rule), counting only the time spent waiting for the client (an object that
  reads a streamed body slowly pushes back on the client; that is not the client's delay), else
  ``408``.
* **Size**: at most ``max_body_bytes`` (``413``; a ``Content-Length`` above it is refused before
  any byte is read). Malformed chunking, a body cut short: ``400``.
* **Memory**: the bytes held are charged against the edge's budget of body bytes in flight
  (``503`` when it is spent): a buffered body all of it, a streamed one only the chunk on its way.

:meth:`ClientBody.buffer` reads up to ``stream_threshold`` bytes. If the body ended by then it is
sent inside the call, as every small body is (the fast path); else :meth:`ClientBody.stream` yields
what was read and then the rest as it arrives, and the call goes out on a ``Node.Body`` RPC
(docs/edge.md, "Streamed bodies"). A failure while streaming is kept in :attr:`ClientBody.error`,
so the edge answers the client's fault (408/413/400), not the object's reaction to it.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from aiohttp import web

from duro.edge.limits import ByteBudget
from duro.errors import InvalidArgumentError

__all__ = ["BodyError", "ClientBody"]


class BodyError(Exception):
    """A body the edge will not read: ``status`` (400, 408, 413, 503), ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _overloaded() -> BodyError:
    return BodyError(503, "overloaded",
                     "this edge holds its maximum of request body bytes in flight; retry")


class ClientBody:
    """One request's body, as the client sends it. :meth:`release` whatever happens."""

    def __init__(self, request: web.BaseRequest, *, max_bytes: int, budget: ByteBudget,
                 timeout: float, min_rate: int) -> None:
        self._content = request.content
        self._length = request.content_length
        self.max_bytes = max_bytes
        self._budget = budget
        self._timeout = timeout
        self._min_rate = min_rate
        self.received = 0
        self.charged = 0  # taken from the budget and not given back yet
        self._waited = 0.0  # seconds spent waiting for the client
        self.complete = False
        self.error: BodyError | None = None

    def _take(self, n: int) -> None:
        if not self._budget.take(n):
            raise _overloaded()
        self.charged += n

    def release(self, keep: int = 0) -> None:
        """Give back what the body holds of the budget beyond ``keep`` bytes."""
        if self.charged > keep:
            self._budget.give(self.charged - keep)
            self.charged = keep

    async def _chunk(self) -> bytes:
        """The next chunk (``b""`` at the end). Raises :class:`BodyError`."""
        loop = asyncio.get_running_loop()
        left = self._timeout + self.received / self._min_rate - self._waited
        started = loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                chunk = await self._content.readany()
        except TimeoutError:
            raise BodyError(408, "timeout",
                            f"the request body did not arrive in time ({self.received} bytes "
                            f"in {self._waited + loop.time() - started:.0f} s)") from None
        except web.RequestPayloadError as exc:  # bad chunking, a body cut short
            raise BodyError(400, "invalid_argument",
                            f"the request body is malformed: {exc}") from None
        finally:
            self._waited += loop.time() - started
        if not chunk:
            self.complete = True
            return b""
        if self.received + len(chunk) > self.max_bytes:
            raise BodyError(413, "too_large",
                            f"the request body is over {self.max_bytes} bytes, this edge's limit")
        self.received += len(chunk)
        return chunk

    async def buffer(self, limit: int) -> bytearray:
        """Read until the body ends or more than ``limit`` bytes arrived (see :attr:`complete`).
        Every byte read stays charged until :meth:`release`."""
        length = self._length
        if length is not None and length > self.max_bytes:
            raise BodyError(413, "too_large",
                            f"the request body is {length} bytes; this edge takes at most "
                            f"{self.max_bytes}")
        if length:  # a declared body is charged up front (as much of it as is buffered)
            self._take(min(length, limit + 1))
        body = bytearray()
        while len(body) <= limit:
            chunk = await self._chunk()
            if not chunk:
                break
            if self.received > self.charged:  # no (or a wrong) Content-Length: charge as it comes
                self._take(self.received - self.charged)
            body += chunk
        return body

    async def stream(self, first: bytes) -> AsyncIterator[bytes]:
        """``first`` (what :meth:`buffer` read), then the rest as it arrives; each chunk stays
        charged only until the next is asked for. A failure is kept in :attr:`error`."""
        try:
            chunk = first
            while chunk:
                yield chunk
                self.release()
                chunk = await self._chunk()
                if chunk:
                    self._take(len(chunk))
        except BodyError as exc:
            self.error = exc  # the edge answers this; the object sees an invalid argument
            raise InvalidArgumentError(f"the request body failed: {exc.message}") from None
