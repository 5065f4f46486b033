"""JSON from untrusted callers, read as JavaScript's ``JSON.parse`` reads it.

Python's :func:`json.loads` accepts ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON
(RFC 8259): a counter incremented by ``NaN`` would then answer ``{"value": NaN}``, which no JSON
parser reads back. It also lets :class:`RecursionError` escape for deeply nested input.
:func:`loads` refuses both with a :class:`ValueError` (``json.JSONDecodeError`` for malformed
text), the one exception type a caller has to expect. Used by the Gateway for ``args_json`` and
``kwargs_json`` and by :meth:`duro.Request.json`.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads", "NotJsonError"]


class NotJsonError(ValueError):
    """Text that is not JSON, or JSON this reader refuses (non-finite numbers, deep nesting)."""


def _refuse_constant(name: str) -> Any:
    raise NotJsonError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e999: valid JSON syntax, not a finite double
        raise NotJsonError(f"{text[:40]} does not fit in a 64-bit float")
    return value


def loads(text: str | bytes) -> Any:
    """Parse ``text`` as strict JSON; :class:`ValueError` (:class:`NotJsonError` or
    :class:`json.JSONDecodeError`) for anything else."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise NotJsonError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise NotJsonError(f"JSON text is not valid UTF-8: {exc}") from None
    except TypeError as exc:  # not str/bytes
        raise NotJsonError(str(exc)) from None
