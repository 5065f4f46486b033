"""The callable-method rule (duro._methods, docs/security.md) as such, and through the Testbed
(the node's runtime in process). The same app is called through a real node and the Gateway in
tests/edge/test_gateway_security.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from duro import DurableObject
from duro._codec import encode
from duro._methods import bind, callable_methods, check_method, find_method, is_public_name
from duro._namespace import Call, CallKind
from duro.errors import MethodNotFoundError
from duro.testing import Testbed

pytestmark = pytest.mark.timeout(30)

APP = Path(__file__).parent / "edge" / "exposed"

#: Every name below is refused on Thing (tests/edge/exposed/app.py), each for its own reason.
REFUSED = [
    "static",  # staticmethod
    "klass",  # classmethod
    "prop",  # property
    "LIMIT",  # class attribute
    "Nested",  # nested class
    "value",  # instance attribute
    "ctx", "env",  # DurableObject's attributes
    "mro",  # the metaclass's (type.mro)
    "__init_subclass__", "__init__", "__class__", "__reduce_ex__", "__getattribute__",
    "_private", "_load",  # private
    "fetch", "alarm", "web_socket_message",  # the runtime's handlers
    "nope", "", "x y", "1x",
]
CALLABLE = {"add", "echo", "get", "inherited", "mixed", "overridden", "shadowed"}


@pytest.fixture(scope="module")
def thing():
    from duro._app import load_app

    return load_app(APP).bindings["THING"].cls


def test_callable_methods_are_exactly_the_users(thing):
    assert set(callable_methods(thing)) == CALLABLE
    for name in CALLABLE:
        assert find_method(thing, name) is not None
        assert check_method(thing, name) is find_method(thing, name)


@pytest.mark.parametrize("name", REFUSED)
def test_refused_names(thing, name):
    assert find_method(thing, name) is None
    with pytest.raises(MethodNotFoundError):
        check_method(thing, name)


def test_names_that_are_not_strings_are_refused(thing):
    for name in (None, 1, b"add", ["add"]):
        assert not is_public_name(name)
        with pytest.raises(MethodNotFoundError):
            check_method(thing, name)


def test_durable_object_and_builtin_bases_never_give_methods(monkeypatch):
    """A public method that DurableObject (or a built-in base) might grow is not callable on a
    subclass; the user's own definition of the same name is."""

    async def helper(self):
        return "runtime"

    monkeypatch.setattr(DurableObject, "helper", helper, raising=False)

    class Plain(DurableObject):
        pass

    class Mine(DurableObject):
        async def helper(self):
            return "mine"

    class WithDict(dict, DurableObject):  # a built-in base: its methods are not the user's
        pass

    assert find_method(Plain, "helper") is None
    assert find_method(Mine, "helper") is Mine.__dict__["helper"]
    assert find_method(WithDict, "keys") is None and find_method(WithDict, "clear") is None


def test_first_definition_wins():
    """A subclass can hide a base's method (``name = None``), as Python's own lookup does."""

    class Base(DurableObject):
        async def a(self):
            return 1

    class Hides(Base):
        a = None

    assert find_method(Base, "a") is not None
    assert find_method(Hides, "a") is None


def test_bind_takes_the_method_from_the_class(thing):
    obj = thing.__new__(thing)
    obj.shadowed = lambda: "instance attribute"
    method = bind(obj, "shadowed")
    assert method.__func__ is thing.__dict__["shadowed"] and method.__self__ is obj


# -- through the Testbed (the node's runtime, in process) -------------------------------------

@pytest.fixture
async def tb(tmp_path):
    async with Testbed(APP, tmp_path) as tb:
        yield tb


async def test_testbed_calls_what_the_rule_allows(tb):
    stub = tb.env.THING.get_by_name("t")
    assert await stub.inherited() == "from Base"  # the user's own base class
    assert await stub.mixed() == "from Mixin"  # a plain mixin, a plain function
    assert await stub.overridden() == "Thing"
    assert await stub.shadowed() == "class method"  # not the instance attribute
    assert await stub.add(2) == 2 and await stub.get() == 2


@pytest.mark.parametrize("name", REFUSED)
async def test_testbed_refuses(tb, name):
    stub = tb.env.THING.get_by_name("t")
    with pytest.raises(MethodNotFoundError):
        await stub.call(name)
    # And the runtime itself, for a call that skipped the stub's own check (a remote caller's).
    oid = tb.env.THING.id_from_name("t").raw
    with pytest.raises(MethodNotFoundError):
        await tb.host.invoke(Call(binding="THING", object_id=oid, kind=CallKind.RPC,
                                  method=name, payload=encode([[], {}])))
    assert await stub.get() == 0  # the stub still works
