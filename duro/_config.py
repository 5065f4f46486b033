"""One frozen config dataclass per service, loaded from file < environment < flags.

A service declares its settings once, as a dataclass whose fields carry their help text::

    @dataclass(frozen=True)
    class NodeConfig:
        port: int = field(default=7001, metadata={"help": "gRPC port"})
        data_dir: Path = field(default=Path("data"), metadata={"help": "RocksDB directory"})
        regions: tuple[str, ...] = ()

and loads it with every source passed in (nothing reads ``os.environ`` behind the caller's back)::

    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, NodeConfig, env_prefix="DURO_NODE_")
    ns = parser.parse_args()
    config = load_config(NodeConfig, file=path, env=os.environ, env_prefix="DURO_NODE_",
                         overrides=flags_from_args(ns))

Sources, lowest precedence first:

* ``file``: a TOML file whose top-level keys are field names (``data_dir = "/var/lib/duro"``).
  A key that is not a field is an error naming the key: a typo must not be silently ignored.
* ``env``: ``<env_prefix><FIELD NAME UPPER-CASED>`` (``DURO_NODE_DATA_DIR``). Variables with the
  prefix that name no field are ignored, because the environment is shared with other programs.
* ``overrides``: field name -> value, usually :func:`flags_from_args`; ``None`` means "not given".

Strings (from the environment, flags, or the file) are converted to the field's type: ``str``,
``int``, ``float``, ``bool`` (``1/0, true/false, yes/no, on/off``), ``Path``,
``tuple[X, ...]`` (comma-separated; empty string is the empty tuple), ``Literal[...]`` (one of
the values) and ``X | None`` (an empty string is ``None``). A value that does not convert is a
:class:`~duro._app.ConfigError` naming the field and where the value came from (the file, the
environment variable or the flag).
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from duro._app import ConfigError

__all__ = ["load_config", "add_dataclass_flags", "flags_from_args", "env_var", "flag_name", "ConfigError"]

T = TypeVar("T")

_FLAG_DEST = "duro_config__"  # argparse dest prefix that marks a config flag
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def load_config(
    cls: type[T],
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str = "",
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from its defaults, then ``file``, then ``env``, then ``overrides``."""
    fields = _fields(cls)
    values: dict[str, Any] = {}

    if file is not None:
        for key, raw in _read_file(file).items():
            if key not in fields:
                raise ConfigError(
                    f"{file}: {key}: unknown setting for {cls.__name__} "
                    f"(expected one of {sorted(fields)})"
                )
            values[key] = _coerce(raw, fields[key], key, f"file {file}")

    for name, tp in fields.items():
        var = env_var(env_prefix, name)
        if env is not None and var in env:
            values[name] = _coerce(env[var], tp, name, f"environment variable {var}")

    for name, raw in (overrides or {}).items():
        if name not in fields:
            raise ConfigError(f"{name}: unknown setting for {cls.__name__} (from flags)")
        if raw is None:
            continue
        values[name] = _coerce(raw, fields[name], name, f"flag {flag_name(name)}")

    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.init and f.name not in values and _no_default(f):
            raise ConfigError(
                f"{f.name}: required setting of {cls.__name__} is missing; give it in the config "
                f"file, as {env_var(env_prefix, f.name)} or as {flag_name(f.name)}"
            )
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


def env_var(prefix: str, name: str) -> str:
    """The environment variable of field ``name``: ``DURO_NODE_`` + ``DATA_DIR``."""
    return f"{prefix}{name.upper()}"


def flag_name(name: str) -> str:
    """The command-line flag of field ``name``: ``--data-dir``."""
    return "--" + name.replace("_", "-")


def add_dataclass_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type[Any],
    *,
    env_prefix: str | None = None,
) -> None:
    """Add one ``--field-name`` flag per field of ``cls``; help comes from ``metadata["help"]``.

    Flags default to "not given", so that a flag overrides the file and the environment only when
    it is on the command line. Booleans get ``--x/--no-x``. Values are parsed by
    :func:`load_config`, so that a bad value is reported the same way from every source.
    """
    fields = _fields(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = fields[f.name]
        parts = [f.metadata.get("help", "")]
        if not _no_default(f):
            parts.append(f"(default: {_show_default(f)})")
        if env_prefix is not None:
            parts.append(f"[env {env_var(env_prefix, f.name)}]")
        help_text = " ".join(p for p in parts if p).replace("%", "%%")
        if _strip_optional(tp) is bool:
            parser.add_argument(
                flag_name(f.name),
                dest=_FLAG_DEST + f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(f.name),
                dest=_FLAG_DEST + f.name,
                default=None,
                metavar=_metavar(tp),
                help=help_text,
            )


def flags_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The config flags given on the command line: field name -> raw value."""
    return {
        key[len(_FLAG_DEST) :]: value
        for key, value in vars(ns).items()
        if key.startswith(_FLAG_DEST) and value is not None
    }


# -- internals -------------------------------------------------------------------------------------


def _fields(cls: type[Any]) -> dict[str, Any]:
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(f"{cls!r} is not a dataclass type")
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _no_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _show_default(f: dataclasses.Field[Any]) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _read_file(file: Path) -> dict[str, Any]:
    try:
        with open(file, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # tomllib decodes the file before it parses
        raise ConfigError(f"{file}: not valid TOML: not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc}") from exc


def _strip_optional(tp: Any) -> Any:
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _metavar(tp: Any) -> str:
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is tuple:
        return "A,B,..."
    if typing.get_origin(tp) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    return getattr(tp, "__name__", "VALUE").upper()


def _coerce(value: Any, tp: Any, name: str, source: str) -> Any:
    try:
        return _convert(value, tp)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {source}: bad value {value!r}: {exc}") from None


def _convert(value: Any, tp: Any) -> Any:
    if _is_union(tp):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or value == ""):
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported config type {tp}")
        return _convert(value, inner[0])
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"unsupported config type {tp} (use tuple[X, ...])")
        if isinstance(value, str):
            items = [s.strip() for s in value.split(",")] if value.strip() else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ValueError("expected a list or a comma-separated string")
        return tuple(_convert(item, args[0]) for item in items)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and value == str(choice)):
                return choice
        raise ValueError(f"expected one of {list(choices)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected a boolean (true/false, 1/0, yes/no, on/off)")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError("expected an integer, not a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError("expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError("expected a number, not a boolean")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError("expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError("expected a string")
    if tp is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value).expanduser()
        raise ValueError("expected a path")
    raise TypeError(f"unsupported config type {tp}")
