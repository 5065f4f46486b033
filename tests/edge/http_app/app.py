"""``Mirror``: an object that shows what HTTP reached it (headers, bodies) and streams answers.

Routes (``/mirror/<name>/<route>``):

* ``headers``: the request's ``X-Multi`` values (joined and one by one) as JSON, answered with two
  ``Set-Cookie`` headers and an ``X-Multi`` with two values;
* ``count``: reads the body as a stream and answers its size, CRC-32 and chunk count (an upload
  of any size, in bounded memory);
* ``echo``: streams the request body back as it reads it;
* ``sse?n=N``: server-sent events; event 0 at once, the rest only after ``release`` is called
  (so a client that has event 0 before it calls ``release`` proves the stream is incremental);
  each event is also stored (``sent`` = its number), so the output gate holds every event;
* ``release``: lets the ``sse`` stream go on; ``closed``: how many ``sse`` streams ended (a
  client that left closes its stream's generator);
* ``broken``: a stream that fails after its first chunk.
"""

from __future__ import annotations

import asyncio
import zlib

from duro import DurableObject, Request, Response


class Mirror(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.release = asyncio.Event()
        self.closed_streams = 0  # event streams ended or closed (a client that left included)

    async def fetch(self, request: Request) -> Response:
        route = request.path.rsplit("/", 1)[-1]
        if route == "headers":
            headers = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"),
                       ("X-Multi", "one")]
            resp = Response.json({"joined": request.headers.get("x-multi"),
                                  "all": request.headers.get_all("X-Multi"),
                                  "streamed": request.streamed}, headers=headers)
            resp.headers.append("x-multi", "two")
            return resp
        if route == "count":
            size = chunks = crc = 0
            async for chunk in request:
                size += len(chunk)
                chunks += 1
                crc = zlib.crc32(chunk, crc)
            return Response.json({"bytes": size, "crc32": crc, "chunks": chunks,
                                  "streamed": request.streamed})
        if route == "echo":
            return Response(_echo(request), headers={"Content-Type": "application/octet-stream"})
        if route == "sse":
            n = int(request.query.get("n", "3"))
            self.release.clear()
            return Response(self._events(n), headers={"Content-Type": "text/event-stream",
                                                      "Cache-Control": "no-cache"})
        if route == "release":
            self.release.set()
            return Response("released")
        if route == "sent":
            return Response.json({"sent": await self.ctx.storage.get("sent")})
        if route == "closed":
            return Response.json({"closed": self.closed_streams})
        if route == "broken":
            return Response(_broken())
        return Response("no such route", status=404)

    async def _events(self, n: int):
        try:
            for i in range(n):
                self.ctx.storage.put("sent", i)  # the event leaves once this write is durable
                yield f"id: {i}\ndata: event {i}\n\n"
                if i == 0:
                    await self.release.wait()
        finally:
            self.closed_streams += 1


async def _echo(request: Request):
    async for chunk in request:
        yield chunk


async def _broken():
    yield b"first chunk\n"
    raise RuntimeError("the stream broke")
