"""One live instance of one object: its input gate, output gate and event delivery.

Input gate
    Events are admitted one at a time in arrival order (a FIFO turnstile). While
    ``block_concurrency_while`` or a storage transaction holds the gate, no new event is admitted,
    and replies to the object's outgoing calls are not handed back to other events either (they
    wait for the gate, except in the task that holds it). Storage operations never yield to the
    event loop, so nothing can interleave with one. Events DO interleave where a handler awaits
    other I/O (a call to another object, a sleep), as in Durable Objects: read-modify-write across
    such an await needs ``block_concurrency_while`` or a transaction.

Output gate
    A reply (result or error), and every outgoing call, waits until every storage write the object
    made before it is durable. If a write fails, the waiting replies become ``ObjectResetError``:
    a caller never sees an acknowledgement of a write that was lost.

Overload
    At most ``max_queued_events`` events may wait at the gate; more answer ``OverloadedError``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections import deque
from enum import Enum
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from duro import _codec
from duro._body import COLLECTED_BODY_LIMIT
from duro._http import Request, Response
from duro._methods import bind
from duro._namespace import Call, CallKind
from duro.errors import (
    DuroError,
    FencedError,
    InvalidArgumentError,
    MethodNotFoundError,
    ObjectError,
    ObjectResetError,
    OverloadedError,
    UnavailableError,
)
from duro.node.runtime.context import AlarmInfo, ObjectContext
from duro.node.storage.object_storage import ObjectStorage, now_ms

if TYPE_CHECKING:
    from duro.node.runtime.host import ObjectHost

from duro.node.runtime.grant import Grant

__all__ = ["Activation", "State", "current_activation"]

log = logging.getLogger("duro.node.runtime")

# The activation whose event the current task is running (set per event; copied into child tasks).
current_activation: contextvars.ContextVar[Activation | None] = contextvars.ContextVar(
    "duro_current_activation", default=None
)
# Gate tokens held by the current task (block_concurrency_while / transaction).
_held_tokens: contextvars.ContextVar[tuple[object, ...]] = contextvars.ContextVar(
    "duro_held_tokens", default=()
)

ALARM_MAX_RETRIES = 6
ALARM_BACKOFF_S = 2.0


class State(Enum):
    ACTIVE = "active"
    BROKEN = "broken"  # reset: every event fails; the host has forgotten this instance
    CLOSED = "closed"  # evicted or shut down cleanly


class _Evicted:
    """Stands in for an evicted activation in the context and storage it leaves behind."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        raise UnavailableError(
            "this object was evicted from memory (it was idle); its ctx and storage can no "
            "longer be used: a task that outlived its event? (use ctx.wait_until)")

    def __repr__(self) -> str:
        return "<evicted activation>"


EVICTED: Any = _Evicted()


class Activation:
    __slots__ = (
        "host",
        "oid",
        "binding",
        "epoch",
        "gid",
        "group_epoch",
        "instance",
        "ctx",
        "storage",
        "state",
        "error",
        "running",
        "last_used",
        "_holders",
        "_waiters",
        "_admitting",
        "_gate_waiters",
        "_background",
        "frozen",
        "regions",
        "__weakref__",
    )

    def __init__(self, host: ObjectHost, oid: bytes, binding: str, grant: Grant = Grant()) -> None:
        self.host = host
        self.oid = oid
        self.binding = binding
        self.epoch = grant.epoch  # the object's directory epoch
        self.gid = grant.gid  # its replica group, and that group's epoch (primary term)
        self.group_epoch = grant.group_epoch
        self.instance: Any = None
        hub = host.sockets
        self.ctx = ObjectContext(self) if hub is None else hub.make_context(self)
        cfg = host.config
        self.storage = ObjectStorage(
            oid, binding, host.engine, host.committer, self, cfg.max_value_bytes, self.gid,
            max_storage_bytes=cfg.max_storage_bytes, max_list_bytes=cfg.max_list_bytes,
        )
        self.state = State.ACTIVE
        self.error: DuroError | None = None
        self.running = 0
        self._admitting = 0  # events between the queue and running (see admit)
        self.last_used = time.monotonic()
        self._holders: set[object] | None = None  # gate tokens; gate closed while non-empty
        self._waiters: deque[asyncio.Future] | None = None  # events waiting for admission
        self._gate_waiters: list[asyncio.Future] | None = None  # replies waiting for the gate
        self._background: set[asyncio.Future] | None = None  # wait_until
        self.frozen = False  # admission held by a migration (replies still flow)
        self.regions: dict[str, float] | None = None  # decayed calls by caller region

    # -- construction -----------------------------------------------------------------------
    def construct(self, cls: type, env: Any) -> None:
        token = current_activation.set(self)
        try:
            self.instance = cls(self.ctx, env)
        except Exception as exc:
            self.state = State.BROKEN
            raise ObjectResetError(
                f"{cls.__name__} constructor raised {type(exc).__name__}: {exc}", retryable=False
            ) from exc
        finally:
            current_activation.reset(token)

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
            _held_tokens.set(_held_tokens.get() + (token,))
        return token

    def _unblock_events(self, token: object) -> None:
        held = _held_tokens.get()
        if token in held:
            _held_tokens.set(tuple(t for t in held if t is not token))
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
        if holders is None or any(t in holders for t in _held_tokens.get()):
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
        ctx.run(lambda: _held_tokens.set(_held_tokens.get() + (token,)))
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
        task.add_done_callback(_retrieve)
        return task

    def wait_until(self, awaitable: Awaitable[Any]) -> asyncio.Future:
        fut = asyncio.ensure_future(awaitable)
        if self._background is None:
            self._background = set()
        self._background.add(fut)

        def done(f: asyncio.Future) -> None:
            if self._background is not None:
                self._background.discard(f)
            _retrieve(f)

        fut.add_done_callback(done)
        return fut

    # -- delivering events ------------------------------------------------------------------
    async def deliver(self, call: Call) -> bytes:
        await self.admit()
        if call.meta:
            admitted = call.meta.get("admitted")  # a WebSocket event: the socket's next may go on
            if admitted is not None and not admitted.done():
                admitted.set_result(None)
        self.running += 1
        token = current_activation.set(self)
        out: bytes | None = None
        err: BaseException | None = None
        try:
            kind = call.kind
            ws_event = call.meta.get("ws") if call.meta else None
            if ws_event is not None:  # a client WebSocket event (duro.node.runtime.websockets)
                out = _codec.encode(await self._ws_event(*ws_event))
            elif kind == CallKind.RPC:
                out = _codec.encode(await self._rpc(call))
            elif kind == CallKind.FETCH:
                resp = await self._fetch(call)
                out = resp.to_wire() if not resp.streamed else await self._streamed(resp, call)
            elif kind == CallKind.ALARM:
                out = _codec.encode(await self.run_alarm(force=bool(call.meta.get("force"))))
            else:
                raise InvalidArgumentError(f"unknown call kind {kind!r}")
        except DuroError as exc:
            err = exc
        except Exception as exc:  # the object's own exception
            log.debug("object raised %r", exc, extra=self._log_ctx())
            err = ObjectError(str(exc), remote_type=type(exc).__name__)
        finally:
            current_activation.reset(token)
            self.running -= 1
            self.last_used = time.monotonic()
        # Output gate: nothing leaves before the writes made before it are durable.
        gate = self.storage.output_gate()
        if gate is not None:
            await gate
        if self.state is State.BROKEN:
            raise self._dead_error()
        if err is not None:
            raise err
        assert out is not None
        return out

    async def _rpc(self, call: Call) -> Any:
        method = bind(self.instance, call.method)  # the callable-method rule: duro._methods
        try:
            args, kwargs = _codec.decode(call.payload)
        except Exception:
            raise InvalidArgumentError("RPC payload is not msgpack [args, kwargs]") from None
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(
            isinstance(k, str) for k in kwargs
        ):
            raise InvalidArgumentError("RPC payload is not msgpack [args, kwargs]")
        result = method(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _fetch(self, call: Call) -> Response:
        handler = getattr(self.instance, "fetch", None)
        if handler is None:
            raise MethodNotFoundError(f"{type(self.instance).__name__} has no fetch handler")
        try:
            request = Request.from_wire(call.payload)
        except Exception:
            raise InvalidArgumentError("FETCH payload is not an encoded request") from None
        if call.meta and "body" in call.meta:  # streamed from the caller (node/body_server.py)
            request._set_body(call.meta["body"])
        hub = self.host.sockets
        if hub is not None:
            hub.bind_request(self, request)  # an upgrade from an edge gets web_socket_pair()
        resp = handler(request)
        if inspect.isawaitable(resp):
            resp = await resp
        if not isinstance(resp, Response):
            raise ObjectError(
                f"fetch must return a duro.Response, got {type(resp).__name__}",
                remote_type="TypeError",
            )
        if resp.status == 101 and not getattr(resp.web_socket, "_rec", None):
            raise ObjectError(
                "fetch returned 101 without a WebSocket: pass web_socket=ws after "
                "ctx.accept_web_socket(ws)", remote_type="TypeError",
            )
        if resp.status == 101 and not resp.web_socket._rec.accepted:
            raise ObjectError(
                "fetch returned 101 with a WebSocket that was not accepted: call "
                "ctx.accept_web_socket(ws) first", remote_type="TypeError",
            )
        return resp

    async def _streamed(self, resp: Response, call: Call) -> bytes:
        """The head of a streamed response, its body held for the caller (node/runtime/bodies.py);
        or, for a caller that cannot pull a body, the whole response collected."""
        if call.stream_response:
            return resp.to_wire(self.host.bodies.hold(self, resp.__aiter__()))
        await resp.read(COLLECTED_BODY_LIMIT)
        return resp.to_wire()

    async def _ws_event(self, kind: str, ws: Any, args: tuple) -> None:
        handler = getattr(self.instance, "web_socket_" + kind, None)
        if handler is None:
            return None
        res = handler(ws, *args)
        if inspect.isawaitable(res):
            await res
        return None

    async def run_alarm(self, force: bool = False) -> bool:
        """Run ``alarm(info)`` if the stored alarm is due (or ``force``). Returns whether it ran."""
        st = self.storage
        if st._alarm_firing is not None:
            return False  # already running (a duplicate wake-up)
        rec = st._alarm_record()
        now = now_ms()
        if rec is None or (rec[0] > now + 5 and not force):
            return False  # deleted or moved later since it was scheduled
        when, _binding, retry = rec
        version = st._alarm_version
        handler = getattr(self.instance, "alarm", None)
        st._alarm_firing = when
        try:
            if handler is not None:
                res = handler(AlarmInfo(retry_count=retry, is_retry=retry > 0))
                if inspect.isawaitable(res):
                    await res
        except Exception as exc:
            if st._error is None and st._alarm_version == version:
                if retry < ALARM_MAX_RETRIES:
                    delay = ALARM_BACKOFF_S * (2**retry)
                    st._write_alarm_internal(now_ms() + int(delay * 1000), retry + 1)
                    log.warning("alarm raised %r; retry %s in %.0f s", exc, retry + 1, delay,
                                extra=self._log_ctx())
                else:
                    st._write_alarm_internal(None)
                    log.error("alarm raised %r; gave up after %s retries", exc, retry,
                              extra=self._log_ctx())
            raise
        else:
            if st._error is None and st._alarm_version == version:
                st._write_alarm_internal(None)
        finally:
            st._alarm_firing = None
        return True

    # -- migration --------------------------------------------------------------------------
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

    # -- eviction and reset -----------------------------------------------------------------
    def is_idle(self) -> bool:
        return (
            self.running == 0
            and not self._waiters
            and not self._admitting
            and self._holders is None
            and not self._background
            and not self.storage.has_unflushed()
        )

    def close(self) -> None:
        """Evicted: forget the instance (only when idle).

        The context and the storage point back at their activation (``ctx._act``,
        ``storage._owner``): a reference cycle, which only the cyclic collector would free, and a
        node runs it rarely (``gc_threshold``), so every evicted object stayed in memory until
        then and RSS grew over activate/evict cycles (issue 12). Once nothing can run, those
        back-references point at a stand-in instead, and reference counting frees the
        activation, its context and its storage at once. A task that outlived its event and
        touches them later gets a clear error.
        """
        self.state = State.CLOSED
        self.instance = None
        if self.running == 0 and not self.storage.has_unflushed():
            self.ctx._act = EVICTED  # type: ignore[assignment]
            self.storage._owner = EVICTED  # type: ignore[assignment]

    def reset(self, err: DuroError) -> None:
        """Drop this instance; every waiting event fails with ``err``."""
        if self.state is State.BROKEN:
            return
        self.state = State.BROKEN
        self.error = err
        self.instance = None
        self.host._forget(self)
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_exception(err)
                _retrieve(fut)
        gw, self._gate_waiters = self._gate_waiters, None
        for fut in gw or ():
            if not fut.done():
                fut.set_exception(err)
                _retrieve(fut)
        log.info("object reset: %s", err, extra=self._log_ctx())

    def reset_by_user(self, reason: str) -> None:
        self.reset(ObjectResetError(f"object aborted: {reason}"))

    def _dead_error(self) -> DuroError:
        if self.error is not None:
            return self.error
        return ObjectResetError("object instance is gone (evicted or reset); call again")

    def _log_ctx(self) -> dict[str, str]:
        """Context fields for log records about this object (see duro._log)."""
        return {"object_id": self.oid.hex(), "binding": self.binding}

    # -- storage owner hooks ----------------------------------------------------------------
    def _check_fence(self) -> None:
        own = self.host.ownership
        if own is not None and not own.still_owner(self.oid, self.grant):
            raise FencedError(
                f"node no longer owns object {self.oid.hex()} (epoch {self.epoch}, group "
                f"{self.gid} epoch {self.group_epoch}); write refused"
            )

    @property
    def grant(self) -> Grant:
        return Grant(self.epoch, self.gid, self.group_epoch)

    def _on_storage_failed(self, exc: DuroError) -> None:
        self.host.stats.storage_failures += 1
        self.reset(exc if exc.retryable else ObjectResetError(f"storage failed: {exc}"))

    def _on_alarm_committed(self, when_ms: int | None) -> None:
        if when_ms is not None:
            self.host.alarms.schedule(self.oid, self.binding, when_ms, self.gid)


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


async def _as_awaitable(fn: Callable[[], Awaitable[Any]]) -> Any:
    res = fn()
    if inspect.isawaitable(res):
        res = await res
    return res
