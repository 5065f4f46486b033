"""Small objects for the runtime guarantee tests.

Objects report to the test through module globals (``LOG``, ``EVENTS``, ``CTORS``...); the
``objs`` fixture resets them. Class names give the bindings (``Recorder`` -> ``RECORDER``).
"""

from __future__ import annotations

import asyncio
import time

from duro import DurableObject

LOG: list = []  # (tag, ...) tuples in the order things happened
CTORS: dict = {}  # class name -> constructor runs
EVENTS: dict = {}  # name -> asyncio.Event, made by the test
FLAGS: dict = {}  # switches set by the test
ALARMS: list = []  # (object name or id hex, retry_count, is_retry, get_alarm inside, monotonic)


def reset() -> None:
    LOG.clear()
    CTORS.clear()
    EVENTS.clear()
    FLAGS.clear()
    ALARMS.clear()


def _ctor(obj) -> None:
    name = type(obj).__name__
    CTORS[name] = CTORS.get(name, 0) + 1


class Recorder(DurableObject):
    """Records event start/end; the building block of the input-gate tests."""

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        _ctor(self)

    async def ping(self, tag="ping"):
        LOG.append(("event", tag))
        return tag

    async def sleepy(self, tag, seconds):
        """Awaits plain I/O (a sleep) without any gate: other events may run meanwhile."""
        LOG.append(("start", tag))
        await asyncio.sleep(seconds)
        LOG.append(("end", tag))
        return tag

    async def guarded(self, tag, seconds):
        """The same sleep inside block_concurrency_while: nothing else may run meanwhile."""

        async def body():
            LOG.append(("start", tag))
            await asyncio.sleep(seconds)
            LOG.append(("end", tag))

        await self.ctx.block_concurrency_while(body)
        return tag

    async def guarded_wait(self, event_name):
        """Holds the gate until the test sets EVENTS[event_name]."""
        LOG.append(("start", "guarded_wait"))
        await self.ctx.block_concurrency_while(EVENTS[event_name].wait)
        LOG.append(("end", "guarded_wait"))
        return "released"

    async def guarded_fail(self):
        async def body():
            LOG.append(("start", "guarded_fail"))
            await asyncio.sleep(0.05)
            raise RuntimeError("bcw body failed")

        await self.ctx.block_concurrency_while(body)

    async def call_other(self, tag, other_name, seconds):
        """Awaits a call to another object (allowed interleaving point)."""
        LOG.append(("start", tag))
        await self.env.SLOW.get_by_name(other_name).wait(seconds)
        LOG.append(("end", tag))
        return tag

    async def call_other_guarded(self, tag, other_name, seconds):
        """The race-free pattern: the outgoing call inside block_concurrency_while."""

        async def body():
            LOG.append(("start", tag))
            await self.env.SLOW.get_by_name(other_name).wait(seconds)
            LOG.append(("end", tag))

        await self.ctx.block_concurrency_while(body)
        return tag

    # -- transactions ------------------------------------------------------------------------
    async def txn_slow(self, seconds):
        async with self.ctx.storage.transaction() as txn:
            LOG.append(("start", "txn"))
            txn.put("t1", 1)
            txn.put("t2", 2)
            await asyncio.sleep(seconds)
            txn.put("t3", 3)
            LOG.append(("end", "txn"))
        return "txn-done"


class Slow(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        _ctor(self)

    async def wait(self, seconds):
        await asyncio.sleep(seconds)
        return "slow-done"


class Loader(DurableObject):
    """block_concurrency_while in the constructor (the Counter pattern)."""

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        _ctor(self)
        self.loaded = False
        ctx.block_concurrency_while(self._load)

    async def _load(self):
        LOG.append(("start", "load"))
        await asyncio.sleep(FLAGS.get("load_seconds", 0.1))
        if FLAGS.get("load_fails"):
            LOG.append(("fail", "load"))
            raise RuntimeError("loading failed")
        self.loaded = True
        self.items = await self.ctx.storage.get("items", [])
        LOG.append(("end", "load"))

    async def is_loaded(self):
        LOG.append(("event", "is_loaded"))
        return self.loaded

    async def append(self, i):
        self.items.append(i)
        return len(self.items)

    async def append_stored(self, i):
        self.items.append(i)
        self.ctx.storage.put("items", self.items)
        return len(self.items)

    async def get_items(self):
        return self.items


class Txn(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        _ctor(self)

    async def ctx_manager(self):
        st = self.ctx.storage
        async with st.transaction() as txn:
            txn.put("a", 1)
            txn.put_many({"b": 2, "c": 3})
            txn.delete("pre")
            own = [await txn.get("a"), await txn.get_many(["b", "c"]), await txn.list(),
                   await txn.get("pre", "deleted")]
            outside = await st.get("a", "invisible")  # not applied until the transaction ends
        return {"own": own, "outside": outside, "after": await st.list()}

    async def callable_form(self):
        async def fn(txn):
            txn.put("x", 10)
            return [await txn.get("x"), "result"]

        return await self.ctx.storage.transaction(fn)

    async def raising(self, form):
        st = self.ctx.storage
        st.put("before", 1)  # a write outside the transaction, in the same event: kept

        async def fn(txn):
            txn.put("a", 1)
            txn.delete("pre")
            txn.set_alarm(4_000_000_000)
            raise ValueError("boom")

        try:
            if form == "callable":
                await st.transaction(fn)
            else:
                async with st.transaction() as txn:
                    await fn(txn)
        except ValueError:
            pass
        return await st.list()

    async def raising_uncaught(self):
        async with self.ctx.storage.transaction() as txn:
            txn.put("a", 1)
            raise KeyError("uncaught")

    async def rollback(self, form):
        st = self.ctx.storage
        err = None

        async def fn(txn):
            nonlocal err
            txn.put("a", 1)
            txn.delete("pre")
            txn.delete_all()
            txn.rollback()
            try:
                txn.put("b", 2)
            except Exception as exc:  # a rolled-back transaction cannot be used
                err = type(exc).__name__
            return "rolled"

        if form == "callable":
            res = await st.transaction(fn)
        else:
            async with st.transaction() as txn:
                res = await fn(txn)
        return {"res": res, "err": err, "list": await st.list()}

    async def nested(self):
        st = self.ctx.storage
        async with st.transaction() as txn:
            txn.put("outer", 1)
            try:
                async with st.transaction() as inner:
                    inner.put("inner", 1)
            except Exception as exc:
                nested_err = type(exc).__name__
        return {"err": nested_err, "list": await st.list()}

    async def atomic(self, n, seconds):
        """A transaction that writes n keys around a sleep; the test watches the disk meanwhile."""
        async with self.ctx.storage.transaction() as txn:
            for i in range(n // 2):
                txn.put(f"k{i:03}", "v")
            LOG.append(("start", "atomic"))
            await asyncio.sleep(seconds)
            for i in range(n // 2, n):
                txn.put(f"k{i:03}", "v")
        LOG.append(("end", "atomic"))
        return True

    async def delete_all_in_txn(self):
        async with self.ctx.storage.transaction() as txn:
            txn.delete_all()
            txn.put("fresh", 1)
            inside = await txn.list()
        return {"inside": inside, "after": await self.ctx.storage.list()}

    async def put(self, key, value):
        self.ctx.storage.put(key, value)

    async def ping(self):
        LOG.append(("event", "ping"))
        return "pong"


class Counter(DurableObject):
    """Counter with state in memory, loaded in the constructor; counts constructor runs."""

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        _ctor(self)
        self.value = None
        ctx.block_concurrency_while(self._load)

    async def _load(self):
        self.value = await self.ctx.storage.get("value", 0)

    async def increment(self, by=1):
        self.value += by
        self.ctx.storage.put("value", self.value)
        return self.value

    async def get(self):
        return self.value

    async def increment_then_call(self, other_name):
        """A write followed by an outgoing call: the call must wait for the write."""
        self.value += 1
        self.ctx.storage.put("value", self.value)
        return await self.env.PROBE.get_by_name(other_name).observe(self.ctx.id.hex())

    async def increment_then_fail(self):
        self.value += 1
        self.ctx.storage.put("value", self.value)
        raise ValueError("after the write")


class Probe(DurableObject):
    async def observe(self, caller_hex):
        """What the caller's state is on disk when this call arrives (read by the test's hook)."""
        return FLAGS["disk_reader"](caller_hex)


class Plain(DurableObject):
    """No constructor work: its first event writes in the same loop turn it was submitted."""

    async def put(self, key, value):
        self.ctx.storage.put(key, value)
        return True

    async def rmw(self, i):
        """Read-modify-write with an await of a storage read in between."""
        items = await self.ctx.storage.get("items", [])
        items.append(i)
        self.ctx.storage.put("items", items)
        return len(items)

    async def put_several(self, keys, value):
        for k in keys:
            self.ctx.storage.put(k, value)  # no await in between: coalesced
        return value


class Alarmed(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        _ctor(self)

    async def set_alarm(self, when):
        self.ctx.storage.set_alarm(when)
        return await self.ctx.storage.get_alarm()

    async def set_alarm_iso(self, iso):
        import datetime as dt

        self.ctx.storage.set_alarm(dt.datetime.fromisoformat(iso))
        return await self.ctx.storage.get_alarm()

    async def get_alarm(self):
        return await self.ctx.storage.get_alarm()

    async def set_mode(self, mode):
        self.ctx.storage.put("mode", mode)

    async def alarm(self, info):
        st = self.ctx.storage
        mode = await st.get("mode", "ok")
        ALARMS.append((self.ctx.id.hex(), info.retry_count, info.is_retry,
                       await st.get_alarm(), time.monotonic(), mode))
        st.put("fired", await st.get("fired", 0) + 1)
        if mode == "fail":
            raise RuntimeError("alarm failed")
        if mode == "delete_inside":
            st.set_alarm(time.time() + 3600)
            st.delete_alarm()
        if mode == "rearm":
            n = await st.get("rearms", 0)
            if n < 2:
                st.put("rearms", n + 1)
                st.set_alarm(time.time() + 0.05)
        if mode == "delete_then_fail":
            st.delete_alarm()
            raise RuntimeError("failed after delete_alarm")


class NoAlarm(DurableObject):
    """No alarm() handler at all."""

    async def set_alarm(self, when):
        self.ctx.storage.set_alarm(when)


class Rules(DurableObject):
    """Targets for the stub rules."""

    LIMIT = 5
    Nested = int

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        _ctor(self)
        if FLAGS.get("ctor_fails"):
            raise RuntimeError("constructor failed")
        self.attribute = 1

    @property
    def prop(self):
        return 1

    async def ok(self, *args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    async def _private(self):
        return "private!"

    async def fetch(self, request):
        from duro import Response

        return Response("fetched")

    async def alarm(self, info):
        return "alarm!"

    async def web_socket_message(self, ws, message):
        return "ws!"

    async def fail(self, message):
        raise ValueError(message)

    async def fail_custom(self):
        class MyError(Exception):
            pass

        raise MyError("custom")

    async def block(self, event_name):
        await self.ctx.block_concurrency_while(EVENTS[event_name].wait)
        return "unblocked"

    async def quick(self):
        return "quick"
