"""Cloudflare-fidelity options through a real node: the runtime and RocksDB behind a real gRPC
server on 127.0.0.1, called with ``duro.client`` (docs/runtime.md, "Storage options").

The node runs in this process so that its group commits can be held back on purpose
(tests/helpers/commits.py) and its RocksDB looked at directly: an ``allow_unconfirmed`` reply
must arrive while its write is provably not on disk yet.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import duro.client
from duro import _codec
from duro._app import load_app
from duro._namespace import Call, CallKind
from duro.errors import InvalidArgumentError, InvalidIdError, ObjectError
from duro.node.config import RuntimeConfig
from duro.node.runtime.host import ObjectHost
from duro.node.server import NodeGrpcServer
from duro.node.storage import layout
from duro.node.storage.engine import StorageEngine
from tests.helpers.commits import delay_commits

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("plaintext")]

APP = Path(__file__).resolve().parents[1] / "edge" / "fidelity"
HOLD = 1.5  # seconds a group commit is held back


@pytest.fixture
async def node(tmp_path):
    app = load_app(APP)
    engine = StorageEngine(tmp_path / "rocksdb")
    host = ObjectHost(engine, app.bindings, RuntimeConfig(), vars=app.vars,
                      namespace_class=app.namespace_class)
    await host.start()
    server = NodeGrpcServer(host, "127.0.0.1:0")
    await server.start()
    async with duro.client.connect(node=server.address, app=app) as client:
        yield host, client
    await server.stop(grace=1.0)
    await host.close()
    engine.close()


def stored(host: ObjectHost, stub, key: str):  # noqa: ANN001, ANN201
    """The value of ``key`` in RocksDB itself (not the object's pending writes), or None."""
    raw = host.engine.get(layout.data_key(0, stub.id.raw, key.encode()))
    return None if raw is None else _codec.decode(raw)


async def test_allow_unconfirmed_replies_before_its_write_is_durable(node):
    host, client = node
    stub = client.namespace("PROBE").get_by_name("unconfirmed")
    await stub.whoami()  # activated: the timings below are the writes' alone
    delay_commits(host.committer, HOLD)

    t0 = time.monotonic()
    assert await stub.put("a", 1, True) == "put"
    assert time.monotonic() - t0 < HOLD / 2  # replied while the commit is held ...
    assert stored(host, stub, "a") is None  # ... and before the write reached RocksDB
    assert await stub.put("a", 2, True) == "put"
    assert stored(host, stub, "a") is None

    # A confirmed write after them waits for the held commit, which carries all three in order.
    t0 = time.monotonic()
    assert await stub.put("b", 3) == "put"
    assert time.monotonic() - t0 > HOLD / 3
    assert stored(host, stub, "a") == 2
    assert stored(host, stub, "b") == 3


async def test_an_unconfirmed_write_alone_is_still_committed(node):
    host, client = node
    stub = client.namespace("PROBE").get_by_name("alone")
    delay_commits(host.committer, 0.3)
    await stub.put("k", "v", True)
    assert stored(host, stub, "k") is None
    deadline = time.monotonic() + 10
    while stored(host, stub, "k") is None:  # committed by the held flush, unasked
        assert time.monotonic() < deadline, "the unconfirmed write never reached RocksDB"
        await asyncio.sleep(0.05)
    assert stored(host, stub, "k") == "v"
    assert await stub.get("k") == "v"


async def test_allow_concurrency_lets_other_events_run_during_a_long_list(node):
    _host, client = node
    stub = client.namespace("PROBE").get_by_name("lister")
    await stub.fill(60_000)  # a list() of it takes many 5 ms slices

    # Made in one loop turn: one batch, admitted in order; the mark arrives while list() reads.
    listing, mark = stub.scan(False), stub.mark("during-gated")
    assert await listing == 60_000
    await mark
    assert await stub.events() == ["list-start", "list-end", "during-gated"]

    listing, mark = stub.scan(True), stub.mark("during-open")
    assert await listing == 60_000  # the same result
    await mark
    assert (await stub.events())[3:] == ["list-start", "during-open", "list-end"]


async def test_no_cache_reads_leave_the_block_cache_alone(node):
    host, client = node
    stub = client.namespace("PROBE").get_by_name("uncached")
    await stub.fill(20_000, 100)  # confirmed: durable when it answers
    db = host.engine.db
    db.flush()  # into SST files: reads now go through the block cache

    def cache_bytes() -> int:
        return db.property_int_value("rocksdb.block-cache-usage")

    before = cache_bytes()
    assert await stub.read_range(20_000, True) == 128 + 20_000
    assert await stub.get("k0000001", True) == "x" * 100
    assert cache_bytes() - before < 64 * 1024  # at most a few index blocks
    assert await stub.read_range(20_000, False) == 128 + 20_000
    assert cache_bytes() - before > 1024 * 1024  # the same reads, cached: megabytes


async def test_wrong_arguments_answer_invalid_argument_naming_the_parameter(node):
    _host, client = node
    stub = client.namespace("PROBE").get_by_name("args")
    with pytest.raises(InvalidArgumentError, match="missing a required argument: 'a'"):
        await stub.add()
    with pytest.raises(InvalidArgumentError, match="unexpected keyword argument 'c'"):
        await stub.add(1, c=2)
    with pytest.raises(InvalidArgumentError,
                       match=r"Probe\.add\(a, b=0\): wrong arguments: too many"):
        await stub.add(1, 2, 3)
    # A TypeError raised by the method's own code stays the object's error.
    with pytest.raises(ObjectError, match="raised inside the method") as info:
        await stub.raises_type_error(5)
    assert info.value.remote_type == "TypeError"
    with pytest.raises(InvalidArgumentError, match=r"get_many\(\)"):
        await stub.get_several_wrongly()
    assert await stub.add(1, 2) == 3  # none of it broke the stub


async def test_the_name_reaches_the_object_and_cannot_be_forged(node):
    host, client = node
    ns = client.namespace("PROBE")
    got = await ns.get_by_name("alice").whoami()
    assert got["name"] == got["constructed_as"] == "alice"
    assert (await ns.get(ns.new_unique_id()).whoami())["name"] is None
    # By id (no name on the call): the live instance still knows its name.
    assert (await ns.get(ns.id_from_string(got["id"])).whoami())["name"] == "alice"

    forged = Call(binding="PROBE", object_id=ns.id_from_name("alice").raw, kind=CallKind.RPC,
                  method="whoami", payload=_codec.encode([[], {}]), name="mallory")
    with pytest.raises(InvalidIdError, match="mallory"):
        await client.invoker.invoke(forged)
    assert (await ns.get_by_name("alice").whoami())["name"] == "alice"
