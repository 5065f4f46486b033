"""A test app for migration: a counter that can set an alarm and records alarm firings."""

from __future__ import annotations

import time

from duro import DurableObject


class Acc(DurableObject):
    async def add(self, by: int = 1) -> int:
        value = await self.ctx.storage.get("value", 0) + by
        self.ctx.storage.put("value", value)
        return value

    async def get(self) -> int:
        return await self.ctx.storage.get("value", 0)

    async def fill(self, n_keys: int, size: int) -> int:
        """Add ``n_keys`` keys of ``size`` bytes (state for transfer benchmarks)."""
        blob = b"x" * size
        for i in range(0, n_keys, 128):
            self.ctx.storage.put_many({f"blob:{j:08d}": blob for j in range(i, min(n_keys, i + 128))})
        return n_keys

    async def arm(self, seconds: float) -> float:
        when = time.time() + seconds
        self.ctx.storage.set_alarm(when)
        return when

    async def fired(self) -> int:
        return await self.ctx.storage.get("fired", 0)

    async def alarm(self, info) -> None:
        self.ctx.storage.put("fired", await self.ctx.storage.get("fired", 0) + 1)
