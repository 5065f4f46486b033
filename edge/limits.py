"""The edge's admission limits as plain counters (no I/O): a byte budget and per-client token
buckets. ``duro.edge.http`` and ``duro.edge.admission`` apply them; docs/security.md lists them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["ByteBudget", "ClientBuckets"]


class ByteBudget:
    """At most ``limit`` bytes held at once; ``take`` refuses instead of waiting."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int, *, alone: bool = False) -> bool:
        """Hold ``n`` more bytes if they fit; with ``alone``, also when nothing is held (so a
        request larger than the whole budget is served one at a time, never refused forever)."""
        if self.used + n > self.limit and not (alone and self.used == 0):
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class ClientBuckets:
    """One token bucket per client: ``rate`` tokens a second, at most ``burst`` saved up.

    The table is bounded (``max_clients``): clients whose bucket has refilled completely are
    forgotten first (they lose nothing), then the least recently seen. Under a flood of distinct
    addresses a forgotten client starts again with a full bucket; that is the price of bounded
    memory, and it is documented (docs/security.md).
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> bool:
        """Take one token of ``client``'s bucket; False (nothing taken) if it is empty."""
        now = self._clock()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._prune(now)
        return ok

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` has a token again."""
        tokens, at = self._buckets.get(client, (self.burst, self._clock()))
        tokens = min(self.burst, tokens + (self._clock() - at) * self.rate)
        return max(0.0, (1.0 - tokens) / self.rate)

    def _prune(self, now: float) -> None:
        # The table is in order of last use, so the full buckets are at its front; then drop
        # the least recently used down to 90% of the bound (amortized: not on every take).
        full = self.burst / self.rate  # seconds after which any bucket is full again
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets))
            if now - buckets[oldest][1] < full:
                break
            del buckets[oldest]
        keep = max(1, int(self.max_clients * 0.9))
        while len(buckets) > keep:
            buckets.popitem(last=False)
