"""Exponential backoff for retry loops, in one place.

A loop that retries after a failure keeps one :class:`Backoff`: ``await backoff.sleep()`` (or
``backoff.next()`` for a wait of its own) after each failure, ``backoff.reset()`` after a
success. Delays start at ``first`` and double up to ``cap``. :func:`backoff_delay` is the same
curve for code that counts its attempts itself.
"""

from __future__ import annotations

import asyncio

__all__ = ["Backoff", "backoff_delay"]


def backoff_delay(first: float, attempt: int, cap: float) -> float:
    """The wait before retry number ``attempt`` (0 for the first): ``first`` doubled per attempt,
    at most ``cap``."""
    if attempt <= 0:
        return min(first, cap)
    # (the exponent is bounded so that a long outage cannot overflow the float)
    return min(first * (2.0 ** min(attempt, 64)), cap)


class Backoff:
    """Delays ``first``, ``2*first``, ... up to ``cap``; :meth:`reset` starts again."""

    __slots__ = ("first", "cap", "_attempt")

    def __init__(self, first: float, cap: float) -> None:
        if first <= 0 or cap < first:
            raise ValueError(f"backoff needs 0 < first <= cap (got first={first}, cap={cap})")
        self.first = first
        self.cap = cap
        self._attempt = 0

    def next(self) -> float:
        """The delay to wait now; the one after it is twice as long (up to ``cap``)."""
        delay = backoff_delay(self.first, self._attempt, self.cap)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())
