"""Suite-wide: mTLS by default (tests/helpers/tls.py).

Every in-process client of the tests presents the session's admin certificate (``DURO_TLS_*``),
and each test starts from that: a test that runs a node, placement or edge in-process (which
sets the process's certificate, ``duro.tls.configure``) does not leave it to the next one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from duro import tls
from tests.helpers.tls import admin_tls, tls_enabled

if tls_enabled():
    os.environ.update(admin_tls().env())
else:
    for _k in ("DURO_TLS_CA", "DURO_TLS_CERT", "DURO_TLS_KEY"):
        os.environ.pop(_k, None)


@pytest.fixture(autouse=True)
def _process_certificate() -> Iterator[None]:
    tls.reset()
    yield
    tls.reset()


@pytest.fixture
def plaintext() -> None:
    """This test's in-process clients speak plaintext (to servers it runs in-process without
    TLS, testing something other than TLS)."""
    tls.configure(None)
