"""``duro.testing.Testbed``, the user-facing test harness (issue 2): app by directory, .py file or
module; ``env`` stubs on the real runtime and RocksDB; ``run_alarm``, ``evict``, ``restart``,
``storage(id)`` and ``alarm(id)``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from duro import ObjectId
from duro.errors import InvalidArgumentError, UnavailableError
from duro.testing import Testbed

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
COUNTER_APP = ROOT / "examples" / "counter"

ALARM_APP = '''
import time
from duro import DurableObject

FIRED = []


class Clock(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.instance = object()

    async def arm(self, when):
        self.ctx.storage.set_alarm(when)

    async def put(self, key, value):
        self.ctx.storage.put(key, value)

    async def alarm(self, info):
        FIRED.append((self.ctx.id.hex(), info.retry_count))
        self.ctx.storage.put("fired_at", time.time())


class Other(DurableObject):
    async def ping(self):
        return "pong"
'''


@pytest.fixture
def alarm_app(tmp_path):
    path = tmp_path / "app" / "clock.py"
    path.parent.mkdir()
    path.write_text(ALARM_APP)
    return path


@pytest.mark.parametrize("app", [COUNTER_APP, COUNTER_APP / "duro.toml", COUNTER_APP / "app.py"],
                         ids=["dir", "toml", "py"])
async def test_counter_example_by_path(tmp_path, app):
    async with Testbed(app=app, data_dir=tmp_path) as tb:
        stub = tb.env.COUNTER.get_by_name("a")
        assert await stub.increment() == 1
        assert await stub.increment(4) == 5
        assert tb.storage(stub) == {"value": 5}
        resp = await stub.fetch("http://x/counter/a/increment")
        assert resp.status == 200 and resp.json_body() == {"value": 6}


async def test_py_file_app_binds_every_class_upper_cased(tmp_path, alarm_app):
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d") as tb:
        assert sorted(tb.app.bindings) == ["CLOCK", "OTHER"]
        assert await tb.env.OTHER.get_by_name("o").ping() == "pong"


async def test_without_data_dir_uses_a_temporary_directory_removed_at_close(alarm_app):
    tb = Testbed(app=alarm_app)
    async with tb:
        data_dir = tb.data_dir
        await tb.env.CLOCK.get_by_name("c").put("k", 1)
        assert data_dir.exists()
    assert not data_dir.exists()


async def test_storage_accepts_stub_id_and_hex(tmp_path, alarm_app):
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d") as tb:
        stub = tb.env.CLOCK.get_by_name("c")
        await stub.put("b", 2)
        await stub.put("a", [1])
        expected = {"a": [1], "b": 2}
        assert tb.storage(stub) == expected
        assert list(tb.storage(stub)) == ["a", "b"]  # key order
        assert tb.storage(stub.id) == expected
        assert tb.storage(stub.id.hex()) == expected
        assert tb.storage(tb.env.CLOCK.get_by_name("never")) == {}
        with pytest.raises(InvalidArgumentError):
            tb.storage("not-an-id")


async def test_storage_shows_only_durable_state(tmp_path, alarm_app):
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d") as tb:
        stub = tb.env.CLOCK.get_by_name("c")
        await stub.put("k", 1)
        act = tb.host.activation(stub.id.raw)
        act.storage.put("pending", 1)  # written, not yet committed (no loop turn has passed)
        assert tb.storage(stub) == {"k": 1}
        await act.storage.sync()
        assert tb.storage(stub) == {"k": 1, "pending": 1}


async def test_alarm_and_run_alarm(tmp_path, alarm_app):
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d") as tb:
        mod = tb.app.module
        mod.FIRED.clear()
        stub = tb.env.CLOCK.get_by_name("c")
        assert tb.alarm(stub) is None
        when = time.time() + 3600
        await stub.arm(when)
        assert tb.alarm(stub) == pytest.approx(when, abs=0.002)
        assert tb.alarm(stub.id.hex()) == pytest.approx(when, abs=0.002)
        assert await tb.run_alarm(stub) is True
        assert mod.FIRED == [(stub.id.hex(), 0)]
        assert tb.alarm(stub) is None
        assert "fired_at" in tb.storage(stub)
        assert await tb.run_alarm(stub) is False  # nothing left to fire
        assert len(mod.FIRED) == 1


async def test_run_alarm_by_id_of_an_inactive_object(tmp_path, alarm_app):
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d") as tb:
        mod = tb.app.module
        mod.FIRED.clear()
        stub = tb.env.CLOCK.get_by_name("c")
        await stub.arm(time.time() + 3600)
        await tb.restart()
        assert tb.host.active_count == 0
        assert await tb.run_alarm(stub.id) is True  # binding found from the stored alarm
        assert len(mod.FIRED) == 1
        other = tb.env.CLOCK.get_by_name("no-alarm")
        assert await tb.run_alarm(other.id.hex()) is False


async def test_evict(tmp_path):
    async with Testbed(app=COUNTER_APP, data_dir=tmp_path) as tb:
        stub = tb.env.COUNTER.get_by_name("a")
        assert await tb.evict(stub) is False  # not active
        await stub.increment()
        act = tb.host.activation(stub.id.raw)
        assert await tb.evict(stub) is True
        assert tb.host.activation(stub.id.raw) is None
        assert await stub.increment() == 2  # the same stub reactivates it
        assert tb.host.activation(stub.id.raw) is not act


async def test_evict_flushes_pending_writes_first(tmp_path, alarm_app):
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d") as tb:
        stub = tb.env.CLOCK.get_by_name("c")
        await stub.put("k", 1)
        tb.host.activation(stub.id.raw).storage.put("late", 2)
        assert await tb.evict(stub.id) is True
        assert tb.storage(stub) == {"k": 1, "late": 2}


async def test_restart_keeps_acknowledged_writes_and_drops_instances(tmp_path):
    async with Testbed(app=COUNTER_APP, data_dir=tmp_path) as tb:
        stubs = [tb.env.COUNTER.get_by_name(f"c{i}") for i in range(10)]
        await asyncio.gather(*(s.increment(i + 1) for i, s in enumerate(stubs)))
        old_engine = tb.engine
        await tb.restart()
        assert tb.engine is not old_engine and old_engine.closed
        assert tb.host.active_count == 0
        for i, s in enumerate(stubs):
            assert tb.storage(s) == {"value": i + 1}
            assert await s.increment() == i + 2  # stubs made before the restart still work


async def test_restart_drops_writes_that_were_never_committed(tmp_path, alarm_app):
    """restart() is a crash: a write made but not yet committed is gone, as after kill -9."""
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d") as tb:
        stub = tb.env.CLOCK.get_by_name("c")
        await stub.put("k", 1)
        tb.host.activation(stub.id.raw).storage.put("uncommitted", 1)
        await tb.restart()
        assert tb.storage(stub) == {"k": 1}


async def test_restart_fails_callers_waiting_for_uncommitted_writes(tmp_path, alarm_app):
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d") as tb:
        stub = tb.env.CLOCK.get_by_name("c")
        await stub.put("k", 1)
        call = asyncio.ensure_future(stub.put("k", 2))
        for _ in range(100):
            act = tb.host.activation(stub.id.raw)
            if act is not None and act.storage._pending is not None:
                break  # the write is made; its commit has not run yet
            await asyncio.sleep(0)
        assert act.storage._pending is not None
        await tb.restart()
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(call, 5)
        assert tb.storage(stub) == {"k": 1}
        assert await tb.env.CLOCK.get_by_name("c").put("k", 3) is None
        assert tb.storage(stub) == {"k": 3}


async def test_reopening_the_data_dir_in_a_new_testbed(tmp_path):
    async with Testbed(app=COUNTER_APP, data_dir=tmp_path) as tb:
        await tb.env.COUNTER.get_by_name("a").increment(3)
    async with Testbed(app=COUNTER_APP, data_dir=tmp_path) as tb:
        assert await tb.env.COUNTER.get_by_name("a").get() == 3


async def test_alarm_fires_by_itself_after_restart(tmp_path, alarm_app):
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d") as tb:
        mod = tb.app.module
        mod.FIRED.clear()
        stub = tb.env.CLOCK.get_by_name("c")
        await stub.arm(time.time() + 0.2)
        await tb.restart()
        deadline = time.monotonic() + 5
        while not mod.FIRED and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert mod.FIRED == [(stub.id.hex(), 0)]


async def test_config_overrides_and_errors(tmp_path, alarm_app):
    async with Testbed(app=alarm_app, data_dir=tmp_path / "d", max_value_bytes=100,
                       sync_wal=False) as tb:
        assert tb.config.max_value_bytes == 100 and tb.engine.sync is False
        with pytest.raises(InvalidArgumentError):
            await tb.env.CLOCK.get_by_name("c").put("k", "x" * 200)
    with pytest.raises(TypeError):
        Testbed(app=alarm_app, no_such_option=1)


async def test_using_a_testbed_that_is_not_started_is_an_error(alarm_app):
    tb = Testbed(app=alarm_app)
    with pytest.raises(RuntimeError, match="not started"):
        tb.storage(ObjectId(b"\0" * 32))
