"""Namespaces, stubs and the call they make.

A :class:`Namespace` (``env.COUNTER``) makes ids and stubs. A :class:`Stub` turns method calls into
:class:`Call` values and hands them to an :class:`Invoker`, the one seam between the object API and
a transport: the node's ``ObjectHost`` in process, or ``duro.client.Router`` across the network.

Arguments and results always cross the seam encoded (msgpack), in process too, so an object never
shares a mutable value with its caller and an unencodable argument fails the same way everywhere.

A stub method call starts at once (it returns a running task, like a JavaScript promise), so calls
made on one stub are submitted in the order they were made. After a failure of the runtime (an error
flagged ``retryable`` or ``overloaded``: the instance was reset, the node is unreachable...) the stub
is broken: later calls raise :class:`~duro.errors.BrokenStubError` naming the first error; make a new
stub to retry. The object's own exceptions and refused arguments do not break it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from duro import _codec
from duro._body import COLLECTED_BODY_LIMIT
from duro._http import HeadersInit, Request, Response
from duro._ids import ObjectId, namespace_key
from duro._methods import is_public_name
from duro.errors import BrokenStubError, DuroError, InvalidArgumentError, MethodNotFoundError

__all__ = ["Call", "CallKind", "Invoker", "Namespace", "Stub", "Env", "env_bindings"]


class CallKind(IntEnum):
    RPC = 0
    FETCH = 1
    ALARM = 2


@dataclass(slots=True)
class Call:
    """One event addressed to one object.

    ``payload`` is msgpack ``[args, kwargs]`` for RPC, :meth:`Request.to_wire` for FETCH, and
    ``[retry_count]`` for ALARM.
    """

    binding: str
    object_id: bytes
    kind: CallKind
    method: str = ""
    payload: bytes = b""
    caller_region: str = ""
    location_hint: str | None = None
    epoch: int = 0
    hops: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    #: the name the id was derived from (``id_from_name``), when the caller knows it: the
    #: object's ``ctx.id.name``; None for a unique id or an unknown name
    name: str | None = None
    # FETCH: the caller takes a streamed response body (pulled with Node.Body, or in process),
    # else the node collects such a body into its answer.
    stream_response: bool = False


class Invoker(Protocol):
    """Delivers calls. An invoker that streams HTTP bodies also has ``invoke_fetch(call, body)``
    (``body``: the request's chunks or None) answering ``(encoded response, body chunks or
    None)``; ``Stub.fetch`` uses it when present, else bodies travel whole."""

    async def invoke(self, call: Call) -> bytes:
        """Deliver ``call`` to its object; return the encoded result or raise a DuroError."""


def is_public_method(name: str) -> bool:
    """Whether ``name`` could name an RPC method (the name part of ``duro._methods``' rule)."""
    return is_public_name(name)


class Stub:
    """A handle on one object. ``await stub.method(*args)``, ``await stub.fetch(url)``."""

    __slots__ = ("_ns", "id", "_broken")

    def __init__(self, namespace: Namespace, object_id: ObjectId) -> None:
        self._ns = namespace
        self.id = object_id
        self._broken: DuroError | None = None

    @property
    def name(self) -> str | None:
        return self.id.name

    def _submit(self, kind: CallKind, method: str, payload: bytes, send: Any = None
                ) -> asyncio.Task:
        if self._broken is not None:
            err = self._broken

            async def broken() -> Any:
                raise BrokenStubError(f"stub is broken by an earlier error: {err}") from err

            return asyncio.ensure_future(broken())
        call = Call(
            binding=self._ns.binding,
            object_id=self.id.raw,
            kind=kind,
            method=method,
            payload=payload,
            caller_region=self._ns.caller_region,
            location_hint=self.id.location_hint,
            name=self.id.name,
        )
        return asyncio.ensure_future(self._run(call, send))

    async def _run(self, call: Call, send: Any = None) -> Any:
        try:
            if send is not None:
                return await send(call)
            return await self._ns.invoker.invoke(call)
        except DuroError as err:
            # Only failures of the runtime (retryable or overloaded) break the stub; the
            # object's own exceptions and refused arguments do not.
            if err.retryable or err.overloaded:
                self._broken = err
            raise

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> asyncio.Future:
        """Call a public method by name (what ``stub.<method>(...)`` does)."""
        if not isinstance(method, str):
            raise InvalidArgumentError(f"a method name is a str, not {type(method).__name__}")
        if not is_public_method(method):
            raise MethodNotFoundError(
                f"{method!r} cannot be called through a stub: names starting with '_' and the "
                f"runtime's handlers (fetch, alarm, web_socket_*) are not RPC methods"
            )
        payload = _codec.encode([list(args), kwargs])
        task = self._submit(CallKind.RPC, method, payload)
        return _decoded(task, _codec.decode)

    def fetch(
        self,
        input: str | Request,
        *,
        method: str = "GET",
        headers: HeadersInit = None,
        body: str | bytes | None = None,
    ) -> asyncio.Future:
        req = input if isinstance(input, Request) else Request(
            input, method=method, headers=headers, body=body
        )
        invoke_fetch = getattr(self._ns.invoker, "invoke_fetch", None)
        if invoke_fetch is None:  # an invoker that carries bodies whole (between objects)
            return _decoded(self._submit_fetch(req, None), Response.from_wire)
        stream = req.__aiter__() if req.streamed else None
        task = self._submit_fetch(req, lambda call: invoke_fetch(call, stream))
        return _decoded(task, lambda answer: Response.from_wire(*answer))

    def _submit_fetch(self, req: Request, send: Any) -> asyncio.Task:
        if send is None and req.streamed:
            async def collected(call: Call) -> bytes:  # read the stream first, then send whole
                call.payload = Request(req.url, method=req.method, headers=req.headers,
                                       body=await req.read(COLLECTED_BODY_LIMIT)).to_wire()
                return await self._ns.invoker.invoke(call)

            send = collected
        return self._submit(CallKind.FETCH, "", req.to_wire(), send)

    def __getattr__(self, name: str) -> Any:
        if not is_public_method(name):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> asyncio.Future:
            return self.call(name, *args, **kwargs)

        method.__name__ = name
        return method

    def __repr__(self) -> str:
        return f"<Stub {self._ns.binding} {self.id!r}>"


def _decoded(task: asyncio.Future, decode: Any) -> asyncio.Future:
    async def run() -> Any:
        return decode(await task)

    return asyncio.ensure_future(run())


class Namespace:
    """``env.<BINDING>``: ids and stubs for one class."""

    __slots__ = ("binding", "class_name", "invoker", "caller_region", "_key")

    def __init__(
        self, binding: str, class_name: str, invoker: Invoker, caller_region: str = ""
    ) -> None:
        self.binding = binding
        self.class_name = class_name
        self.invoker = invoker
        self.caller_region = caller_region
        self._key = namespace_key(class_name)

    def id_from_name(self, name: str) -> ObjectId:
        return ObjectId.from_name(self._key, name)

    def new_unique_id(self, location_hint: str | None = None) -> ObjectId:
        return ObjectId.unique(self._key, location_hint)

    def id_from_string(self, text: str) -> ObjectId:
        return ObjectId.from_string(self._key, text)

    def id_from_bytes(self, raw: bytes) -> ObjectId:
        return ObjectId.from_bytes(self._key, raw)

    def get(self, object_id: ObjectId, *, location_hint: str | None = None) -> Stub:
        if not isinstance(object_id, ObjectId):
            raise InvalidArgumentError(
                f"get() takes an ObjectId (from id_from_name/new_unique_id/id_from_string), "
                f"not {type(object_id).__name__}"
            )
        # Re-check the tag: an id made by another namespace must not address this one.
        checked = ObjectId.from_bytes(self._key, object_id.raw)
        checked.name = object_id.name
        checked.location_hint = location_hint or object_id.location_hint
        return Stub(self, checked)

    def get_by_name(self, name: str, *, location_hint: str | None = None) -> Stub:
        return self.get(self.id_from_name(name), location_hint=location_hint)

    def __repr__(self) -> str:
        return f"<Namespace {self.binding} class={self.class_name}>"


class Env:
    """The ``env`` given to objects and workers: one attribute per binding, plus ``[vars]``."""

    def __init__(self, bindings: dict[str, Namespace], vars: dict[str, Any] | None = None) -> None:
        self.__dict__.update(vars or {})
        self.__dict__.update(bindings)
        self._bindings = bindings

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"env has no binding or var {name!r}")

    def __repr__(self) -> str:
        return f"<Env bindings={sorted(self._bindings)}>"


def env_bindings(env: Env) -> Mapping[str, Namespace]:
    """The namespaces of ``env`` by binding name (its vars left out). A function, not an
    attribute of ``Env``: every attribute name there is the user's (a binding or a var)."""
    return env._bindings
