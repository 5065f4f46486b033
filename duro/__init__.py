"""duro: Durable Objects for Python.

The public object API. Everything a user writes an object with is importable from here::

    from duro import DurableObject, Request, Response
"""

from __future__ import annotations

from duro import errors
from duro._http import Headers, Request, Response
from duro._ids import ObjectId
from duro._namespace import Env, Namespace, Stub
from duro._object import DurableObject
from duro.errors import (
    BrokenStubError,
    CallTimeoutError,
    DuroError,
    FencedError,
    InvalidArgumentError,
    InvalidIdError,
    InvalidValueError,
    MethodNotFoundError,
    ObjectError,
    ObjectResetError,
    OverloadedError,
    StorageLimitError,
    UnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "DurableObject",
    "Request",
    "Response",
    "Headers",
    "ObjectId",
    "Namespace",
    "Stub",
    "Env",
    "errors",
    "DuroError",
    "InvalidArgumentError",
    "InvalidIdError",
    "InvalidValueError",
    "MethodNotFoundError",
    "ObjectError",
    "ObjectResetError",
    "OverloadedError",
    "StorageLimitError",
    "UnavailableError",
    "BrokenStubError",
    "FencedError",
    "CallTimeoutError",
    "__version__",
]
