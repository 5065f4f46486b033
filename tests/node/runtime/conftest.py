from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from duro.testing import Testbed

APP = Path(__file__).parent / "apps" / "objs.py"


@pytest.fixture
async def tb(tmp_path):
    async with Testbed(app=APP, data_dir=tmp_path / "data") as t:
        t.app.module.reset()
        yield t
        t.app.module.reset()


@pytest.fixture
def objs(tb):
    """The app module the objects report to (LOG, CTORS, EVENTS, FLAGS, ALARMS)."""
    return tb.app.module


@pytest.fixture
def wait_for():
    return _wait_for


async def _wait_for(predicate, timeout=5.0, interval=0.005):
    """Poll until ``predicate()`` is true (generous bound), else fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
