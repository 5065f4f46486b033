"""One live instance of one object: its construction, event delivery and output gate,
eviction and reset.

The activation is put together from modules that each do one job:

* ``input_gate.InputGate``: admission, one event at a time in arrival order, while
  ``block_concurrency_while`` or a transaction holds the gate; the overload bound; the freeze a
  migration holds it in (docs/runtime.md);
* ``alarm_policy.AlarmPolicy``: running a due alarm, its retries and back-off;
* this module: the instance (constructor, methods, ``fetch``, WebSocket handlers: dispatch, with
  the arguments checked against the method's signature), the output gate, eviction and reset,
  and the hooks the object's storage calls.

Output gate
    A reply (result or error), and every outgoing call, waits until every storage write the object
    made before it is durable. If a write fails, the waiting replies become ``ObjectResetError``:
    a caller never sees an acknowledgement of a write that was lost.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

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
    UnavailableError,
)
from duro.node.runtime.context import ObjectContext
from duro.node.storage.object_storage import ObjectStorage

if TYPE_CHECKING:
    from duro.node.runtime.host import ObjectHost

from duro.node.runtime.alarm_policy import AlarmPolicy
from duro.node.runtime.grant import Grant
from duro.node.runtime.input_gate import InputGate, retrieve
from duro.node.runtime.state import State

__all__ = ["Activation", "State", "current_activation"]

log = logging.getLogger("duro.node.runtime")

# The activation whose event the current task is running (set per event; copied into child tasks).
current_activation: contextvars.ContextVar[Activation | None] = contextvars.ContextVar(
    "duro_current_activation", default=None
)


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


class Activation(InputGate, AlarmPolicy):
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
        "name",
        "__weakref__",
    )

    def __init__(self, host: ObjectHost, oid: bytes, binding: str, grant: Grant = Grant(),
                 name: str | None = None) -> None:
        self.host = host
        self.oid = oid
        self.binding = binding
        self.name = name  # ctx.id.name: checked against the id by the host before it is set
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
        try:
            result = method(*args, **kwargs)
        except TypeError:
            _check_arguments(method, call.method, args, kwargs)
            raise  # the arguments fit: the method's own code raised it
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
            limit = self.host.sockets.event_timeout(self.oid)  # ctx.set_hibernatable_...
            if limit is None:
                await res
                return None
            timeout = asyncio.timeout(limit / 1000)
            try:
                async with timeout:
                    await res
            except TimeoutError:
                if not timeout.expired():
                    raise  # the handler's own TimeoutError
                raise ObjectError(
                    f"web_socket_{kind} ran longer than the object's WebSocket event timeout "
                    f"({limit} ms) and was cancelled", remote_type="TimeoutError") from None
        return None

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
                retrieve(fut)
        gw, self._gate_waiters = self._gate_waiters, None
        for fut in gw or ():
            if not fut.done():
                fut.set_exception(err)
                retrieve(fut)
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


def _check_arguments(method: Callable[..., Any], name: str, args: list, kwargs: dict) -> None:
    """After ``method(*args, **kwargs)`` raised a TypeError: if the arguments do not fit the
    method's signature, raise :class:`InvalidArgumentError` naming the parameter; else return
    (the TypeError came from inside the method and stays the object's own error).

    Checked only once a call failed with a TypeError, so a call that fits costs nothing more.
    Binding the arguments is what Python does before running any line of the method, so a
    TypeError raised by binding is never the method's own."""
    try:
        sig = inspect.signature(method)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as bad:
        owner = type(getattr(method, "__self__", None)).__name__
        empty = inspect.Parameter.empty
        shown = sig.replace(return_annotation=empty, parameters=[
            p.replace(annotation=empty) for p in sig.parameters.values()])
        raise InvalidArgumentError(
            f"{owner}.{name}{shown}: wrong arguments: {bad}") from None
