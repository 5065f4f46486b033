"""Who may create objects through this edge, and how fast: the per-client limit on new objects.

An object is created by the first call that reaches its directory partition without an entry
(``Directory.Resolve`` with ``create``; docs/directory.md). The edge does not know whether an
object is new without asking, so the limit applies to the calls that *could* create one:

* a call whose object is in the edge's directory cache exists: it passes, costing nothing; so
  does a call whose object another call is creating right now (a thousand clients' first
  WebSockets to one new room cost one token, not a thousand);
* otherwise it takes a token from its client's bucket (``new_objects_per_second``,
  ``new_objects_burst``; the client is the connection's remote address) and goes on as before:
  the router resolves it at its partition, creating the object if it is new (no extra round
  trip);
* with the bucket empty, the edge asks the partition without creating
  (``create=False``): an object that exists passes, a new one is refused with
  :class:`NewObjectsLimitError` (HTTP 429) and nothing is created.

So a client creates at most ``burst`` objects at once and ``rate`` a second after that, and an
object that exists is never refused; cache misses of existing objects also spend tokens, which
only makes a client that is over the limit pay one lookup per refused call.

Calls without a client (the Gateway, which authenticates its callers instead) are not limited.
"""

from __future__ import annotations

import contextvars
import math
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from duro._namespace import Call
from duro.client.router import Router
from duro.edge.limits import ClientBuckets
from duro.errors import DuroError

T = TypeVar("T")

__all__ = ["EdgeInvoker", "NewObjectsLimitError", "current_client"]

# The remote address of the HTTP request being handled (set by duro.edge.http for each request;
# tasks the worker's fetch starts inherit it).
current_client: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "duro_edge_client", default=None)


class NewObjectsLimitError(DuroError):
    """This client created objects faster than the edge allows; nothing was created."""

    code = "rate_limited"
    retryable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EdgeInvoker:
    """The edge's invoker: the Router, behind the new-objects limit."""

    def __init__(self, router: Router, buckets: ClientBuckets | None,
                 on_refused: object = None) -> None:
        self.router = router
        self.buckets = buckets
        self._on_refused = on_refused
        # Objects whose first call took a token and is still in flight (object id -> such calls).
        self._creating: dict[bytes, int] = {}

    async def invoke(self, call: Call) -> bytes:
        return await self._admitted(call, self.router.invoke)

    async def invoke_fetch(self, call: Call, body: AsyncIterator[bytes] | None
                           ) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """``Router.invoke_fetch`` (streamed bodies) behind the same limit."""
        return await self._admitted(call, lambda c: self.router.invoke_fetch(c, body))

    async def _admitted(self, call: Call, run: Callable[[Call], Awaitable[T]]) -> T:
        buckets = self.buckets
        client = current_client.get() if buckets is not None else None
        oid = call.object_id
        if (buckets is None or client is None or oid in self._creating
                or self.router.directory.lookup(oid.hex()) is not None):
            return await run(call)
        if not buckets.take(client):
            await self._refuse_if_new(call, client, buckets)
            return await run(call)
        creating = self._creating
        creating[oid] = creating.get(oid, 0) + 1
        try:
            return await run(call)
        finally:
            if creating[oid] > 1:
                creating[oid] -= 1
            else:
                del creating[oid]

    async def _refuse_if_new(self, call: Call, client: str, buckets: ClientBuckets) -> None:
        entry = await self.router.directory.resolve(
            call.object_id, call.binding, create=False, fresh=True)
        if entry is not None:
            return  # it exists (now in the cache): not a creation
        if callable(self._on_refused):
            self._on_refused()
        wait = buckets.retry_after(client)
        raise NewObjectsLimitError(
            f"too many new objects from {client}: this edge lets one client create "
            f"{buckets.rate:g} a second (bursts of {buckets.burst:g}); retry in "
            f"{max(1, math.ceil(wait))} s", wait)
