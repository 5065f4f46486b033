"""The node's end of ``Node.Body``: one streamed HTTP body per RPC (``duro._body_link``).

Two ways in, by the caller's first frame:

* ``call``: a FETCH whose request body is larger than the edge buffers. The call runs as any other
  (``host.invoke``, tracked by the servicer for shutdown); ``request`` iterates the body, granting
  the caller credit as the object reads. The head — the encoded response or the error — goes back
  as ``result``; a streamed response body follows on this RPC.
* ``token``: the body of a streamed response the node answered on ``Node.Stream``
  (``[status, headers, b"", token]``), held by ``host.bodies`` until pulled.

A caller that goes away cancels the RPC: the object's body generator is closed
(``GeneratorExit`` in it), and a request body it still reads ends with ``unavailable``.
"""

from __future__ import annotations

import logging
from typing import Any

from grpc import aio

from duro._body_link import BodyLink
from duro._http import stream_token
from duro._pb import node_pb2
from duro._wire import call_from_pb, error_to_pb, result_error
from duro.errors import DuroError, InvalidArgumentError, UnavailableError

__all__ = ["serve_body"]

log = logging.getLogger("duro.node.body")

LINGER = 30.0  # seconds the node waits, its side sent, for the caller to end the RPC


async def serve_body(servicer: Any, context: aio.ServicerContext) -> None:
    """Serve one ``Node.Body`` RPC for ``servicer`` (a ``NodeServicer``)."""
    first = await context.read()
    if first is aio.EOF:
        return
    link = BodyLink(context.read, context.write, peer=context.peer() or "caller")
    link.start(first)
    try:
        if first.HasField("call"):
            await _serve_call(servicer, link, first.call)
        else:
            await _serve_token(servicer, link, first.token)
        # Everything is sent; the caller ends the RPC once it has read it (see wait_closed).
        await link.wait_closed(LINGER)
    finally:
        await link.close()


async def _serve_call(servicer: Any, link: BodyLink, pb: node_pb2.Call) -> None:
    if servicer.draining:
        await link.send(node_pb2.BodyFrame(result=result_error(
            pb.seq, UnavailableError("node is shutting down; the call was not executed"))))
        return
    try:
        call = call_from_pb(pb)
    except DuroError as exc:
        await link.send(node_pb2.BodyFrame(result=result_error(pb.seq, exc)))
        return
    call.stream_response = True
    call.meta["body"] = link.receive()
    result = await servicer.run(call, pb.seq, trace=pb)
    await link.send(node_pb2.BodyFrame(result=result))
    token = None if result.HasField("error") else stream_token(result.value)
    if token is not None:
        await link.send_body(servicer.host.bodies.take(token))


async def _serve_token(servicer: Any, link: BodyLink, token: int) -> None:
    bodies = getattr(servicer.host, "bodies", None)
    try:
        if bodies is None:
            raise InvalidArgumentError("this node holds no streamed bodies")
        source = bodies.take(token)
    except DuroError as exc:
        await link.send(node_pb2.BodyFrame(error=error_to_pb(exc)))
        return
    await link.send_body(source)
