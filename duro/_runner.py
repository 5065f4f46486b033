"""Run a process's main coroutine on uvloop (asyncio's loop where uvloop is missing), and stop it
gracefully on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Coroutine

__all__ = ["run", "stop_on_signals"]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """``stop`` (a new event if None), set on SIGTERM or SIGINT. Outside the main thread, where
    signal handlers cannot be installed, only whoever holds it sets it."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    return stop
