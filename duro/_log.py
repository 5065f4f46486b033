"""Structured logging: fixed logger names, context in ``extra``, one formatter.

Every module logs through one of a few fixed loggers, so that an operator can set levels per
subsystem without knowing the module layout::

    duro.node            the host node process (gRPC server, lifecycle)
    duro.node.runtime    object activations, gates, alarms, eviction
    duro.placement       the placement service
    duro.edge            the edge tier
    duro.client          callers: connections, routing

Context travels in ``extra`` through a :class:`ContextAdapter`, never in the message text, and
arguments are lazy (``%s``), so a disabled level costs no formatting::

    log = ContextAdapter(node_logger, node_id="n1")
    obj_log = log.bind(object_id=oid.hex(), binding="COUNTER")
    obj_log.info("activated in %.1f ms", ms)

:func:`configure_logging` installs the formatter on the root logger (one line per record; JSON
lines when ``json=True``, ``key=value`` otherwise) and prints every context field a record
carries: ``node_id``, ``object_id``, ``binding`` first, then any other ``extra`` key.
"""

from __future__ import annotations

import json as _json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import IO, Any

__all__ = [
    "NODE",
    "RUNTIME",
    "PLACEMENT",
    "EDGE",
    "CLIENT",
    "node_logger",
    "runtime_logger",
    "placement_logger",
    "edge_logger",
    "client_logger",
    "CONTEXT_FIELDS",
    "ContextAdapter",
    "StructuredFormatter",
    "configure_logging",
    "set_process_context",
    "root_stream",
    "process_context",
]

NODE = "duro.node"
RUNTIME = "duro.node.runtime"
PLACEMENT = "duro.placement"
EDGE = "duro.edge"
CLIENT = "duro.client"

node_logger = logging.getLogger(NODE)
runtime_logger = logging.getLogger(RUNTIME)
placement_logger = logging.getLogger(PLACEMENT)
edge_logger = logging.getLogger(EDGE)
client_logger = logging.getLogger(CLIENT)

CONTEXT_FIELDS = ("node_id", "object_id", "binding")

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class ContextAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that adds its context (``node_id``, ``object_id``, ``binding``, ...) to ``extra``.

    Unlike :class:`logging.LoggerAdapter`, an ``extra=`` given at the call is merged with the
    adapter's context (the call wins) instead of being replaced by it.
    """

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
        extra: Mapping[str, Any] | None = None,
        /,
        **context: Any,
    ) -> None:
        base = logger.logger if isinstance(logger, logging.LoggerAdapter) else logger
        inherited = dict(logger.extra or {}) if isinstance(logger, logging.LoggerAdapter) else {}
        super().__init__(base, {**inherited, **(extra or {}), **context})

    def bind(self, **context: Any) -> ContextAdapter:
        """A new adapter with this one's context plus ``context``."""
        return ContextAdapter(self.logger, {**(self.extra or {}), **context})

    @property
    def context(self) -> dict[str, Any]:
        return dict(self.extra or {})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def _context_of(record: logging.LogRecord) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    for key in CONTEXT_FIELDS:
        value = getattr(record, key, None)
        if value is not None:
            ctx[key] = value
    for key, value in vars(record).items():
        if key not in _STANDARD and key not in ctx and not key.startswith("_"):
            if value is not None:
                ctx[key] = value
    return ctx


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _kv(value: Any) -> str:
    text = str(_plain(value))
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return _json.dumps(text, ensure_ascii=False)
    return text


class StructuredFormatter(logging.Formatter):
    """One line per record: ``key=value`` text, or a JSON object when ``json=True``."""

    def __init__(self, *, json: bool = False) -> None:
        super().__init__()
        self.json = json

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        ctx = _context_of(record)
        exc = self.formatException(record.exc_info) if record.exc_info else None
        if record.stack_info:
            exc = (exc + "\n" if exc else "") + self.formatStack(record.stack_info)
        ts = self.formatTime(record)
        if self.json:
            doc: dict[str, Any] = {
                "ts": ts,
                "level": record.levelname,
                "logger": record.name,
                "msg": message,
            }
            doc.update({k: _plain(v) for k, v in ctx.items() if k not in doc})
            if exc:
                doc["exc"] = exc
            return _json.dumps(doc, ensure_ascii=False, default=str)
        line = f"{ts} {record.levelname} {record.name} {message}"
        if ctx:
            line += " " + " ".join(f"{k}={_kv(v)}" for k, v in ctx.items())
        if exc:
            line += "\n" + exc
        return line


class _DuroHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging installed, so that calling it again replaces it."""


def configure_logging(
    level: int | str = logging.INFO, json: bool = False, *, stream: IO[str] | None = None
) -> logging.Handler:
    """Log to ``stream`` (stderr) through :class:`StructuredFormatter`; idempotent.

    Installs one handler on the root logger (replacing one a previous call installed, leaving
    others alone) and sets the root level. Returns the handler.
    """
    if isinstance(level, str):
        name = level.upper()
        resolved = logging.getLevelName(name)
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}")
        level = resolved
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _DuroHandler):
            root.removeHandler(handler)
            handler.close()
    handler = _DuroHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(StructuredFormatter(json=json))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class _ProcessContext(logging.Filter):
    """Adds fields that hold for the whole process (a node's id) to records that lack them."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


def set_process_context(**fields: Any) -> None:
    """Stamp ``fields`` (e.g. ``node_id``) on every record the installed handler prints."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _DuroHandler):
            for f in [f for f in handler.filters if isinstance(f, _ProcessContext)]:
                handler.removeFilter(f)
            handler.addFilter(_ProcessContext(fields))


def _duro_handler() -> _DuroHandler | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _DuroHandler):
            return handler
    return None


def root_stream() -> IO[str] | None:
    """The stream :func:`configure_logging` writes to, or None if it was not called (for writers
    that batch their own lines, e.g. the edge's access log)."""
    handler = _duro_handler()
    return handler.stream if handler is not None else None


def process_context() -> tuple[bool, dict[str, str]]:
    """(whether lines are JSON, the process's context fields formatted for ``key=value`` lines
    or plain values for JSON) as :func:`configure_logging` and :func:`set_process_context` set."""
    handler = _duro_handler()
    if handler is None:
        return False, {}
    formatter = handler.formatter
    as_json = isinstance(formatter, StructuredFormatter) and formatter.json
    fields: dict[str, Any] = {}
    for f in handler.filters:
        if isinstance(f, _ProcessContext):
            fields.update(f.fields)
    if as_json:
        return True, {k: _plain(v) for k, v in fields.items() if v is not None}
    return False, {k: _kv(v) for k, v in fields.items() if v is not None}
