"""The base class of every durable object."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from duro.node.runtime.context import ObjectContext

__all__ = ["DurableObject"]


class DurableObject:
    """Subclass this. ``ctx`` is the object's state (id, storage, gates); ``env`` its bindings.

    Public methods (names not starting with ``_``) are callable through stubs. ``fetch(request)``
    answers HTTP-shaped requests; ``alarm(info)`` runs when the object's alarm fires;
    ``web_socket_message/close/error`` receive hibernatable WebSocket events.
    """

    def __init__(self, ctx: ObjectContext, env: Any) -> None:
        self.ctx = ctx
        self.env = env
