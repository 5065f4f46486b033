"""The duro error tree.

Every error a caller of an object can see is a :class:`DuroError`. Two flags say what to do
about it, as in Cloudflare Durable Objects:

* ``retryable``: the call may be retried as is (the object was not reached, or was reset before
  the call had any effect that a caller could observe).
* ``overloaded``: the object is overloaded; retrying right away makes it worse.

::

    DuroError
     ├── InvalidArgumentError        bad key, value, id, method name, config (never retryable)
     │    ├── InvalidIdError
     │    └── InvalidValueError
     ├── MethodNotFoundError         no such public method on the object
     ├── ObjectError                 the object's own code raised (remote_type, message)
     ├── OverloadedError             too many queued events for one object   (overloaded)
     ├── StorageLimitError           a storage limit was reached: the object's storage quota,
     │                               or a list() result larger than the node returns
     ├── ObjectResetError            the instance was reset: constructor failed, storage failed,
     │                               ownership lost; the call did not complete     (retryable)
     ├── UnavailableError            the object cannot be reached now (node down, lease lost,
     │    │                          shutting down, too many redirects)            (retryable)
     │    └── FencedError            the node no longer owns the object: a write was refused
     ├── CallTimeoutError            the call took longer than its deadline
     └── BrokenStubError             the stub failed before; make a new one         (retryable)

Errors cross process boundaries as ``(code, message, retryable, overloaded, remote_type)``;
:func:`to_wire` and :func:`from_wire` are the only translation, and the gRPC adapters use them.
"""

from __future__ import annotations

__all__ = [
    "DuroError",
    "InvalidArgumentError",
    "InvalidIdError",
    "InvalidValueError",
    "MethodNotFoundError",
    "ObjectError",
    "OverloadedError",
    "StorageLimitError",
    "ObjectResetError",
    "UnavailableError",
    "FencedError",
    "CallTimeoutError",
    "BrokenStubError",
    "to_wire",
    "from_wire",
]


class DuroError(Exception):
    """Base of every duro error."""

    code = "internal"
    retryable = False
    overloaded = False

    def __init__(self, message: str = "", *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message or self.code


class InvalidArgumentError(DuroError, ValueError):
    code = "invalid_argument"


class InvalidIdError(InvalidArgumentError):
    code = "invalid_id"


class InvalidValueError(InvalidArgumentError):
    code = "invalid_value"


class MethodNotFoundError(DuroError, AttributeError):
    code = "method_not_found"


class ObjectError(DuroError):
    """The object's code raised. ``remote_type`` is the exception's class name."""

    code = "object_error"

    def __init__(self, message: str = "", *, remote_type: str = "Exception") -> None:
        super().__init__(message)
        self.remote_type = remote_type

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.message}"


class OverloadedError(DuroError):
    code = "overloaded"
    overloaded = True


class StorageLimitError(DuroError):
    """A storage limit was reached (docs/storage.md, "Limits"): a write that would take the
    object past its storage quota, or a ``list()`` whose result would exceed the bytes a node
    returns at once. Nothing of the call was written; retrying the same call fails again."""

    code = "storage_limit"


class ObjectResetError(DuroError):
    code = "object_reset"
    retryable = True


class UnavailableError(DuroError):
    code = "unavailable"
    retryable = True


class FencedError(UnavailableError):
    code = "fenced"


class CallTimeoutError(DuroError, TimeoutError):
    code = "timeout"


class BrokenStubError(DuroError):
    code = "broken_stub"
    retryable = True


_BY_CODE: dict[str, type[DuroError]] = {
    cls.code: cls
    for cls in (
        DuroError,
        InvalidArgumentError,
        InvalidIdError,
        InvalidValueError,
        MethodNotFoundError,
        ObjectError,
        OverloadedError,
        StorageLimitError,
        ObjectResetError,
        UnavailableError,
        FencedError,
        CallTimeoutError,
        BrokenStubError,
    )
}


def to_wire(err: BaseException) -> tuple[str, str, bool, bool, str]:
    """Describe any exception as ``(code, message, retryable, overloaded, remote_type)``.

    An exception that is not a :class:`DuroError` came from user code and becomes an
    ``object_error`` carrying its class name.
    """
    if isinstance(err, ObjectError):
        return (err.code, err.message, err.retryable, err.overloaded, err.remote_type)
    if isinstance(err, DuroError):
        return (err.code, err.message, err.retryable, err.overloaded, "")
    return (ObjectError.code, str(err), False, False, type(err).__name__)


def from_wire(
    code: str, message: str, retryable: bool, overloaded: bool, remote_type: str = ""
) -> DuroError:
    """Rebuild an error from its wire form (unknown codes become a plain :class:`DuroError`)."""
    cls = _BY_CODE.get(code, DuroError)
    if cls is ObjectError:
        err: DuroError = ObjectError(message, remote_type=remote_type or "Exception")
    else:
        err = cls(message)
        if err.code != code:
            err.code = code  # keep an unknown code visible to the caller
    err.retryable = retryable
    err.overloaded = overloaded
    return err
