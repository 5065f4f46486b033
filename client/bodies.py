"""The caller's end of ``Node.Body`` (``duro._body_link``): streamed HTTP bodies to and from a node.

* :func:`send_streamed`: a FETCH whose request body streams. The call opens the RPC; the body's
  chunks go out as the node grants credit (none before the object reads, so a refusal — a redirect
  — leaves the body untouched for the next node); the answer's head comes back, and a streamed
  response body after it on the same RPC.
* :func:`pull_body`: the body of a streamed response the node answered on ``Node.Stream`` (its
  head names a token), pulled on first iteration.

Both answer chunks as the consumer takes them (credit-based), and end the RPC when the consumer
stops (the iterator is closed or garbage-collected): the node then closes the object's generator.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from duro._body_link import BodyLink
from duro._http import stream_token
from duro._pb import node_pb2
from duro._wire import result_value

__all__ = ["send_streamed", "pull_body"]


async def pull_body(stub: Any, token: int, peer: str) -> AsyncIterator[bytes]:
    rpc = stub.Body()
    link = BodyLink(rpc.read, rpc.write, peer=peer)
    link.start()
    try:
        await link.send(node_pb2.BodyFrame(token=token))
        async for chunk in link.receive():
            yield chunk
    finally:
        await _end(rpc, link, None)


async def send_streamed(stub: Any, pb: node_pb2.Call, body: AsyncIterator[bytes], peer: str
                        ) -> tuple[bytes, AsyncIterator[bytes] | None]:
    rpc = stub.Body()
    link = BodyLink(rpc.read, rpc.write, peer=peer)
    link.start()
    pump: asyncio.Future[None] | None = None
    try:
        await link.send(node_pb2.BodyFrame(call=pb))
        pump = asyncio.ensure_future(link.send_body(body, close=False))
        answer = result_value(await link.wait_head())  # raises the node's error
        streamed = stream_token(answer) is not None
    except BaseException:
        await _end(rpc, link, pump)
        raise
    if not streamed:
        await _end(rpc, link, pump)
        return answer, None
    return answer, _rest(rpc, link, pump)


async def _rest(rpc: Any, link: BodyLink, pump: asyncio.Future[None] | None
                ) -> AsyncIterator[bytes]:
    try:
        async for chunk in link.receive():
            yield chunk
    finally:
        await _end(rpc, link, pump)


async def _end(rpc: Any, link: BodyLink, pump: asyncio.Future[None] | None) -> None:
    if pump is not None and not pump.done():
        pump.cancel()
        await asyncio.wait([pump])
    elif pump is not None and not pump.cancelled():
        pump.exception()  # retrieved: a pump that failed has told the node already
    rpc.cancel()
    await link.close()
