"""Pins the public surface: ``duro.__all__`` and ``duro.errors.__all__`` (adding or removing a
public name is a deliberate change that updates this test), that every listed name exists, and the
error tree with its ``retryable``/``overloaded`` flags (the tree in duro/errors.py)."""

from __future__ import annotations

import pytest

import duro
import duro.errors as errors

pytestmark = pytest.mark.timeout(10)

DURO_ALL = [
    "DurableObject", "Request", "Response", "Headers", "ObjectId", "Namespace", "Stub", "Env",
    "errors", "DuroError", "InvalidArgumentError", "InvalidIdError", "InvalidValueError",
    "MethodNotFoundError", "ObjectError", "ObjectResetError", "OverloadedError", "UnavailableError",
    "BrokenStubError", "FencedError", "CallTimeoutError", "StorageLimitError", "__version__",
]

ERRORS_ALL = [
    "DuroError", "InvalidArgumentError", "InvalidIdError", "InvalidValueError",
    "MethodNotFoundError", "ObjectError", "OverloadedError", "ObjectResetError", "UnavailableError",
    "FencedError", "CallTimeoutError", "BrokenStubError", "StorageLimitError", "to_wire",
    "from_wire",
]


def test_duro_all_is_pinned():
    assert sorted(duro.__all__) == sorted(DURO_ALL)
    assert len(duro.__all__) == len(set(duro.__all__))


def test_errors_all_is_pinned():
    assert sorted(errors.__all__) == sorted(ERRORS_ALL)
    assert len(errors.__all__) == len(set(errors.__all__))


@pytest.mark.parametrize("module", [duro, errors], ids=["duro", "duro.errors"])
def test_every_name_in_all_exists(module):
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def test_star_import_gives_exactly_all():
    ns: dict = {}
    exec("from duro import *", ns)
    assert set(ns) - {"__builtins__"} == set(duro.__all__)
    ns = {}
    exec("from duro.errors import *", ns)
    assert set(ns) - {"__builtins__"} == set(errors.__all__)


def test_top_level_errors_are_the_same_objects():
    for name in DURO_ALL:
        if name in ERRORS_ALL:
            assert getattr(duro, name) is getattr(errors, name)
    assert duro.errors is errors


@pytest.mark.parametrize("name, base, retryable, overloaded", [
    ("DuroError", Exception, False, False),
    ("InvalidArgumentError", errors.DuroError, False, False),
    ("InvalidIdError", errors.InvalidArgumentError, False, False),
    ("InvalidValueError", errors.InvalidArgumentError, False, False),
    ("MethodNotFoundError", errors.DuroError, False, False),
    ("ObjectError", errors.DuroError, False, False),
    ("OverloadedError", errors.DuroError, False, True),
    ("StorageLimitError", errors.DuroError, False, False),
    ("ObjectResetError", errors.DuroError, True, False),
    ("UnavailableError", errors.DuroError, True, False),
    ("FencedError", errors.UnavailableError, True, False),
    ("CallTimeoutError", errors.DuroError, False, False),
    ("BrokenStubError", errors.DuroError, True, False),
])
def test_error_tree_and_flags(name, base, retryable, overloaded):
    cls = getattr(errors, name)
    assert issubclass(cls, base)
    err = cls("m") if name != "ObjectError" else cls("m", remote_type="ValueError")
    assert (err.retryable, err.overloaded) == (retryable, overloaded)
    code, message, r, o, _ = errors.to_wire(err)
    back = errors.from_wire(code, message, r, o, "ValueError")
    assert type(back) is cls and str(back) == str(err)
