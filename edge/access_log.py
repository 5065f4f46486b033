"""The edge's access log: one line per HTTP request, formatted cheaply and written in batches.

A production server logs its requests, so the access log is on by default; it must not cost
what the stdlib path costs (a ``LogRecord``, the structured formatter walking its ``extra``, a
``write`` and ``flush`` per request: almost half the throughput of a busy edge, issue 12). Here:

* **Format**: one f-string per request (``ts INFO duro.edge.access <ip> "<request line>" <status>
  <bytes> <seconds>`` plus the process's context, e.g. ``node_id=... region=...``), or one JSON
  object per line when the process logs JSON; the timestamp prefix is formatted once a second.
* **Write**: lines go to a process-wide buffer, written to the log handler's stream with one
  ``write`` when it holds 64 KiB, when 0.2 s have passed since its first line, and when the edge
  stops (:func:`flush`). A crash loses at most those 0.2 s of access lines; nothing else waits
  for them.
* **Level**: the log follows the ``duro.edge.access`` logger, so the process's log level (``INFO``
  writes it, ``WARNING`` does not) and ``access_log = false`` both turn it off, as before.
* **Rotation** is the platform's: duro writes its logs to stderr (Docker's ``json-file`` driver
  with ``max-size``, journald, or Kubernetes' kubelet rotate them); ``duro dev`` writes them under
  its data directory (``logs/``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, TextIO

from aiohttp.abc import AbstractAccessLogger

from duro._log import process_context, root_stream

__all__ = ["BufferedAccessLogger", "flush", "LOGGER_NAME"]

LOGGER_NAME = "duro.edge.access"
FLUSH_BYTES = 64 * 1024
FLUSH_SECONDS = 0.2


class _Writer:
    """The process's buffer of access lines and the stream they go to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._prefix = ""

    def prefix(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self.timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.lines:
            return
        text, self.lines, self.size = "".join(self.lines), [], 0
        stream: TextIO | None = root_stream()
        if stream is None:  # no duro handler installed (a library user): the stdlib path
            logging.getLogger(LOGGER_NAME).info("%s", text.rstrip("\n"))
            return
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # stderr closed or full: the log is best effort
            pass


_writer = _Writer()


def flush() -> None:
    """Write every buffered access line now (the edge calls it when it stops)."""
    _writer.flush()


class BufferedAccessLogger(AbstractAccessLogger):
    """aiohttp's ``access_log_class``: made per connection, so it holds nothing but settings."""

    __slots__ = ("_json", "_context")

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        stream_json, context = process_context()
        self._json = stream_json
        self._context = context

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: Any, response: Any, time_: float) -> None:
        now = time.time()
        ts = f"{_writer.prefix(now)}.{int(now * 1000) % 1000:03d}Z"
        version = request.version
        line = f"{request.method} {request.path_qs} HTTP/{version.major}.{version.minor}"
        remote = request.remote or "-"
        status = response.status
        size = response.body_length
        if self._json:
            doc = {"ts": ts, "level": "INFO", "logger": LOGGER_NAME,
                   "msg": f'{remote} "{line}" {status} {size} {time_:.6f}', "remote": remote,
                   "request": line, "status": status, "bytes": size,
                   "seconds": round(time_, 6), **self._context}
            _writer.add(json.dumps(doc, ensure_ascii=False) + "\n")
            return
        ctx = "".join(f" {k}={v}" for k, v in self._context.items())
        _writer.add(f'{ts} INFO {LOGGER_NAME} {remote} "{line}" {status} {size} '
                    f"{time_:.6f}{ctx}\n")
