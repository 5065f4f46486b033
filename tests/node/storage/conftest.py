from __future__ import annotations

from pathlib import Path

import pytest

from duro.testing import Testbed

KV_APP = Path(__file__).parent / "apps" / "kv.py"


@pytest.fixture
async def tb(tmp_path):
    async with Testbed(app=KV_APP, data_dir=tmp_path / "data") as t:
        yield t


@pytest.fixture
def kv(tb):
    """A fresh KV stub (a new object per test)."""
    return tb.env.KV.get_by_name("kv-under-test")
