"""``Testbed``: unit-test durable objects against the real runtime and real RocksDB, in process.

::

    async with Testbed(app="examples/counter", data_dir=tmp_path) as tb:
        stub = tb.env.COUNTER.get_by_name("a")
        assert await stub.increment() == 1
        await tb.evict(stub.id)          # drop it from memory; the next call reactivates it
        await tb.restart()               # as after a crash: every instance gone, RocksDB reopened
        await tb.run_alarm(stub.id)      # fire its alarm now
        assert tb.storage(stub.id) == {"value": 1}

Calls go through the same path as on a node (encode, input gate, output gate, group commit with a
synced WAL unless ``sync_wal=False``); only the network is missing.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator

from duro import _codec
from duro._app import App, load_app
from duro._ids import ObjectId
from duro._namespace import Call, CallKind, Env, Namespace, Stub
from duro.errors import InvalidArgumentError
from duro.node.config import RuntimeConfig
from duro.node.runtime.bodies import fetch_in_process
from duro.node.runtime.host import ObjectHost
from duro.node.storage import layout
from duro.node.storage.engine import StorageEngine

__all__ = ["Testbed"]


class _CurrentHost:
    """Invoker that forwards to the Testbed's host of the moment (survives restart())."""

    __slots__ = ("_tb",)

    def __init__(self, tb: Testbed) -> None:
        self._tb = tb

    async def invoke(self, call: Call) -> bytes:
        return await self._tb._host().invoke(call)

    async def invoke_fetch(self, call: Call, body: AsyncIterator[bytes] | None
                           ) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """A fetch with streamed bodies, in process: the request's chunks reach the object as
        the edge's would, and a streamed response comes back as the node's ``Node.Body`` would
        carry it (chunk by chunk, each after the output gate)."""
        host = self._tb._host()
        return await fetch_in_process(host.invoke, host.bodies, call, body)


class Testbed:
    """An in-process host node for one app."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: str | Path | ModuleType | App,
        data_dir: str | Path | None = None,
        *,
        config: RuntimeConfig | None = None,
        **config_overrides: Any,
    ) -> None:
        self.app = app if isinstance(app, App) else load_app(app)
        self._tmp: tempfile.TemporaryDirectory | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="duro-testbed-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        base = config or RuntimeConfig()
        self.config = dataclasses.replace(base, **config_overrides) if config_overrides else base
        self.engine: StorageEngine | None = None
        self.host: ObjectHost | None = None
        self._env: Env | None = None

    async def __aenter__(self) -> Testbed:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> None:
        self.engine = StorageEngine(self.data_dir / "rocksdb", sync=self.config.sync_wal)
        self.host = ObjectHost(
            self.engine, self.app.bindings, self.config, vars=self.app.vars,
            namespace_class=self.app.namespace_class,
            deleted_classes=self.app.deleted_namespaces(),
        )
        await self.host.start()

    async def close(self) -> None:
        if self.host is not None:
            await self.host.close()
            self.host = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def env(self) -> Env:
        """``env`` as a worker sees it: ``tb.env.COUNTER.get_by_name("x")``.

        Stubs made from it keep working across :meth:`restart` (they call whichever host runs).
        """
        if self._env is None:
            self._env = Env(
                {n: Namespace(n, self.app.namespace_class(b.class_name), _CurrentHost(self))
                 for n, b in self.app.bindings.items()},
                dict(self.app.vars),
            )
        return self._env

    def _host(self) -> ObjectHost:
        if self.host is None:
            raise RuntimeError("Testbed is not started (use `async with Testbed(...)`)")
        return self.host

    def _raw(self, target: Stub | ObjectId | str) -> bytes:
        if isinstance(target, Stub):
            return target.id.raw
        if isinstance(target, ObjectId):
            return target.raw
        if isinstance(target, str) and len(target) == 64:
            return bytes.fromhex(target)
        raise InvalidArgumentError("expected a stub, an ObjectId or a 64-digit hex id")

    def _binding_of(self, oid: bytes, target: Any) -> str:
        if isinstance(target, Stub):
            return target._ns.binding
        act = self._host().activation(oid)
        if act is not None:
            return act.binding
        raw = self._host().engine.get(layout.alarm_key(0, oid))
        if raw is not None:
            return _codec.decode(raw)[1]
        for name, b in self.app.bindings.items():  # the id's tag says which namespace it is in
            try:
                self.env.__dict__[name].id_from_bytes(oid)
                return name
            except InvalidArgumentError:
                continue
        raise InvalidArgumentError("no binding of this app owns that id")

    async def run_alarm(self, target: Stub | ObjectId | str) -> bool:
        """Fire the object's alarm now, whatever its time. Returns whether ``alarm()`` ran."""
        host = self._host()
        oid = self._raw(target)
        binding = self._binding_of(oid, target)
        return bool(_codec.decode(await host.invoke(
            Call(binding=binding, object_id=oid, kind=CallKind.ALARM, meta={"force": True})
        )))

    async def evict(self, target: Stub | ObjectId | str) -> bool:
        """Drop the object from memory (after its pending writes are durable)."""
        host = self._host()
        oid = self._raw(target)
        act = host.activation(oid)
        if act is None:
            return False
        await act.storage.sync()
        return host.evict(oid)

    async def restart(self) -> None:
        """Drop every instance and reopen RocksDB, as after a process crash.

        Writes whose output gate had opened are on disk and survive; nothing else is kept.
        """
        await self._host().crash()
        self.host = None
        assert self.engine is not None
        self.engine.close()
        self.engine = None
        await self.start()

    def storage(self, target: Stub | ObjectId | str) -> dict[str, Any]:
        """The object's durable keys and values (what is on disk now), in key order."""
        host = self._host()
        oid = self._raw(target)
        prefix = layout.data_prefix(0, oid)
        return {
            layout.user_key(k): _codec.decode(v)
            for k, v in host.engine.scan(prefix, layout.prefix_end(prefix))
        }

    def alarm(self, target: Stub | ObjectId | str) -> float | None:
        """The object's durable alarm time (seconds), or None."""
        raw = self._host().engine.get(layout.alarm_key(0, self._raw(target)))
        return None if raw is None else _codec.decode(raw)[0] / 1000.0
