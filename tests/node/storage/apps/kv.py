"""A test object that runs scripts of storage operations through ``ctx.storage``.

A script is a list of ``[op, args, kwargs]`` run one after another WITHOUT any ``await`` of other
I/O in between (storage operations return already-complete awaitables), so they all land in the
same event and loop turn. Values that cannot cross an RPC boundary are made on the object's side
from markers: ``{"$bad": "object" | "set" | "bigint"}`` and the strings of ``_SPECIAL`` (keys
that are not valid UTF-8 or not str).
"""

from __future__ import annotations

from duro import DurableObject


_SPECIAL = {
    "$SUR": "\ud800",  # lone high surrogate
    "$LOWSUR": "ok\udfffok",  # lone low surrogate
    "$INT": 5,
    "$BYTES": b"bytes",
    "$NONE": None,
}


def _materialise(v):
    if isinstance(v, str) and v in _SPECIAL:
        return _SPECIAL[v]
    if isinstance(v, dict) and set(v) == {"$bad"}:
        kind = v["$bad"]
        if kind == "object":
            return object()
        if kind == "set":
            return {1, 2}
        if kind == "bigint":
            return 2**64
        raise ValueError(kind)
    if isinstance(v, dict):
        return {_materialise(k): _materialise(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_materialise(x) for x in v]
    return v


class KV(DurableObject):
    async def run(self, script):
        """Run ``script`` in one event. Each step gives ``{"ok": result}`` or
        ``{"err": ExceptionName, "at_call": bool, "msg": str}``; ``at_call`` says the error was
        raised by the call itself (synchronously), not when awaited. Errors do not stop the script.
        """
        out = []
        for op, args, kwargs in script:
            fn = getattr(self.ctx.storage, op)
            try:
                aw = fn(*_materialise(args), **_materialise(kwargs))
            except Exception as exc:
                out.append({"err": type(exc).__name__, "at_call": True, "msg": str(exc)})
                continue
            try:
                res = await aw
            except Exception as exc:  # a contract violation: errors must come at the call
                out.append({"err": type(exc).__name__, "at_call": False, "msg": str(exc)})
                continue
            out.append({"ok": res})
        return out

    async def run_raising(self, op, args, kwargs):
        """One operation whose error propagates to the caller."""
        return await getattr(self.ctx.storage, op)(*_materialise(args), **_materialise(kwargs))

    async def put_then_abort(self, entries):
        """Write ``entries`` (one put each, one layer) and reset the object in the same event."""
        for key, value in entries.items():
            self.ctx.storage.put(key, value)
        self.ctx.abort("test abort after writing")
