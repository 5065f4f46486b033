"""The console's live feed: one sampler per console, fanned out to every open page.

While at least one page listens, :class:`ConsoleFeed` takes a snapshot every ``interval``
seconds (snapshot.py: etcd plus one ``Sample`` RPC per node), and publishes it with the rates
since the previous one and the changes between the two (:func:`changes`: nodes joining and
leaving, draining, failovers, leader changes, migrations starting and ending, groups losing or
regaining copies). Pages get them pushed (server-sent events, web.py); no page means no sampling.
A page that does not keep up (its queue full) is dropped; its EventSource reconnects and starts
again from the latest snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from duro.console.snapshot import rates

__all__ = ["ConsoleFeed", "changes"]

log = logging.getLogger("duro.console.feed")


def _event(kind: str, at: float, text: str, **fields: Any) -> dict[str, Any]:
    return {"type": "event", "kind": kind, "at": at, "text": text, **fields}


def changes(prev: dict[str, Any] | None, cur: dict[str, Any]) -> list[dict[str, Any]]:
    """What happened between two snapshots, as events (oldest first). Pure: no I/O."""
    if prev is None:
        return []
    at = cur["at"]
    out: list[dict[str, Any]] = []
    old_nodes = {n["node_id"]: n for n in prev["nodes"]}
    new_nodes = {n["node_id"]: n for n in cur["nodes"]}
    for nid in sorted(new_nodes.keys() - old_nodes.keys()):
        out.append(_event("node_joined", at, f"node {nid} joined", node=nid))
    for nid in sorted(old_nodes.keys() - new_nodes.keys()):
        out.append(_event("node_left", at, f"node {nid} left (lease gone)", node=nid))
    for nid in sorted(new_nodes.keys() & old_nodes.keys()):
        was, now = old_nodes[nid]["draining"], new_nodes[nid]["draining"]
        if was != now:
            out.append(_event("draining" if now else "undrained", at,
                              f"node {nid} {'is draining' if now else 'takes new objects again'}",
                              node=nid))
    old_leader = (prev.get("leader") or {}).get("id") if prev.get("leader") else None
    new_leader = (cur.get("leader") or {}).get("id") if cur.get("leader") else None
    if old_leader != new_leader:
        out.append(_event("leader", at, f"placement leader: {new_leader or 'none'}",
                          leader=new_leader))
    old_groups = {g["gid"]: g for g in prev["groups"]}
    for g in cur["groups"]:
        o = old_groups.get(g["gid"])
        if o is None:
            continue
        if o["primary"] != g["primary"]:
            out.append(_event("failover", at, f"group {g['gid']}: primary {o['primary']} -> "
                              f"{g['primary']} (epoch {g['epoch']})", group=g["gid"],
                              **{"from": o["primary"], "to": g["primary"]}))
        if o["under_replicated"] != g["under_replicated"]:
            out.append(_event("under_replicated" if g["under_replicated"] else "in_sync", at,
                              f"group {g['gid']}: {g['in_sync']}/{len(g['replicas'])} copies "
                              "in sync", group=g["gid"]))
    was_moving = {m["object_id"] for m in prev.get("moving", [])}
    for m in cur.get("moving", []):
        if m["object_id"] not in was_moving:
            out.append(_event("migration_started", at, f"moving {m['object_id'][:12]}… off "
                              f"{m['node']}", object_id=m["object_id"], node=m["node"]))
    seen = {(m["object_id"], m["at"]) for m in prev.get("recent_moves", [])}
    for m in cur.get("recent_moves", []):
        if (m["object_id"], m["at"]) not in seen:
            verb = "moved" if m["outcome"] == "released" else "move aborted"
            out.append(_event("migration", m["at"], f"{m['binding'] or 'object'} "
                              f"{m['object_id'][:12]}… {verb}: {m['from']} -> {m['to']} "
                              f"(held {m['held_ms']} ms)", move=m))
    return out


class ConsoleFeed:
    """Samples while someone listens and fans the results out (module docstring)."""

    def __init__(self, take: Callable[[], Awaitable[dict[str, Any]]], *, interval: float = 1.0,
                 queue_size: int = 32) -> None:
        self._take = take
        self.interval = interval
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.last: dict[str, Any] | None = None  # the latest snapshot message
        self.samples = 0

    @property
    def listeners(self) -> int:
        return len(self._subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """``async with feed.subscribe() as messages: async for m in messages: ...``"""
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._queue_size)
        if self.last is not None:
            q.put_nowait(self.last)
        self._subscribers.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

        async def messages() -> AsyncIterator[dict[str, Any]]:
            while True:
                m = await q.get()
                if m is None:
                    return
                yield m

        try:
            yield messages()
        finally:
            self._subscribers.discard(q)

    def _publish(self, message: dict[str, Any]) -> None:
        for q in list(self._subscribers):
            try:
                q.put_nowait(message)
            except asyncio.QueueFull:  # a page that does not keep up: drop it (it reconnects)
                self._subscribers.discard(q)
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                q.put_nowait(None)

    async def _run(self) -> None:
        prev: dict[str, Any] | None = None
        while self._subscribers:
            started = time.monotonic()
            try:
                snap = await self._take()
            except Exception as exc:  # etcd away: say so, keep trying
                log.warning("console snapshot failed: %r", exc)
                self._publish({"type": "error", "at": time.time(),
                               "message": f"cannot read the cluster: {exc!r}"})
            else:
                self.samples += 1
                for event in changes(prev, snap):
                    self._publish(event)
                self.last = {"type": "snapshot", "snapshot": snap, "rates": rates(prev, snap)}
                self._publish(self.last)
                prev = snap
            await asyncio.sleep(max(0.05, self.interval - (time.monotonic() - started)))
        self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        self._subscribers.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
