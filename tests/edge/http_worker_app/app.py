"""A worker ``fetch`` in front of ``Tally``: the worker passes the request on (its body streams
through it) and returns the object's response (streamed too); ``/worker-stream`` is a stream the
worker makes itself."""

from __future__ import annotations

from duro import DurableObject, Request, Response


class Tally(DurableObject):
    async def fetch(self, request: Request) -> Response:
        if request.path.endswith("/ticks"):
            return Response(_ticks(3))
        size = 0
        async for chunk in request:
            size += len(chunk)
        return Response(f"{size} {request.streamed}",
                        headers=[("Set-Cookie", "t=1"), ("Set-Cookie", "u=2")])


async def _ticks(n: int):
    for i in range(n):
        yield f"tick {i}\n"


async def fetch(request: Request, env) -> Response:
    if request.path == "/worker-stream":
        return Response(_ticks(2), headers={"Content-Type": "text/plain"})
    return await env.TALLY.get_by_name("t").fetch(request)
