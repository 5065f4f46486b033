"""Group commits held back on purpose: the window between a reply and its commit made wide, so
that a reply released before its commit is caught (by the clock, or by a SIGKILL)."""

from __future__ import annotations

import asyncio

from duro.node.storage.commit import GroupCommitter


def delay_commits(committer: GroupCommitter, delay: float) -> None:
    """Flush ``delay`` seconds after an object first becomes dirty, instead of at the end of the
    loop turn (``GroupCommitter.mark_dirty``)."""

    def mark_dirty(storage):  # noqa: ANN001, ANN202
        committer._dirty.append(storage)
        if not committer._scheduled:
            committer._scheduled = True
            asyncio.get_running_loop().call_later(delay, committer.flush)

    committer.mark_dirty = mark_dirty  # type: ignore[method-assign]
