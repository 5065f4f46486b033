"""``ctx``: what an object's code sees of its runtime (DurableObjectState in Cloudflare's API)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from duro._ids import ObjectId

if TYPE_CHECKING:
    from duro.node.runtime.activation import Activation
    from duro.node.storage.object_storage import ObjectStorage

__all__ = ["ObjectContext", "AlarmInfo"]


@dataclass(frozen=True, slots=True)
class AlarmInfo:
    """Passed to ``alarm(info)``: how many times this alarm has been retried after a failure."""

    retry_count: int
    is_retry: bool


class ObjectContext:
    """The object's state: ``id``, ``storage``, ``block_concurrency_while``, ``wait_until``."""

    __slots__ = ("_act",)

    def __init__(self, activation: Activation) -> None:
        self._act = activation

    @property
    def id(self) -> ObjectId:
        """The object's id; ``id.name`` is the name it was derived from (``id_from_name``), or
        None for a unique id (and when no call so far named it: docs/runtime.md)."""
        act = self._act
        return ObjectId(act.oid, name=act.name)

    @property
    def storage(self) -> ObjectStorage:
        return self._act.storage

    @property
    def binding(self) -> str:
        return self._act.binding

    def block_concurrency_while(self, fn: Callable[[], Awaitable[Any]]) -> asyncio.Task:
        """Run ``fn()`` with no other event delivered to this object until it finishes.

        Callable from the constructor (the first event waits for it) or from a handler (``await``
        it). If ``fn`` raises or exceeds the time limit, the object is reset: this instance is
        dropped and every event waiting for it fails with ``ObjectResetError``.
        """
        return self._act.block_concurrency_while(fn)

    def wait_until(self, awaitable: Awaitable[Any]) -> asyncio.Future:
        """Keep the object in memory until ``awaitable`` finishes (it is not evicted meanwhile)."""
        return self._act.wait_until(awaitable)

    def abort(self, reason: str = "aborted by the object") -> None:
        """Reset the object: drop this instance; events in progress and queued fail."""
        self._act.reset_by_user(reason)
