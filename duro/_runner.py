"""Run a process's main coroutine on uvloop (asyncio's loop where uvloop is missing)."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

__all__ = ["run"]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)
