"""docs/runtime.md "Alarms": one per object, persisted, fires (past times promptly), at-least-once with
retries on exception (exponential backoff, at most 6 retries, ``retry_count``/``is_retry``),
``delete_alarm`` works inside ``alarm()``, ``get_alarm`` is None inside it, survives restarts."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from duro.errors import InvalidArgumentError
from duro.node.runtime import alarm_policy
from duro.testing import Testbed

pytestmark = pytest.mark.timeout(30)

BACKOFF = 0.02


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(alarm_policy, "ALARM_BACKOFF_S", BACKOFF)


@pytest.fixture
def alarmed(tb):
    return tb.env.ALARMED.get_by_name("a")


async def test_alarm_in_the_past_fires_promptly(tb, objs, alarmed, wait_for):
    t0 = time.monotonic()
    await alarmed.set_alarm(time.time() - 60)
    await wait_for(lambda: len(objs.ALARMS) == 1, timeout=3)
    assert objs.ALARMS[0][4] - t0 < 2.0
    _, retry, is_retry, inside, _, _ = objs.ALARMS[0]
    assert (retry, is_retry, inside) == (0, False, None)
    await wait_for(lambda: tb.alarm(alarmed) is None)  # deleted once alarm() succeeded
    assert tb.storage(alarmed) == {"fired": 1}


async def test_alarm_a_short_time_ahead_fires_at_its_time(tb, objs, alarmed, wait_for):
    when = time.time() + 0.3
    assert await alarmed.set_alarm(when) == pytest.approx(when, abs=0.002)
    assert tb.alarm(alarmed) == pytest.approx(when, abs=0.002)
    await wait_for(lambda: len(objs.ALARMS) == 1, timeout=5)
    fired_wall = time.time() - (time.monotonic() - objs.ALARMS[0][4])
    assert fired_wall >= when - 0.05
    assert await alarmed.get_alarm() is None
    assert tb.alarm(alarmed) is None


async def test_datetime_alarm_aware_and_naive_utc(tb, objs, alarmed, wait_for):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    expected = pytest.approx(when.timestamp(), abs=0.002)
    assert await alarmed.set_alarm_iso(when.isoformat()) == expected
    naive = when.replace(tzinfo=None)  # naive datetimes are UTC
    assert await alarmed.set_alarm_iso(naive.isoformat()) == expected
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=0.1)
    await alarmed.set_alarm_iso(soon.isoformat())
    await wait_for(lambda: len(objs.ALARMS) == 1, timeout=5)


async def test_one_alarm_per_object_set_replaces(tb, objs, alarmed):
    await alarmed.set_alarm(time.time() + 3600)
    later = time.time() + 7200
    assert await alarmed.set_alarm(later) == pytest.approx(later, abs=0.002)
    assert tb.alarm(alarmed) == pytest.approx(later, abs=0.002)


async def test_failing_alarm_is_retried_with_backoff_then_given_up(tb, objs, alarmed, wait_for,
                                                                   fast_backoff):
    await alarmed.set_mode("fail")
    await alarmed.set_alarm(time.time() - 1)
    await wait_for(lambda: len(objs.ALARMS) == 7, timeout=10)
    retries = [(a[1], a[2]) for a in objs.ALARMS]
    assert retries == [(0, False)] + [(i, True) for i in range(1, 7)]
    times = [a[4] for a in objs.ALARMS]
    gaps = [b - a for a, b in zip(times, times[1:])]
    for i, gap in enumerate(gaps):  # exponential backoff: BACKOFF * 2**retry before retry+1
        assert gap >= BACKOFF * 2**i - 0.005, (i, gaps)
    assert gaps[-1] > gaps[0] * 4
    await wait_for(lambda: tb.alarm(alarmed) is None)  # gave up: alarm removed
    await asyncio.sleep(BACKOFF * 2**7)
    assert len(objs.ALARMS) == 7  # no 8th attempt
    assert await alarmed.get_alarm() is None


async def test_retry_alarm_is_durable_and_reported(tb, objs, alarmed, wait_for, monkeypatch):
    monkeypatch.setattr(alarm_policy, "ALARM_BACKOFF_S", 3600.0)
    await alarmed.set_mode("fail")
    await alarmed.set_alarm(time.time() - 1)
    await wait_for(lambda: len(objs.ALARMS) == 1)
    await wait_for(lambda: tb.alarm(alarmed) is not None and tb.alarm(alarmed) > time.time() + 3000)
    await tb.restart()
    assert tb.alarm(alarmed) > time.time() + 3000
    await alarmed_stub(tb).set_mode("ok")
    assert await tb.run_alarm(alarmed) is True
    assert objs.ALARMS[-1][1:3] == (1, True)  # retry count persisted across the restart


def alarmed_stub(tb):
    return tb.env.ALARMED.get_by_name("a")


async def test_delete_alarm_inside_alarm(tb, objs, alarmed, wait_for):
    await alarmed.set_mode("delete_inside")
    await alarmed.set_alarm(time.time() - 1)
    await wait_for(lambda: len(objs.ALARMS) == 1)
    await wait_for(lambda: tb.storage(alarmed).get("fired") == 1)
    assert tb.alarm(alarmed) is None
    assert await alarmed.get_alarm() is None


async def test_delete_alarm_inside_failing_alarm_is_not_retried(tb, objs, alarmed, wait_for,
                                                                fast_backoff):
    await alarmed.set_mode("delete_then_fail")
    await alarmed.set_alarm(time.time() - 1)
    await wait_for(lambda: len(objs.ALARMS) == 1)
    await asyncio.sleep(BACKOFF * 8)
    assert len(objs.ALARMS) == 1
    assert tb.alarm(alarmed) is None


async def test_set_alarm_inside_alarm_rearms(tb, objs, alarmed, wait_for):
    await alarmed.set_mode("rearm")
    await alarmed.set_alarm(time.time() - 1)
    await wait_for(lambda: len(objs.ALARMS) == 3, timeout=5)
    await wait_for(lambda: tb.alarm(alarmed) is None)
    assert [a[1] for a in objs.ALARMS] == [0, 0, 0]


async def test_get_alarm_is_none_inside_alarm(tb, objs, alarmed, wait_for):
    await alarmed.set_alarm(time.time() + 3600)
    assert await tb.run_alarm(alarmed) is True
    assert objs.ALARMS[0][3] is None


async def test_alarm_survives_restart_and_fires_after_it(tb, objs, wait_for):
    stub = tb.env.ALARMED.get_by_name("a")
    when = time.time() + 0.4
    await stub.set_alarm(when)
    await tb.restart()
    assert objs.CTORS["Alarmed"] == 1
    assert tb.host.active_count == 0
    assert tb.alarm(stub) == pytest.approx(when, abs=0.002)
    await wait_for(lambda: len(objs.ALARMS) == 1, timeout=5)
    assert objs.CTORS["Alarmed"] == 2  # fired on a new instance, found via the alarm index
    await wait_for(lambda: tb.alarm(stub) is None)


async def test_alarm_that_came_due_while_the_node_was_down_fires_at_start(tb, objs, wait_for):
    stub = tb.env.ALARMED.get_by_name("a")
    await stub.set_alarm(time.time() + 0.2)
    data_dir, app = tb.data_dir, tb.app
    await tb.close()  # node down...
    time.sleep(0.4)  # ...while the alarm comes due
    async with Testbed(app=app, data_dir=data_dir) as tb2:
        assert tb2.alarm(stub) is not None
        await wait_for(lambda: len(objs.ALARMS) == 1, timeout=5)
        await wait_for(lambda: tb2.alarm(stub) is None)


async def test_run_alarm_fires_now(tb, objs, alarmed):
    await alarmed.set_alarm(time.time() + 3600)
    assert await tb.run_alarm(alarmed) is True
    assert len(objs.ALARMS) == 1
    assert tb.alarm(alarmed) is None
    assert await tb.run_alarm(alarmed) is False  # no alarm left
    assert len(objs.ALARMS) == 1


async def test_object_without_alarm_handler(tb, objs, wait_for):
    stub = tb.env.NOALARM.get_by_name("n")
    await stub.set_alarm(time.time() - 1)
    await wait_for(lambda: tb.alarm(stub) is None)


@pytest.mark.parametrize("bad", [time.time() * 1000, -1, float("nan"), "soon", True, None])
async def test_set_alarm_bad_values_raise_and_write_nothing(tb, objs, alarmed, bad):
    with pytest.raises(InvalidArgumentError):
        await alarmed.set_alarm(bad)
    assert tb.alarm(alarmed) is None


async def test_milliseconds_message_is_clear(tb, objs, alarmed):
    with pytest.raises(InvalidArgumentError, match="milliseconds"):
        await alarmed.set_alarm(time.time() * 1000)


async def test_alarm_that_cannot_run_yet_is_retried_not_dropped(tb, objs, alarmed, wait_for,
                                                                 monkeypatch):
    """A due alarm whose object is unavailable at that moment (node still joining the cluster,
    fenced, object reset) stays stored and is tried again until it runs."""
    from duro.errors import UnavailableError
    from duro.node.runtime import alarms

    monkeypatch.setattr(alarms, "RETRY_UNAVAILABLE_MS", 50)
    host = tb.host
    real = host.invoke
    refused = []

    async def unavailable_twice(call):  # noqa: ANN001, ANN202
        if call.kind == 2 and len(refused) < 2:  # CallKind.ALARM
            refused.append(call)
            raise UnavailableError("node is not serving yet")
        return await real(call)

    monkeypatch.setattr(host, "invoke", unavailable_twice)
    await alarmed.set_alarm(time.time() - 1)
    await wait_for(lambda: len(objs.ALARMS) == 1, timeout=5)
    assert len(refused) == 2 and host.alarms.retried == 2
