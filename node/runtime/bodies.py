"""Streamed response bodies an object returned, held until their caller pulls them.

An object's ``fetch`` may return ``Response(async_generator())``. When the caller can take a
streamed body (``Call.stream_response``: an edge, the Testbed), the activation answers the head
``[status, headers, b"", token]`` at once and :class:`ResponseBodies` holds the generator under
``token``; :meth:`take` hands it out once (to ``Node.Body``, or to the Testbed in process). While a
body is held or streaming, its activation counts it as a running event, so it is not evicted
midway; a body nobody claims within ``unclaimed_timeout`` seconds is closed.

Each chunk runs the generator with the activation current (its storage calls are the object's, as
in a handler), and leaves only once the writes made before it are durable: the output gate holds
for every chunk as for a reply.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from duro._http import stream_token
from duro._namespace import Call
from duro.errors import InvalidArgumentError

if TYPE_CHECKING:
    from duro.node.runtime.activation import Activation

__all__ = ["ResponseBodies", "UNCLAIMED_TIMEOUT", "fetch_in_process"]

UNCLAIMED_TIMEOUT = 30.0


class ResponseBodies:
    """Bodies by token, each taken once."""

    def __init__(self, unclaimed_timeout: float = UNCLAIMED_TIMEOUT) -> None:
        self.unclaimed_timeout = unclaimed_timeout
        self._held: dict[int, tuple[Activation, AsyncIterator[bytes], asyncio.TimerHandle]] = {}
        self._tokens = itertools.count(1)

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, act: Activation, stream: AsyncIterator[bytes]) -> int:
        token = next(self._tokens)
        expiry = asyncio.get_running_loop().call_later(
            self.unclaimed_timeout, self._expire, token)
        self._held[token] = (act, stream, expiry)
        act.running += 1
        return token

    def take(self, token: int) -> AsyncIterator[bytes]:
        held = self._held.pop(token, None)
        if held is None:
            raise InvalidArgumentError(
                f"no streamed body {token} here: taken already, or unclaimed for "
                f"{self.unclaimed_timeout:g} s and closed")
        act, stream, expiry = held
        expiry.cancel()
        return _pump(act, stream)

    def _expire(self, token: int) -> None:
        held = self._held.pop(token, None)
        if held is not None:
            act, stream, _ = held
            act.running -= 1
            asyncio.ensure_future(_close(stream))

    def close(self) -> None:
        """Close every body not taken (the host is closing)."""
        for token in list(self._held):
            self._held[token][2].cancel()
            self._expire(token)


async def _pump(act: Activation, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    from duro.node.runtime.activation import current_activation

    try:
        while True:
            ctx_token = current_activation.set(act)
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            finally:
                current_activation.reset(ctx_token)
            gate = act.storage.output_gate()
            if gate is not None:
                await gate
            yield chunk
    finally:
        act.running -= 1
        act.last_used = time.monotonic()
        await _close(stream)


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # the object's generator failed while closing: nobody to tell
            pass


async def fetch_in_process(invoke: Callable[[Call], Awaitable[bytes]], bodies: ResponseBodies,
                           call: Call, body: AsyncIterator[bytes] | None
                           ) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """A FETCH with streamed bodies to a host in this process (the Testbed, a node's co-located
    edge): the request's chunks go to the object as ``call.meta["body"]``, and a streamed
    response's body is taken from ``bodies`` at once."""
    call.stream_response = True
    if body is not None:
        call.meta["body"] = body
    answer = await invoke(call)
    token = stream_token(answer)
    return answer, (bodies.take(token) if token is not None else None)
