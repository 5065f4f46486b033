"""An append-only log per object, for the fault tests' histories (tests/helpers/history.py):
``append(write_id)`` returns the log's length after the append, so an acknowledged append names
its own position; ``read()`` returns the whole log. Each entry is its own key (the log can grow
past one value's size limit)."""

from __future__ import annotations

import time

from duro import DurableObject


class Journal(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.n = -1  # loaded on first use

    async def _length(self) -> int:
        if self.n < 0:
            self.n = await self.ctx.storage.get("n", 0)
        return self.n

    async def append(self, write_id: str) -> int:
        n = await self._length()
        self.ctx.storage.put_many({f"e:{n:08d}": write_id, "n": n + 1})
        self.n = n + 1
        return self.n

    async def read(self) -> list[str]:
        n = await self._length()
        out: list[str] = []
        start = "e:"
        while len(out) < n:
            page = await self.ctx.storage.list(prefix="e:", start=start, limit=128)
            if not page:
                break
            out.extend(page.values())
            start = max(page) + "\x00"
        return out

    async def arm(self, seconds: float) -> float:
        when = time.time() + seconds
        self.ctx.storage.set_alarm(when)
        return when

    async def fired(self) -> int:
        return await self.ctx.storage.get("fired", 0)

    async def alarm(self, info) -> None:
        self.ctx.storage.put("fired", await self.ctx.storage.get("fired", 0) + 1)
