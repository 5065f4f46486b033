"""Operation histories of append-only logs, and a per-object linearizability check.

The fault tests drive objects of ``tests/cluster/apps/journal`` (``append(write_id) -> length``,
``read() -> [write_id, ...]``) from several clients while they break the cluster, record every
operation with its invocation and completion times (monotonic) and its outcome, and at the end
read every log once the cluster has recovered. :func:`check` then verifies, per object:

* no write id appears twice in the log (nothing was applied twice);
* every acknowledged append is in the log, at the position its acknowledgement named (length
  after the append), so no acknowledged write was lost or moved;
* real-time order: an append acknowledged before another was invoked comes first; an append
  whose outcome is unknown (an error that says it may have executed) may be in the log or not,
  but if it is, it comes after every append acknowledged before it was invoked (as in Jepsen's
  treatment of indeterminate operations);
* every read returned a prefix of the final log, containing every append acknowledged before
  the read was invoked, and reads in real-time order never shrink.

For an append-only log whose appends report their position, these conditions are equivalent to
the history being linearizable (each acknowledged append's position is fixed, and reads are
prefixes), so no search is needed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Op", "History", "check"]


@dataclass
class Op:
    obj: str
    kind: str  # "append" | "read"
    arg: str | None  # the write id (append)
    invoked: float
    completed: float = 0.0
    ok: bool | None = None  # True: acknowledged; False: definitely failed; None: unknown
    result: Any = None  # append: length after; read: the list
    error: str = ""


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def invoke(self, obj: str, kind: str, arg: str | None = None) -> Op:
        op = Op(obj, kind, arg, time.monotonic())
        self.ops.append(op)
        return op

    @staticmethod
    def ok(op: Op, result: Any) -> None:
        op.completed, op.ok, op.result = time.monotonic(), True, result

    @staticmethod
    def fail(op: Op, error: BaseException, *, definite: bool = False) -> None:
        op.completed, op.ok, op.error = time.monotonic(), (False if definite else None), repr(error)

    def acked(self, obj: str | None = None) -> list[Op]:
        return [o for o in self.ops if o.ok and o.kind == "append" and (obj is None or o.obj == obj)]

    def summary(self) -> dict[str, int]:
        return {"ops": len(self.ops), "acked": sum(1 for o in self.ops if o.ok),
                "unknown": sum(1 for o in self.ops if o.ok is None),
                "failed": sum(1 for o in self.ops if o.ok is False)}


def check(history: History, final: dict[str, list[str]]) -> None:
    """Raise AssertionError naming the first anomaly (see the module docstring)."""
    by_obj: dict[str, list[Op]] = defaultdict(list)
    for op in history.ops:
        by_obj[op.obj].append(op)
    for obj, ops in by_obj.items():
        log = final.get(obj)
        assert log is not None, f"{obj}: no final read"
        where = {w: i for i, w in enumerate(log)}
        dupes = sorted({w for w in log if log.count(w) > 1})
        assert not dupes, f"{obj}: applied twice: {dupes[:5]}"
        appends = [o for o in ops if o.kind == "append"]
        ids = {o.arg for o in appends}
        strangers = [w for w in log if w not in ids]
        assert not strangers, f"{obj}: ids never written: {strangers[:5]}"
        for o in appends:
            if o.ok:
                assert o.arg in where, f"{obj}: acknowledged append {o.arg} is lost"
                assert where[o.arg] == o.result - 1, (
                    f"{obj}: append {o.arg} was acknowledged at position {o.result - 1} but is "
                    f"at {where[o.arg]}")
            elif o.ok is False:
                assert o.arg not in where, f"{obj}: append {o.arg} failed but was applied"
        acked = sorted((o for o in appends if o.ok), key=lambda o: o.completed)
        for o in appends:
            if o.arg not in where:
                continue
            before = [a for a in acked if a.completed < o.invoked]
            late = [a.arg for a in before if where[a.arg] > where[o.arg]]
            assert not late, (f"{obj}: {o.arg} (invoked after {late[:3]} were acknowledged) "
                              "comes before them")
        reads = [o for o in ops if o.kind == "read" and o.ok]
        for r in reads:
            got = list(r.result)
            assert got == log[:len(got)], f"{obj}: a read returned {got[-3:]}…, not a prefix"
            missing = [a.arg for a in acked if a.completed < r.invoked and a.arg not in got]
            assert not missing, f"{obj}: a read misses acknowledged appends {missing[:3]}"
        for r1 in reads:
            for r2 in reads:
                assert not (r1.completed < r2.invoked and len(r2.result) < len(r1.result)), (
                    f"{obj}: a later read saw {len(r2.result)} entries, an earlier one "
                    f"{len(r1.result)}")
