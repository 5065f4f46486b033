"""The lifecycle state of an activation (node/runtime/activation.py)."""

from __future__ import annotations

from enum import Enum

__all__ = ["State"]


class State(Enum):
    ACTIVE = "active"
    BROKEN = "broken"  # reset: every event fails; the host has forgotten this instance
    CLOSED = "closed"  # evicted or shut down cleanly
