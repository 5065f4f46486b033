"""Spans of the group commit (used by ``commit.py`` only while ``duro._tracing`` is on).

One commit carries the writes of many calls, so it cannot be the child of each of them: its span
``storage commit`` is the child of the first traced call that made a write in it and **links** to
the other calls' spans. It lasts from the cut until the commit is complete (the local write
returned and every group it touched has its acknowledgements: what opens the output gates).
Each replicated group of the commit has a child span ``replication ship`` from the moment its
batch is shipped until the followers it needs have acknowledged it durable. A commit none of
whose writes came from a traced call (alarms, a migration's ingest) makes no span.
"""

from __future__ import annotations

import asyncio
from typing import Any

from duro import _tracing

__all__ = ["current", "start_commit", "end_commit"]


def current() -> Any:
    """The caller's context (its current span), kept until its writes are cut."""
    from opentelemetry import context

    return context.get_current()


def start_commit(commit: Any, contexts: list[Any]) -> None:
    """Open the spans of a commit just cut (``commit.span`` and one per replicated group)."""
    from opentelemetry import trace
    from opentelemetry.trace import Link

    tracer = _tracing.tracer
    assert tracer is not None
    parents = []
    seen = set()
    for ctx in contexts:
        sc = trace.get_current_span(ctx).get_span_context()
        if sc.is_valid and sc.span_id not in seen:
            seen.add(sc.span_id)
            parents.append((ctx, sc))
    if not parents:
        return
    commit.span = span = tracer.start_span(
        "storage commit", context=parents[0][0],
        links=[Link(sc) for _ctx, sc in parents[1:]],
        attributes={"duro.commit.objects": len(commit.taken),
                    "duro.commit.writes": commit.n_writes,
                    "duro.commit.groups": sorted(commit.groups)})
    inside = trace.set_span_in_context(span)
    for gid, fut in commit.groups.items():
        ship = tracer.start_span("replication ship", context=inside,
                                 attributes={"duro.group": gid})
        fut.add_done_callback(lambda f, s=ship: _end(s, _failure(f)))


def end_commit(commit: Any, failure: BaseException | None) -> None:
    _end(commit.span, failure)
    commit.span = None


def _failure(fut: asyncio.Future[None]) -> BaseException | None:
    if fut.cancelled():
        return asyncio.CancelledError()
    return fut.exception()


def _end(span: Any, failure: BaseException | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    if failure is not None:
        span.record_exception(failure)
        span.set_status(Status(StatusCode.ERROR, str(failure)))
    span.end()
