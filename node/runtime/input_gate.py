"""The input gate of an activation: which event may run now.

Events are admitted one at a time in arrival order (a FIFO turnstile). While
``block_concurrency_while`` or a storage transaction holds the gate, no new event is admitted,
and replies to the object's outgoing calls are not handed back to other events either (they wait
for the gate, except in the task that holds it). Storage operations never yield to the event
loop, so nothing can interleave with one. Events DO interleave where a handler awaits other I/O
(a call to another object, a sleep), as in Durable Objects: read-modify-write across such an
await needs ``block_concurrency_while`` or a transaction.

Overload: at most ``max_queued_events`` events may wait at the gate; more answer
``OverloadedError``. Migration: a frozen gate admits nothing (events queue in order) until the
move is released or aborted.

``InputGate`` is a mixin of ``Activation`` (node/runtime/activation.py), which holds the state it
works on (``_holders``, ``_waiters``, ``_admitting``, ``_gate_waiters``, ``_background``,
``frozen``, ``running``, ``state``).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from duro.errors import ObjectResetError, OverloadedError
from duro.node.runtime.state import State

if TYPE_CHECKING:
    from duro.node.runtime.host import ObjectHost

__all__ = ["InputGate", "held_tokens", "retrieve"]

# Gate tokens held by the current task (block_concurrency_while / transaction).
held_tokens: contextvars.ContextVar[tuple[object, ...]] = contextvars.ContextVar(
    "duroheld_tokens", default=()
)


class InputGate:
    """Admission of events (see the module doc); a mixin of ``Activation``."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by Activation
        host: ObjectHost
        state: State
        running: int
        frozen: bool
        _holders: set[object] | None
        _waiters: deque[asyncio.Future[None]] | None
        _admitting: int
        _gate_waiters: list[asyncio.Future[None]] | None
        _background: set[asyncio.Future[Any]] | None

        def _dead_error(self) -> Any: ...
        def reset(self, err: Any) -> None: ...

    # -- gate -------------------------------------------------------------------------------
    @property
    def gate_closed(self) -> bool:
        return bool(self._holders)

    def _block_events(self, *, in_context: bool = True) -> object:
        """Close the gate; the token marks the current task as its holder (unless told not to)."""
        token = object()
        if self._holders is None:
            self._holders = set()
        self._holders.add(token)
        if in_context:
            held_tokens.set(held_tokens.get() + (token,))
        return token

    def _unblock_events(self, token: object) -> None:
        held = held_tokens.get()
        if token in held:
            held_tokens.set(tuple(t for t in held if t is not token))
        if self._holders is not None:
            self._holders.discard(token)
            if not self._holders:
                self._holders = None
                self._open_gate()

    def _open_gate(self) -> None:
        gw, self._gate_waiters = self._gate_waiters, None
        for fut in gw or ():
            if not fut.done():
                fut.set_result(None)
        self._wake_next()

    def _wake_next(self) -> None:
        waiters = self._waiters
        while waiters and self._holders is None and not self.frozen:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if waiters is not None and not waiters:
            self._waiters = None  # an idle object keeps no empty deque (760 bytes each)

    async def admit(self) -> None:
        """Wait for this event's turn at the input gate (FIFO)."""
        if self.state is not State.ACTIVE:
            raise self._dead_error()
        if self._holders is None and not self._waiters and not self.frozen:
            return
        if self._waiters is None:
            self._waiters = deque()
        if len(self._waiters) >= self.host.config.max_queued_events:
            self.host.stats.overloaded += 1
            raise OverloadedError(
                f"object has {len(self._waiters)} events queued; the limit is "
                f"{self.host.config.max_queued_events}"
            )
        front = False
        # Counted from here until this event runs or leaves: between the turn passed to it
        # (its future popped and resolved) and its task resuming, the queue can be empty, and
        # an idle sweep must not evict the object then (the event would find it closed).
        self._admitting += 1
        try:
            await self._wait_turn(front)
        finally:
            self._admitting -= 1

    async def _wait_turn(self, front: bool) -> None:
        while True:
            fut = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = deque()
            if front:
                self._waiters.appendleft(fut)
            else:
                self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_next()  # we were woken but leave: pass the turn on
                raise
            if self.state is not State.ACTIVE:
                raise self._dead_error()
            if self._holders is None and not self.frozen:
                self._wake_next()  # admission is one at a time; let the next one in
                return
            front = True  # the gate closed again before we ran: keep our place

    async def wait_gate_open(self) -> None:
        """Used for replies to outgoing calls: wait unless this task holds the gate."""
        holders = self._holders
        if holders is None or any(t in holders for t in held_tokens.get()):
            return
        fut = asyncio.get_running_loop().create_future()
        if self._gate_waiters is None:
            self._gate_waiters = []
        self._gate_waiters.append(fut)
        await fut

    def block_concurrency_while(self, fn: Callable[[], Awaitable[Any]]) -> asyncio.Task:
        if self.state is not State.ACTIVE:
            raise self._dead_error()
        token = self._block_events(in_context=False)
        ctx = contextvars.copy_context()
        ctx.run(lambda: held_tokens.set(held_tokens.get() + (token,)))
        timeout = self.host.config.block_concurrency_timeout

        async def run() -> Any:
            try:
                async with asyncio.timeout(timeout):  # cheaper than wait_for: no extra task
                    return await _as_awaitable(fn)
            except BaseException as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    err: BaseException = ObjectResetError(
                        f"block_concurrency_while did not finish within {timeout} s; object reset"
                    )
                else:
                    err = exc
                if not isinstance(exc, asyncio.CancelledError):
                    self.reset(
                        ObjectResetError(
                            f"block_concurrency_while raised {type(err).__name__}: {err}; "
                            "object reset",
                            retryable=False,
                        )
                    )
                raise
            finally:
                self._unblock_events(token)

        task = asyncio.get_running_loop().create_task(run(), context=ctx)
        task.add_done_callback(retrieve)
        return task

    def wait_until(self, awaitable: Awaitable[Any]) -> asyncio.Future:
        fut = asyncio.ensure_future(awaitable)
        if self._background is None:
            self._background = set()
        self._background.add(fut)

        def done(f: asyncio.Future) -> None:
            if self._background is not None:
                self._background.discard(f)
            retrieve(f)

        fut.add_done_callback(done)
        return fut

    # -- migration: a frozen gate admits nothing -----------------------------------------------
    def freeze(self) -> None:
        """Admit no more events (they queue in order); running ones finish, replies flow."""
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False
        if self._holders is None:
            self._wake_next()

    def drained(self) -> bool:
        """No admitted event is running and nothing holds the gate or runs in the background."""
        return self.running == 0 and self._holders is None and not self._background


def retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


async def _as_awaitable(fn: Callable[[], Awaitable[Any]]) -> Any:
    res = fn()
    if inspect.isawaitable(res):
        res = await res
    return res
