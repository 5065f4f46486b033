"""Loading an app: a Python module plus an optional ``duro.toml`` in wrangler.toml's shape.

:func:`load_app` accepts

* a directory that holds ``duro.toml``, or the path of a ``duro.toml``;
* the path of a ``.py`` file;
* an imported module, or a dotted module name.

With a ``duro.toml``, the bindings, ``[vars]`` and ``[[migrations]]`` come from the file::

    name = "counter-app"
    main = "app.py"
    [vars]
    GREETING = "hi"
    [[durable_objects.bindings]]
    name = "COUNTER"
    class_name = "Counter"
    [[migrations]]
    tag = "v1"
    new_classes = ["Counter"]
    [expose.COUNTER]            # what the public entry points reach (duro._exposure)
    http = true
    gateway = ["increment", "fetch"]

Without one (a ``.py`` file or a module with no ``duro.toml`` next to it) bindings are
*discovered*: every :class:`~duro.DurableObject` subclass defined in the module becomes a binding
named by its class name upper-cased (``Counter`` -> ``COUNTER``, ``ChatRoom`` -> ``CHATROOM``), with
no vars, no migrations and nothing exposed to the public entry points. A ``.py`` file or module that does have a ``duro.toml`` next to it is
loaded through that file, which must name it as ``main`` (anything else is an error, rather than a
silent choice between the two).

How ``main`` is imported: the app's directory becomes a synthetic package named
``duro_app_<directory name>_<hash of the resolved directory>`` and ``main`` is imported as a
submodule of it (``counter/app.py`` -> ``duro_app_counter_3f2a5b6c7d8e.app``). So the name is unique per app and
stable across processes (a node process loading the same directory gets the same names), two apps
in one process never collide, loading the same app twice gives the very same classes (the module
is cached in :data:`sys.modules`), and ``main`` can import its sibling modules relatively
(``from .helpers import x``). The app's directory is *not* put on ``sys.path``: two apps may each
have a ``helpers.py``.

Migrations follow wrangler's meaning and are replayed in order: ``new_classes`` (also accepted as
``new_sqlite_classes``, which wrangler users write; duro has one storage engine) introduces a
class, ``renamed_classes = [{from = "Old", to = "New"}]`` renames a live class (its objects keep
their ids and storage: see :meth:`App.namespace_class`), ``transferred_classes = [{from = "Old",
from_script = "old-app", to = "New"}]`` takes over the objects of class ``Old`` of the app
``old-app`` that ran on the cluster before (they keep their ids and storage under ``New``), and
``deleted_classes`` removes a class together with its objects' data and directory entries (the
nodes remove them: ``duro.node.deleted_classes``; docs/runtime.md, "Class migrations"). A name
whose class was deleted cannot be introduced again (ids are keyed by the class's first name, so
the new class would address the deleted one's objects). An app
with no ``[[migrations]]`` at all is accepted (convenient for small apps and tests), but once any
migration exists the migrations must introduce every bound class: a class that no migration
introduced is a mistake wrangler also refuses, and accepting it would make a later rename
ambiguous.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
import threading
import tomllib
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duro._exposure import Exposure, parse_exposure
from duro._ids import namespace_key
from duro._object import DurableObject
from duro.errors import InvalidArgumentError

__all__ = ["App", "Binding", "ConfigError", "Migration", "load_app", "CONFIG_FILE"]

CONFIG_FILE = "duro.toml"

WorkerFetch = Callable[[Any, Any], Awaitable[Any]]

_TOP_FIELDS = {"name", "main", "vars", "durable_objects", "migrations", "expose"}
_DO_FIELDS = {"bindings"}
_BINDING_FIELDS = {"name", "class_name"}
_MIGRATION_FIELDS = {"tag", "new_classes", "new_sqlite_classes", "renamed_classes",
                     "deleted_classes", "transferred_classes"}
_RENAME_FIELDS = {"from", "to"}
_TRANSFER_FIELDS = {"from", "from_script", "to"}


class ConfigError(InvalidArgumentError):
    """An app or service configuration is invalid. The message names the file and the field."""

    code = "config_error"


@dataclass(frozen=True, slots=True)
class Binding:
    """``env.<name>``: a namespace of objects of class ``class_name`` (``cls``)."""

    name: str
    class_name: str
    cls: type[DurableObject]


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``[[migrations]]`` entry."""

    tag: str
    new_classes: tuple[str, ...] = ()
    renamed_classes: tuple[tuple[str, str], ...] = ()  # (from, to)
    deleted_classes: tuple[str, ...] = ()
    transferred_classes: tuple[tuple[str, str, str], ...] = ()  # (from, from_script, to)


@dataclass(frozen=True)
class App:
    """A loaded app: its module, bindings, vars, optional worker and migrations."""

    name: str
    root: Path
    module: types.ModuleType
    bindings: dict[str, Binding]
    vars: dict[str, Any]
    worker_fetch: WorkerFetch | None
    migrations: list[Migration] = field(default_factory=list)
    config_path: Path | None = None  # the duro.toml, or None when bindings were discovered
    #: what the edge's default route and the Gateway may reach (``[expose]``; nothing by default)
    exposure: Exposure = field(default_factory=Exposure)

    def binding_for_class(self, class_name: str) -> Binding:
        """The first binding (in file order) whose class is ``class_name``.

        Several bindings may name one class; they then share one namespace (ids are keyed by
        class), so any of them serves. Raises :class:`KeyError` when no binding names the class.
        """
        for binding in self.bindings.values():
            if binding.class_name == class_name:
                return binding
        known = sorted({b.class_name for b in self.bindings.values()})
        raise KeyError(f"app {self.name!r} has no binding for class {class_name!r} (bound: {known})")

    def namespace_class(self, class_name: str) -> str:
        """The name ``class_name`` was first introduced under, following renames backwards.

        Object ids and storage belong to this name, so that objects survive a
        ``renamed_classes`` migration as they do in Durable Objects.
        """
        return _namespace_before(self.migrations, class_name, len(self.migrations))

    def deleted_namespaces(self) -> dict[bytes, str]:
        """Every class a migration deleted: its namespace key -> what to tell a caller of it."""
        out: dict[bytes, str] = {}
        for i, m in enumerate(self.migrations):
            for name in m.deleted_classes:
                key = namespace_key(_namespace_before(self.migrations, name, i))
                out[key] = f"class {name!r} was deleted by migration {m.tag!r}"
        return out


def _namespace_before(migrations: list[Migration], class_name: str, end: int) -> str:
    """The name ``class_name`` (as of ``migrations[:end]``) was first introduced under: renames
    are followed backwards; a transfer ends at the class of the app it came from."""
    name = class_name
    for migration in reversed(migrations[:end]):
        for old, _script, new in migration.transferred_classes:
            if new == name:
                return old
        for old, new in migration.renamed_classes:
            if new == name:
                name = old
    return name


# -- loading ---------------------------------------------------------------------------------------

_lock = threading.RLock()


def load_app(path_or_module: str | Path | types.ModuleType) -> App:
    """Load an app from a directory, a ``duro.toml``, a ``.py`` file, a module or a module name.

    Raises :class:`ConfigError` (naming the file and the field) when the app is invalid.
    """
    with _lock:
        if isinstance(path_or_module, types.ModuleType):
            return _from_module(path_or_module)
        if isinstance(path_or_module, str) and _looks_like_module_name(path_or_module):
            return _from_module(_import_by_name(path_or_module))
        if not isinstance(path_or_module, (str, Path)):
            raise TypeError(
                f"load_app() takes a path, a module or a module name, "
                f"not {type(path_or_module).__name__}"
            )
        path = Path(path_or_module).expanduser().resolve()
        if path.is_dir():
            config = path / CONFIG_FILE
            if not config.is_file():
                raise ConfigError(f"{path}: no {CONFIG_FILE} in this directory")
            return _from_config(config)
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
        if path.suffix == ".toml":
            return _from_config(path)
        if path.suffix == ".py":
            return _from_py_file(path)
        raise ConfigError(f"{path}: expected a directory, a {CONFIG_FILE} or a .py file")


def _looks_like_module_name(text: str) -> bool:
    # "examples.counter.app" is a module name; "app.py", "./x", "x/y" are paths.
    if text.endswith((".py", ".toml")) or "/" in text or "\\" in text:
        return False
    if Path(text).exists():
        return False
    return all(part.isidentifier() for part in text.split("."))


def _import_by_name(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"no app at {name!r}: no such file or module") from exc
        raise ConfigError(f"{name}: importing the app failed: {exc}") from exc
    except Exception as exc:
        raise ConfigError(
            f"{name}: importing the app failed: {type(exc).__name__}: {exc}"
        ) from exc


def _from_py_file(path: Path) -> App:
    config = path.parent / CONFIG_FILE
    if config.is_file():
        return _from_config(config, expect_main=path)
    module = _import_main(path.parent, path)
    return _discover(module, root=path.parent)


def _from_module(module: types.ModuleType) -> App:
    file = getattr(module, "__file__", None)
    if file is not None:
        path = Path(file).resolve()
        config = path.parent / CONFIG_FILE
        if config.is_file():
            raw = _read_toml(config)
            app_name, main = _check_top(config, raw)
            main_path = _resolve_main(config, main)
            if main_path != path:
                raise ConfigError(
                    f"{config}: main = {main!r} is not module {module.__name__!r} ({path}); "
                    f"load the app by its directory instead"
                )
            return _build(config, raw, app_name, module)
        root = path.parent
    else:
        root = Path.cwd()
    return _discover(module, root=root)


def _from_config(config: Path, *, expect_main: Path | None = None) -> App:
    raw = _read_toml(config)
    app_name, main = _check_top(config, raw)
    main_path = _resolve_main(config, main)
    if expect_main is not None and main_path != expect_main:
        raise ConfigError(
            f"{config}: main = {main!r}, not {expect_main.name!r}; "
            f"a .py file next to a {CONFIG_FILE} is loaded through it"
        )
    module = _import_main(config.parent, main_path)
    return _build(config, raw, app_name, module)


def _read_toml(config: Path) -> dict[str, Any]:
    try:
        with config.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # tomllib decodes the file before it parses
        raise ConfigError(f"{config}: not valid TOML: not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{config}: cannot read: {exc}") from exc


def _check_top(config: Path, raw: dict[str, Any]) -> tuple[str, str]:
    _no_unknown(config, raw, _TOP_FIELDS, where="")
    name = _required_str(config, raw, "name", where="")
    main = _required_str(config, raw, "main", where="")
    return name, main


def _resolve_main(config: Path, main: str) -> Path:
    root = config.parent
    path = (root / main).resolve()
    if path.is_dir() and (path / "__init__.py").is_file():
        path = path / "__init__.py"
    if not path.is_file():
        raise ConfigError(f"{config}: main = {main!r}: no such file {path}")
    if path.suffix != ".py":
        raise ConfigError(f"{config}: main = {main!r}: must be a .py file or a package directory")
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise ConfigError(f"{config}: main = {main!r} must be inside {root}") from None
    parts = _module_parts(rel)
    if not parts or not all(p.isidentifier() for p in parts):
        raise ConfigError(
            f"{config}: main = {main!r}: every part of the path must be a Python identifier"
        )
    return path


def _module_parts(rel: Path) -> list[str]:
    parts = list(rel.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return parts


def _package_name(root: Path) -> str:
    digest = hashlib.sha256(str(root).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    clean = re.sub(r"[^0-9a-zA-Z]+", "_", root.name).strip("_").lower() or "app"
    return f"duro_app_{clean}_{digest}"


def _import_main(root: Path, main_path: Path) -> types.ModuleType:
    """Import ``main_path`` as a submodule of a synthetic package rooted at ``root``.

    The package name depends on the directory only (not on the app's ``name``), so loading by
    directory, by ``duro.toml`` or by ``.py`` file all give the same module and classes.
    """
    package = _package_name(root)
    if package not in sys.modules:
        pkg = types.ModuleType(package, f"duro app package for {root}")
        pkg.__path__ = [str(root)]
        pkg.__package__ = package
        sys.modules[package] = pkg
    parts = _module_parts(main_path.relative_to(root))
    if not parts:
        raise ConfigError(f"{main_path}: the app's main cannot be the app directory's __init__.py")
    name = ".".join([package, *parts])
    try:
        return importlib.import_module(name)
    except ConfigError:
        raise
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(
            f"{main_path}: importing the app's main failed: {type(exc).__name__}: {exc}"
        ) from exc


def _build(config: Path, raw: dict[str, Any], app_name: str, module: types.ModuleType) -> App:
    vars_ = _parse_vars(config, raw.get("vars", {}))
    bindings = _parse_bindings(config, raw.get("durable_objects"), module)
    migrations = _parse_migrations(config, raw.get("migrations"))
    for name in vars_:
        if name in bindings:
            raise ConfigError(f"{config}: vars.{name}: the same name is a durable object binding")
    _check_migrations(config, migrations, bindings, module, app_name)
    worker_fetch = _worker_fetch(str(config), module)
    exposure = parse_exposure(config, raw.get("expose"), bindings,
                              has_worker=worker_fetch is not None)
    return App(
        name=app_name,
        root=config.parent,
        module=module,
        bindings=bindings,
        vars=vars_,
        worker_fetch=worker_fetch,
        migrations=migrations,
        config_path=config,
        exposure=exposure,
    )


def _discover(module: types.ModuleType, *, root: Path) -> App:
    where = getattr(module, "__file__", None) or module.__name__
    bindings: dict[str, Binding] = {}
    for attr, value in vars(module).items():
        if not (isinstance(value, type) and issubclass(value, DurableObject)):
            continue
        if value is DurableObject or value.__module__ != module.__name__ or attr != value.__name__:
            continue  # imported from elsewhere, or an alias: not defined here
        name = value.__name__.upper()
        if name in bindings:
            raise ConfigError(
                f"{where}: classes {bindings[name].class_name!r} and {value.__name__!r} "
                f"both give binding {name!r}; write a {CONFIG_FILE}"
            )
        bindings[name] = Binding(name=name, class_name=value.__name__, cls=value)
    if not bindings:
        raise ConfigError(f"{where}: defines no DurableObject subclass and has no {CONFIG_FILE}")
    stem = getattr(module, "__name__", "app").rsplit(".", 1)[-1]
    return App(
        name=stem,
        root=root,
        module=module,
        bindings=bindings,
        vars={},
        worker_fetch=_worker_fetch(where, module),
        migrations=[],
        config_path=None,
    )


def _worker_fetch(where: str, module: types.ModuleType) -> WorkerFetch | None:
    fetch = getattr(module, "fetch", None)
    if fetch is None:
        return None
    if not inspect.iscoroutinefunction(fetch):
        raise ConfigError(
            f"{where}: module-level 'fetch' must be 'async def fetch(request, env)', "
            f"not {type(fetch).__name__}"
        )
    return fetch  # type: ignore[no-any-return]


# -- sections --------------------------------------------------------------------------------------


def _parse_vars(config: Path, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{config}: vars must be a table, not {_kind(raw)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not key.isidentifier():
            raise ConfigError(f"{config}: vars.{key}: a var name must be a Python identifier")
        _check_plain(config, f"vars.{key}", value)
        out[key] = value
    return out


def _check_plain(config: Path, where: str, value: Any) -> None:
    if isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(config, f"{where}[{i}]", item)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            _check_plain(config, f"{where}.{k}", item)
        return
    raise ConfigError(
        f"{config}: {where}: vars hold strings, numbers, booleans, arrays and tables, "
        f"not {_kind(value)}"
    )


def _parse_bindings(config: Path, raw: Any, module: types.ModuleType) -> dict[str, Binding]:
    if raw is None:
        raise ConfigError(f"{config}: durable_objects: missing; add [[durable_objects.bindings]]")
    if not isinstance(raw, dict):
        raise ConfigError(f"{config}: durable_objects must be a table, not {_kind(raw)}")
    _no_unknown(config, raw, _DO_FIELDS, where="durable_objects.")
    entries = raw.get("bindings")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"{config}: durable_objects.bindings: missing or empty; "
            f"add at least one [[durable_objects.bindings]]"
        )
    bindings: dict[str, Binding] = {}
    for i, entry in enumerate(entries):
        where = f"durable_objects.bindings[{i}]."
        if not isinstance(entry, dict):
            raise ConfigError(f"{config}: {where[:-1]} must be a table, not {_kind(entry)}")
        _no_unknown(config, entry, _BINDING_FIELDS, where=where)
        name = _required_str(config, entry, "name", where=where)
        class_name = _required_str(config, entry, "class_name", where=where)
        if not name.isidentifier():
            raise ConfigError(
                f"{config}: {where}name = {name!r}: a binding name must be a Python identifier"
            )
        if name in bindings:
            raise ConfigError(f"{config}: {where}name = {name!r}: duplicate binding name")
        cls = _find_class(config, f"{where}class_name", class_name, module)
        bindings[name] = Binding(name=name, class_name=class_name, cls=cls)
    return bindings


def _find_class(
    config: Path, where: str, class_name: str, module: types.ModuleType
) -> type[DurableObject]:
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(
            f"{config}: {where} = {class_name!r}: no such class in {_module_file(module)}"
        )
    if not (isinstance(cls, type) and issubclass(cls, DurableObject)) or cls is DurableObject:
        raise ConfigError(
            f"{config}: {where} = {class_name!r}: not a subclass of duro.DurableObject"
        )
    return cls


def _parse_migrations(config: Path, raw: Any) -> list[Migration]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{config}: migrations must be an array of tables ([[migrations]])")
    out: list[Migration] = []
    tags: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"migrations[{i}]."
        if not isinstance(entry, dict):
            raise ConfigError(f"{config}: {where[:-1]} must be a table, not {_kind(entry)}")
        _no_unknown(config, entry, _MIGRATION_FIELDS, where=where)
        tag = _required_str(config, entry, "tag", where=where)
        if tag in tags:
            raise ConfigError(f"{config}: {where}tag = {tag!r}: duplicate migration tag")
        tags.add(tag)
        new = _str_list(config, entry, "new_classes", where) + _str_list(
            config, entry, "new_sqlite_classes", where
        )
        deleted = _str_list(config, entry, "deleted_classes", where)
        renames = [(item["from"], item["to"])
                   for item in _tables(config, entry, "renamed_classes", where, _RENAME_FIELDS)]
        transfers = [
            (item["from"], item["from_script"], item["to"])
            for item in _tables(config, entry, "transferred_classes", where, _TRANSFER_FIELDS)
        ]
        out.append(Migration(tag, tuple(new), tuple(renames), tuple(deleted), tuple(transfers)))
    return out


def _tables(config: Path, entry: Mapping[str, Any], key: str, where: str,
            fields: set[str]) -> list[dict[str, str]]:
    """``key = [{...}, ...]``: tables of exactly ``fields``, each a non-empty string."""
    raw = entry.get(key, [])
    if not isinstance(raw, list):
        raise ConfigError(f"{config}: {where}{key} must be an array of tables")
    out = []
    for j, item in enumerate(raw):
        twhere = f"{where}{key}[{j}]."
        if not isinstance(item, dict):
            raise ConfigError(f"{config}: {twhere[:-1]} must be a table "
                              f"{{{', '.join(f'{f} = ...' for f in sorted(fields))}}}")
        _no_unknown(config, item, fields, where=twhere)
        out.append({f: _required_str(config, item, f, where=twhere) for f in sorted(fields)})
    return out


def _check_migrations(
    config: Path,
    migrations: list[Migration],
    bindings: dict[str, Binding],
    module: types.ModuleType,
    app_name: str = "",
) -> None:
    if not migrations:
        return  # accepted: an app without any [[migrations]] (see the module docstring)
    live: set[str] = set()
    ever: set[str] = set()
    deleted: dict[str, str] = {}  # namespace name -> the tag that deleted it
    for i, m in enumerate(migrations):
        where = f"{config}: migrations[{i}] (tag {m.tag!r})"
        for name in m.new_classes:
            if name in live:
                raise ConfigError(f"{where}: new_classes: {name!r} was already introduced")
            if name in deleted:
                raise ConfigError(
                    f"{where}: new_classes: {name!r}: a class of that name was deleted by "
                    f"migration {deleted[name]!r}; ids are keyed by the class's first name, so "
                    f"a new {name!r} would address the deleted class's objects. Pick another name")
            live.add(name)
        for old, script, new in m.transferred_classes:
            if script == app_name:
                raise ConfigError(
                    f"{where}: transferred_classes: from_script = {script!r} is this app; "
                    f"to move a class within one app, use renamed_classes")
            if new in live:
                raise ConfigError(f"{where}: transferred_classes: to = {new!r} already exists")
            if old in deleted:
                raise ConfigError(
                    f"{where}: transferred_classes: from = {old!r}: that class's objects were "
                    f"deleted by migration {deleted[old]!r}")
            live.add(new)
        for old, new in m.renamed_classes:
            if old not in live:
                raise ConfigError(
                    f"{where}: renamed_classes: from = {old!r}: no earlier migration introduced it"
                )
            if new in live:
                raise ConfigError(f"{where}: renamed_classes: to = {new!r} already exists")
            live.discard(old)
            live.add(new)
        for name in m.deleted_classes:
            if name not in live:
                raise ConfigError(
                    f"{where}: deleted_classes: {name!r}: no earlier migration introduced it"
                )
            live.discard(name)
            deleted[_namespace_before(migrations, name, i)] = m.tag
        ever |= live
    for name in sorted(live):
        _find_class(config, f"migrations: class {name!r}", name, module)
    for binding in bindings.values():
        if binding.class_name not in live:
            why = "was deleted or renamed" if binding.class_name in ever else "no migration introduced it"
            raise ConfigError(
                f"{config}: durable_objects.bindings {binding.name!r}: class "
                f"{binding.class_name!r} {why}; add it to a migration's new_classes"
            )


# -- small validators ------------------------------------------------------------------------------


def _no_unknown(config: Path, raw: Mapping[str, Any], allowed: set[str], *, where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"{config}: {where}{key}: unknown field (expected one of {sorted(allowed)})"
            )


def _required_str(config: Path, raw: Mapping[str, Any], key: str, *, where: str) -> str:
    if key not in raw:
        raise ConfigError(f"{config}: {where}{key}: missing required field")
    value = raw[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{config}: {where}{key}: must be a non-empty string, not {value!r}")
    return value


def _str_list(config: Path, raw: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{config}: {where}{key}: must be an array of class names")
    return list(value)


def _kind(value: Any) -> str:
    return type(value).__name__


def _module_file(module: types.ModuleType) -> str:
    return getattr(module, "__file__", None) or module.__name__
