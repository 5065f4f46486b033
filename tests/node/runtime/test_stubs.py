"""Stub rules and ids: only public methods are callable (lifecycle handlers, private names,
missing and non-callable attributes are refused with MethodNotFoundError); the object's own
exception is an ObjectError and leaves the stub usable; an infrastructure error breaks the stub;
ids are deterministic/random/validated per namespace."""

from __future__ import annotations

import asyncio

import pytest

from duro import ObjectId
from duro._codec import encode
from duro._namespace import Call, CallKind
from duro.errors import (
    BrokenStubError,
    InvalidArgumentError,
    InvalidIdError,
    MethodNotFoundError,
    ObjectError,
    ObjectResetError,
    OverloadedError,
    UnavailableError,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def rules(tb):
    return tb.env.RULES


async def raw_call(tb, binding, name, method, args=()):
    """A call made without the client-side checks of Stub (as a remote caller could)."""
    oid = tb.env.__dict__[binding].id_from_name(name).raw
    return await tb.host.invoke(Call(binding=binding, object_id=oid, kind=CallKind.RPC,
                                     method=method, payload=encode([list(args), {}])))


async def test_public_method_roundtrip(tb, rules):
    got = await rules.get_by_name("r").ok(1, "a", k=[1])
    assert got == {"args": [1, "a"], "kwargs": {"k": [1]}}


@pytest.mark.parametrize("name", ["_private", "__init__", "__class__", "_ctor", "x y", ""])
async def test_private_names_are_refused(tb, rules, name):
    stub = rules.get_by_name("r")
    if name.startswith("_") and not name.startswith("__"):
        with pytest.raises(AttributeError):  # refused at the client already
            getattr(stub, name)()
    with pytest.raises(MethodNotFoundError):  # at once, by the stub (duro._methods' rule)
        stub.call(name)
    with pytest.raises(MethodNotFoundError):  # and by the object's node
        await raw_call(tb, "RULES", "r", name)


@pytest.mark.parametrize("name", ["alarm", "fetch", "web_socket_message", "web_socket_close",
                                  "web_socket_error", "ctx", "env"])
async def test_lifecycle_handlers_and_reserved_names_are_not_rpc_methods(tb, rules, name):
    with pytest.raises(MethodNotFoundError):
        await rules.get_by_name("r").call(name)
    with pytest.raises(MethodNotFoundError):
        await raw_call(tb, "RULES", "r", name)


@pytest.mark.parametrize("name", ["nope", "LIMIT", "Nested", "attribute", "prop"])
async def test_missing_and_non_callable_attributes_are_refused(tb, rules, name):
    with pytest.raises(MethodNotFoundError):
        await rules.get_by_name("r").call(name)


async def test_fetch_is_reached_through_stub_fetch(tb, rules):
    resp = await rules.get_by_name("r").fetch("http://x/")
    assert resp.status == 200


async def test_user_exception_is_object_error_and_stub_stays_usable(tb, rules):
    stub = rules.get_by_name("r")
    with pytest.raises(ObjectError) as ei:
        await stub.fail("bad input")
    assert ei.value.remote_type == "ValueError"
    assert "bad input" in str(ei.value)
    assert not ei.value.retryable
    with pytest.raises(ObjectError) as ei:
        await stub.fail_custom()
    assert ei.value.remote_type == "MyError"
    assert await stub.quick() == "quick"  # not broken


async def test_runtime_failure_breaks_the_stub(tb, rules, objs):
    """A failure of the runtime (retryable: here a failed commit resets the object) breaks the
    stub: later calls raise BrokenStubError naming the first error, even once the object works."""
    stub = rules.get_by_name("r")
    assert await stub.quick() == "quick"
    real_write = tb.engine.write

    def failing(batch):
        raise OSError("disk gone")

    tb.engine.write = failing
    counter = tb.env.COUNTER.get_by_name("c2")
    with pytest.raises((ObjectResetError, UnavailableError)) as first:
        await counter.increment()
    assert first.value.retryable
    tb.engine.write = real_write
    with pytest.raises(BrokenStubError) as ei:
        await counter.increment()  # broken, even though the object would work now
    assert ei.value.retryable
    assert ei.value.__cause__ is first.value
    assert "disk gone" in str(ei.value)
    assert await tb.env.COUNTER.get_by_name("c2").increment() == 1  # a new stub works
    assert await stub.quick() == "quick"  # other stubs were not affected


async def test_refused_calls_and_user_errors_do_not_break_the_stub(tb, rules, objs):
    stub = rules.get_by_name("r")
    for bad in ("nope", "alarm", "LIMIT"):
        with pytest.raises(MethodNotFoundError):
            await stub.call(bad)
    with pytest.raises(ObjectError):
        await stub.fail("x")
    assert await stub.quick() == "quick"


async def test_constructor_failure_is_reported_and_next_call_retries_construction(tb, rules, objs):
    objs.FLAGS["ctor_fails"] = True
    stub = rules.get_by_name("r")
    with pytest.raises(ObjectResetError) as ei:
        await stub.quick()
    assert "constructor raised RuntimeError" in str(ei.value)
    assert not ei.value.retryable  # the object's code failed: retrying as is does not help
    objs.FLAGS["ctor_fails"] = False
    assert await rules.get_by_name("r").quick() == "quick"
    assert objs.CTORS["Rules"] == 2


async def test_overload_breaks_the_stub(tmp_path, wait_for):
    from pathlib import Path

    from duro.testing import Testbed

    app = Path(__file__).parent / "apps" / "objs.py"
    async with Testbed(app=app, data_dir=tmp_path, max_queued_events=1) as tb:
        objs = tb.app.module
        objs.reset()
        objs.EVENTS["e"] = asyncio.Event()
        stub = tb.env.RULES.get_by_name("r")
        blocker = asyncio.ensure_future(stub.block("e"))
        await wait_for(lambda: tb.host.activation(stub.id.raw) is not None
                       and tb.host.activation(stub.id.raw).gate_closed)
        queued = asyncio.ensure_future(stub.quick())
        await asyncio.sleep(0.02)
        with pytest.raises(OverloadedError):
            await stub.quick()
        with pytest.raises(BrokenStubError):
            await stub.quick()
        objs.EVENTS["e"].set()
        assert await blocker == "unblocked"
        assert await queued == "quick"  # submitted before the stub broke


async def test_unencodable_argument_fails_at_call(tb, rules):
    with pytest.raises(InvalidArgumentError):
        rules.get_by_name("r").ok(object())


# -- ids ---------------------------------------------------------------------------------------

async def test_id_from_name_is_deterministic_per_namespace(tb):
    a1 = tb.env.RULES.id_from_name("alice")
    a2 = tb.env.RULES.id_from_name("alice")
    assert a1 == a2 and a1.raw == a2.raw and len(a1.raw) == 32 and a1.name == "alice"
    assert tb.env.RULES.id_from_name("bob") != a1
    assert tb.env.COUNTER.id_from_name("alice") != a1  # other class, other id
    await tb.restart()
    assert tb.env.RULES.id_from_name("alice") == a1  # stable across restarts


async def test_new_unique_id_is_random_and_valid(tb):
    ids = {tb.env.RULES.new_unique_id() for _ in range(1000)}
    assert len(ids) == 1000
    some = next(iter(ids))
    assert tb.env.RULES.id_from_string(some.hex()) == some
    assert tb.env.RULES.new_unique_id(location_hint="eu").location_hint == "eu"


async def test_id_from_string_roundtrip(tb):
    oid = tb.env.RULES.id_from_name("x")
    text = str(oid)
    assert len(text) == 64 and text == text.lower()
    assert tb.env.RULES.id_from_string(text) == oid
    assert tb.env.RULES.id_from_string(text.upper()) == oid
    stub = tb.env.RULES.get(tb.env.RULES.id_from_string(text))
    assert await stub.quick() == "quick"


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-2],  # wrong length
    lambda t: t + "00",
    lambda t: "",
    lambda t: "zz" + t[2:],  # not hex
    lambda t: t[:10] + "é" + t[11:],
    lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # tag does not match
    lambda t: 5,
])
async def test_id_from_string_validation(tb, mutate):
    text = str(tb.env.RULES.id_from_name("x"))
    with pytest.raises(InvalidIdError):
        tb.env.RULES.id_from_string(mutate(text))


async def test_ids_of_another_namespace_are_refused(tb):
    other = tb.env.COUNTER.id_from_name("x")
    with pytest.raises(InvalidIdError):
        tb.env.RULES.id_from_string(str(other))
    with pytest.raises(InvalidIdError):
        tb.env.RULES.get(other)
    with pytest.raises(InvalidIdError):
        tb.env.RULES.get(tb.env.COUNTER.new_unique_id())
    with pytest.raises(InvalidArgumentError):
        tb.env.RULES.get(str(tb.env.RULES.id_from_name("x")))  # a str is not an ObjectId
    forged = ObjectId(other.raw)
    with pytest.raises(InvalidIdError):
        tb.env.RULES.get(forged)


async def test_bad_object_id_at_the_host_is_refused(tb):
    with pytest.raises(InvalidIdError):
        await tb.host.invoke(Call(binding="RULES", object_id=b"short", kind=CallKind.RPC,
                                  method="quick", payload=encode([[], {}])))
