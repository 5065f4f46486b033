"""Calls and their latency per binding, counted on the node that runs the objects.

One :class:`CallStats` per binding: a call count, an error count and a fixed-bucket latency
histogram (the bounds of :data:`BUCKET_MS`). Recording a call is two integer bumps and a bisect
over 16 floats; nothing else is kept per call. Readers (the console's node sample,
docs/console.md) take the counters as they are and compute rates and percentiles from the
difference between two samples.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["BUCKET_MS", "CallStats", "percentile"]

# Upper bounds in milliseconds; the histogram has one more bucket for everything above.
BUCKET_MS: tuple[float, ...] = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048,
                                4096, 8192)


class CallStats:
    __slots__ = ("calls", "errors", "buckets")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.buckets = [0] * (len(BUCKET_MS) + 1)

    def record(self, seconds: float, failed: bool) -> None:
        self.calls += 1
        if failed:
            self.errors += 1
        self.buckets[bisect_left(BUCKET_MS, seconds * 1000.0)] += 1


def percentile(buckets: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram of :data:`BUCKET_MS`, in milliseconds: the upper
    bound of the bucket it falls in (the last bound doubled for the open bucket); None if empty."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank and n:
            return BUCKET_MS[i] if i < len(BUCKET_MS) else BUCKET_MS[-1] * 2
    return BUCKET_MS[-1] * 2
