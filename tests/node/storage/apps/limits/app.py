"""A test app for the storage limits (docs/storage.md, "Limits"): the quota and list() of a
large object. Storage errors propagate to the caller as they are."""

from __future__ import annotations

import asyncio
import time

from duro import DurableObject, Request, Response


def key(prefix: str, i: int) -> str:
    return f"{prefix}{i:08d}"


class Store(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.events: list[str] = []

    # -- writes ------------------------------------------------------------------------------
    async def put(self, key: str, value) -> None:
        await self.ctx.storage.put(key, value)

    async def put_many(self, entries: dict) -> None:
        await self.ctx.storage.put_many(entries)

    async def delete(self, key: str) -> bool:
        return await self.ctx.storage.delete(key)

    async def delete_many(self, keys: list) -> int:
        return await self.ctx.storage.delete_many(keys)

    async def delete_all(self) -> None:
        await self.ctx.storage.delete_all()

    async def put_then_fail(self, first: dict, then_key: str, then_value) -> dict:
        """Write ``first``, then ``then_key`` in the same event; report what the second did."""
        self.ctx.storage.put_many(first)
        try:
            self.ctx.storage.put(then_key, then_value)
        except Exception as exc:
            return {"err": type(exc).__name__, "msg": str(exc)}
        return {"ok": True}

    async def txn(self, ops: list) -> dict:
        """Run ``ops`` (``[name, args]``) in one transaction; the error that ended it, if any."""
        try:
            async with self.ctx.storage.transaction() as txn:
                for name, args in ops:
                    await getattr(txn, name)(*args)
        except Exception as exc:
            return {"err": type(exc).__name__, "msg": str(exc)}
        return {"ok": True}

    async def txn_with_outside_write(self, txn_entries: dict, outside: dict) -> dict:
        """A transaction during which the object also writes outside it (``ctx.storage``)."""
        try:
            async with self.ctx.storage.transaction() as txn:
                for k, v in txn_entries.items():
                    await txn.put(k, v)
                self.ctx.storage.put_many(outside)
        except Exception as exc:
            return {"err": type(exc).__name__, "msg": str(exc)}
        return {"ok": True}

    async def fill(self, prefix: str, start: int, n: int, value) -> int:
        """Add keys ``prefix + 8 digits`` for ``start <= i < start + n`` (one event)."""
        st = self.ctx.storage
        for i in range(start, start + n, 128):
            st.put_many({key(prefix, j): value for j in range(i, min(start + n, i + 128))})
        await st.sync()
        return n

    # -- reads -------------------------------------------------------------------------------
    async def get(self, key: str):
        return await self.ctx.storage.get(key)

    async def count(self, **list_kwargs) -> dict:
        """list() with these options; its size, ends and duration (not the keys themselves)."""
        self.events.append("count-start")
        t0 = time.perf_counter()
        out = await self.ctx.storage.list(**list_kwargs)
        seconds = time.perf_counter() - t0
        self.events.append("count-end")
        keys = list(out)
        return {"n": len(out), "first": keys[0] if keys else None,
                "last": keys[-1] if keys else None, "seconds": seconds}

    async def listing(self, **list_kwargs) -> dict:
        return await self.ctx.storage.list(**list_kwargs)

    async def list_while_writing(self, prefix: str, n: int) -> dict:
        """list() of ``prefix`` while a background task rewrites and deletes its keys: the result
        must be the keys as they were at the call."""
        st = self.ctx.storage
        progress = {"rounds": 0}
        stop = asyncio.Event()

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                st.put(key(prefix, i % n), "changed")
                st.delete(key(prefix, (i + 1) % n))
                st.put(key(prefix + "new", i), "new")
                progress["rounds"] += 1
                i += 2
                await asyncio.sleep(0)

        self.ctx.wait_until(writer())  # starts at the next loop turn: inside the list
        listed = st.list(prefix=prefix)
        assert progress["rounds"] == 0
        out = await listed
        during = progress["rounds"]
        stop.set()
        return {"listed": out, "rounds_during_list": during,
                "sliced": type(listed).__name__ != "Ready"}

    async def list_with_pending(self, prefix: str, writes: dict, deletes: list, **kw) -> dict:
        """Write and delete in the same event, then list (the pending layer over the disk)."""
        st = self.ctx.storage
        for i in range(0, len(writes), 128):
            st.put_many(dict(list(writes.items())[i:i + 128]))
        for i in range(0, len(deletes), 128):
            st.delete_many(deletes[i:i + 128])
        return await st.list(prefix=prefix, **kw)

    async def mark(self) -> list:
        self.events.append("mark")
        return list(self.events)

    async def ping(self) -> str:
        return "pong"

    # -- HTTP --------------------------------------------------------------------------------
    async def fetch(self, request: Request) -> Response:
        q = request.query
        if request.path.endswith("/put"):
            await self.ctx.storage.put(q["key"], "x" * int(q["size"]))
            return Response.json({"ok": True})
        return Response("not found", status=404)
