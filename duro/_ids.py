"""Object ids.

An id is 32 bytes, shown as 64 lower-case hex digits: a 16-byte body and a 16-byte tag that is a
keyed hash (BLAKE2b) of the body under the namespace's key. So:

* ``id_from_name(name)`` is deterministic: body = keyed hash of the name.
* ``new_unique_id()`` is random: body = 16 random bytes.
* ``id_from_string(hex)`` checks length, hex digits and the tag, so an id of another namespace (or a
  mistyped one) is refused with :class:`~duro.errors.InvalidIdError` instead of silently creating a
  new object.

The namespace key is derived from the class name of the binding (not the binding name), the way a
Durable Objects namespace belongs to its class.
"""

from __future__ import annotations

import hashlib
import os

from duro.errors import InvalidIdError

__all__ = ["ObjectId", "namespace_key", "in_namespace"]

_BODY = 16
_TAG = 16


def namespace_key(class_name: str) -> bytes:
    return hashlib.blake2b(class_name.encode(), digest_size=32, person=b"duro-ns-v1").digest()


def _tag(ns_key: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_TAG, key=ns_key, person=b"duro-tag").digest()


def in_namespace(ns_key: bytes, raw: bytes) -> bool:
    """Whether the 32-byte id ``raw`` was made by the namespace of ``ns_key`` (its tag)."""
    return len(raw) == _BODY + _TAG and _tag(ns_key, raw[:_BODY]) == raw[_BODY:]


class ObjectId:
    """The identity of one object in one namespace."""

    __slots__ = ("raw", "name", "location_hint")

    def __init__(self, raw: bytes, name: str | None = None, location_hint: str | None = None):
        self.raw = raw
        self.name = name
        self.location_hint = location_hint

    @classmethod
    def from_name(cls, ns_key: bytes, name: str) -> ObjectId:
        if not isinstance(name, str):
            raise InvalidIdError(f"object name must be a str, not {type(name).__name__}")
        body = hashlib.blake2b(
            name.encode("utf-8", "surrogatepass"), digest_size=_BODY, key=ns_key, person=b"duro-name"
        ).digest()
        return cls(body + _tag(ns_key, body), name=name)

    @classmethod
    def unique(cls, ns_key: bytes, location_hint: str | None = None) -> ObjectId:
        body = os.urandom(_BODY)
        return cls(body + _tag(ns_key, body), location_hint=location_hint)

    @classmethod
    def from_string(cls, ns_key: bytes, text: str) -> ObjectId:
        if not isinstance(text, str):
            raise InvalidIdError(f"object id must be a str, not {type(text).__name__}")
        if len(text) != 2 * (_BODY + _TAG):
            raise InvalidIdError(
                f"object id must be {2 * (_BODY + _TAG)} hex digits, got {len(text)} characters"
            )
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise InvalidIdError(f"object id {text!r} is not hexadecimal") from None
        return cls.from_bytes(ns_key, raw)

    @classmethod
    def from_bytes(cls, ns_key: bytes, raw: bytes) -> ObjectId:
        if len(raw) != _BODY + _TAG:
            raise InvalidIdError(f"object id must be {_BODY + _TAG} bytes, got {len(raw)}")
        if not in_namespace(ns_key, raw):
            raise InvalidIdError("object id does not belong to this namespace")
        return cls(raw)

    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        extra = f" name={self.name!r}" if self.name is not None else ""
        return f"<ObjectId {self.raw.hex()[:16]}…{extra}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectId) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def equals(self, other: ObjectId) -> bool:
        return self == other
