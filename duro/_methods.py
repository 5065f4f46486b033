"""Which methods of a durable object a stub may call: the one rule, used everywhere.

The node (``duro.node.runtime.activation``, so also the ``Testbed``, which runs the node's
runtime in process), the Gateway (``duro.edge.gateway``, before it routes a call) and ``duro.toml``
(``[expose]`` method lists) all ask this module. As in Cloudflare, where JavaScript RPC exposes the
methods of the class's prototype chain below ``DurableObject``, a name ``m`` is callable on an
object of class ``C`` when

1. ``m`` is a **public name**: a Python identifier that does not start with ``_`` and is not one
   of the handlers the runtime calls itself (:data:`RUNTIME_HANDLERS`: ``fetch``, ``alarm``,
   ``web_socket_message``, ``web_socket_close``, ``web_socket_error``);
2. the first class along ``C.__mro__`` that defines ``m`` (the one Python's own lookup finds) is
   one of the **user's classes**: ``C`` or a base class of it, but not ``DurableObject``, a class
   ``DurableObject`` derives from (``object``), or a built-in type;
3. what that class defines is a **plain function** (``def`` or ``async def``): not a
   ``staticmethod``, ``classmethod``, ``property`` or any other descriptor, not a nested class,
   not a value.

So ``mro`` (the metaclass's), ``__init_subclass__``, ``ctx``/``env`` and every other attribute are
never callable. :func:`bind` takes the function from the class and binds it to the instance, so an
instance attribute with a method's name cannot stand in for the method.
"""

from __future__ import annotations

import types
from typing import Any, Callable

from duro._object import DurableObject
from duro.errors import MethodNotFoundError

__all__ = [
    "RUNTIME_HANDLERS",
    "is_public_name",
    "find_method",
    "callable_methods",
    "check_method",
    "no_such_method",
    "bind",
]

#: Handlers the runtime calls itself; never RPC methods (``stub.fetch()`` is not an RPC call).
RUNTIME_HANDLERS = frozenset(
    {"fetch", "alarm", "web_socket_message", "web_socket_close", "web_socket_error"}
)

# Classes whose attributes are never callable: DurableObject and everything above it.
_NOT_USER = frozenset(DurableObject.__mro__)
_MISSING = object()


def is_public_name(name: object) -> bool:
    """Rule 1: a string that could name an RPC method (says nothing about any class)."""
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not name.startswith("_")
        and name not in RUNTIME_HANDLERS
    )


def _user_class(klass: type) -> bool:
    return klass not in _NOT_USER and klass.__module__ != "builtins"


def find_method(cls: type, name: str) -> types.FunctionType | None:
    """The function ``cls.<name>`` when rules 1-3 make it callable, else ``None``."""
    if not is_public_name(name):
        return None
    for klass in cls.__mro__:
        attr = vars(klass).get(name, _MISSING)
        if attr is _MISSING:
            continue
        # The first definition wins, as in Python's lookup: a user's `x = None` hides a base's x.
        if _user_class(klass) and type(attr) is types.FunctionType:
            return attr
        return None
    return None


def callable_methods(cls: type) -> list[str]:
    """Every callable method name of ``cls``, sorted (for messages and config checks)."""
    names = {n for klass in cls.__mro__ for n in vars(klass)}
    return sorted(n for n in names if find_method(cls, n) is not None)


def check_method(cls: type, name: object) -> types.FunctionType:
    """The callable function ``cls.<name>``; :class:`MethodNotFoundError` if there is none."""
    if not isinstance(name, str) or not is_public_name(name):
        raise MethodNotFoundError(
            f"{name!r} cannot be called through a stub: names starting with '_' and the "
            f"runtime's handlers ({', '.join(sorted(RUNTIME_HANDLERS))}) are not RPC methods"
        )
    func = find_method(cls, name)
    if func is None:
        raise no_such_method(cls, name)
    return func


def no_such_method(cls: type, name: str) -> MethodNotFoundError:
    """The one error for every refusal of a public name (missing, static/class method, property,
    attribute, DurableObject's or object's, or not exposed): a caller learns nothing about what
    else the class holds."""
    return MethodNotFoundError(
        f"{cls.__name__} has no public method {name!r} (callable: the methods its class and its "
        f"own base classes define; docs/security.md)"
    )


def bind(instance: Any, name: object) -> Callable[..., Any]:
    """``instance.<name>`` if it is a callable method, bound from the class."""
    cls = type(instance)
    return check_method(cls, name).__get__(instance, cls)  # type: ignore[no-any-return]
