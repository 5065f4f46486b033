"""What the public entry points may reach: ``duro.toml``'s ``[expose]`` table.

Cloudflare never exposes a Durable Object except through the Worker its owner wrote. duro has two
public entry points that reach objects without such code, the edge's default route
(``/<binding>/<name>/...``, for apps without a worker ``fetch``) and the gRPC Gateway; both reach
only what ``duro.toml`` opens, and nothing by default::

    [expose.COUNTER]
    http = true                              # the default route /counter/<name>/...
    gateway = ["increment", "get", "fetch"]  # Gateway Invoke of these methods; "fetch": its Fetch
    # gateway = true                         # every callable method, and fetch

* ``http``: ``true`` opens ``/<binding lower-cased>/<name>/<rest>`` (the object's ``fetch``).
  A binding that is not open answers 404, exactly as one that does not exist. With a worker
  ``fetch`` the worker routes every request, so ``http`` is a configuration error there.
* ``gateway``: ``true`` opens every callable method (``duro._methods``) and ``fetch``; a list opens
  those names. A binding not open is ``not_found`` on the Gateway, as an unknown one; a method not
  open is ``method_not_found``, as a missing one. So the Gateway tells a caller nothing about what
  it does not expose.

Every name is checked when the app loads: an unknown binding, an unknown field, a method the
class cannot be called with (``incremnt``, a staticmethod, ``_load``) or ``fetch`` on a class
without one is a :class:`~duro._app.ConfigError` naming the file and the field.
An app loaded without a ``duro.toml`` (bindings discovered from a module) exposes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duro._methods import callable_methods, find_method

if TYPE_CHECKING:
    from duro._app import Binding

__all__ = ["Exposure", "parse_exposure", "FETCH"]

#: The name that stands for the Gateway's ``Fetch`` RPC in method lists (``fetch`` is never an
#: RPC method, so it cannot clash with one).
FETCH = "fetch"

_FIELDS = ("http", "gateway")


@dataclass(frozen=True)
class Exposure:
    """The bindings (and methods) the edge's default route and the Gateway may reach."""

    http: frozenset[str] = frozenset()
    #: binding -> the methods open on the Gateway (``None``: every callable method, and fetch)
    gateway: Mapping[str, frozenset[str] | None] = field(default_factory=dict)

    def http_open(self, binding: str) -> bool:
        return binding in self.http

    def gateway_open(self, binding: str) -> bool:
        return binding in self.gateway

    def gateway_method_open(self, binding: str, method: str) -> bool:
        """Whether ``method`` (:data:`FETCH` for the Fetch RPC) of an open binding is open."""
        methods = self.gateway.get(binding, frozenset())
        return methods is None or method in methods


def parse_exposure(
    config: Path, raw: Any, bindings: Mapping[str, Binding], *, has_worker: bool
) -> Exposure:
    """``[expose]`` of ``config`` checked against the app's bindings and classes."""
    from duro._app import ConfigError  # duro._app imports this module while it loads

    if raw is None:
        return Exposure()
    if not isinstance(raw, dict):
        raise ConfigError(f"{config}: expose must be a table ([expose.<BINDING>]), "
                          f"not {type(raw).__name__}")
    http: set[str] = set()
    gateway: dict[str, frozenset[str] | None] = {}
    for name, entry in raw.items():
        where = f"{config}: expose.{name}"
        if name not in bindings:
            raise ConfigError(f"{where}: no such binding (bindings: {sorted(bindings)})")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table with http and/or gateway, "
                              f"not {type(entry).__name__}")
        for key in entry:
            if key not in _FIELDS:
                raise ConfigError(f"{where}.{key}: unknown field (expected one of "
                                  f"{list(_FIELDS)})")
        cls = bindings[name].cls
        if "http" in entry:
            value = entry["http"]
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.http must be true or false, not {value!r}")
            if value and has_worker:
                raise ConfigError(
                    f"{where}.http: this app has a worker fetch, which routes every HTTP "
                    f"request itself (the default route is not used); remove http"
                )
            if value:
                http.add(name)
        if "gateway" in entry:
            methods = _gateway_methods(f"{where}.gateway", entry["gateway"], cls)
            if methods is None or methods:
                gateway[name] = methods
    return Exposure(http=frozenset(http), gateway=gateway)


def _gateway_methods(where: str, value: Any, cls: type) -> frozenset[str] | None:
    from duro._app import ConfigError

    if isinstance(value, bool):
        return None if value else frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be true, false or an array of method names, "
                          f"not {value!r}")
    for method in value:
        if method == FETCH:
            if not callable(getattr(cls, FETCH, None)):
                raise ConfigError(f"{where}: {FETCH!r}: {cls.__name__} has no fetch method")
        elif find_method(cls, method) is None:
            raise ConfigError(
                f"{where}: {method!r} is not a callable method of {cls.__name__} "
                f"(callable: {callable_methods(cls)}; docs/security.md)"
            )
    return frozenset(value)
