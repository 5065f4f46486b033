"""The edge's limits as plain logic: token buckets, byte budgets, batch splitting, config checks
(the same limits through the real listener: test_hostile_clients.py, test_socket_batches.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duro._config import ConfigError
from duro._pb import node_pb2
from duro._socket_batches import MAX_BATCH_BYTES, frame_bytes, split_frames
from duro.edge.config import EdgeConfig, load_edge_config
from duro.edge.limits import ByteBudget, ClientBuckets

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    b = ClientBuckets(rate=2, burst=5, clock=clock)
    assert [b.take("a") for _ in range(6)] == [True] * 5 + [False]
    assert b.take("b")  # another client has its own bucket
    assert b.retry_after("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert b.take("a") and not b.take("a")
    clock.now += 100  # refills up to the burst, no further
    assert [b.take("a") for _ in range(6)] == [True] * 5 + [False]


def test_bucket_table_is_bounded():
    clock = Clock()
    b = ClientBuckets(rate=1, burst=2, max_clients=100, clock=clock)
    for i in range(1000):
        b.take(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.001
    assert len(b) <= 100
    # a client still in the table keeps its (spent) bucket
    b.take("x")
    b.take("x")
    assert not b.take("x")


def test_byte_budget():
    budget = ByteBudget(10)
    assert budget.take(6) and not budget.take(5) and budget.take(4)
    budget.give(6)
    assert budget.used == 4 and budget.take(6)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 70_000), st.sampled_from([9 * MiB, 17 * MiB])),
                max_size=12),
       st.lists(st.integers(0, 10), max_size=30))
def test_batches_stay_under_the_limit_and_keep_order(sizes, tags):
    frames = [node_pb2.SocketFrame(socket_id=i, op=node_pb2.SOCKET_OP_MESSAGE, data=b"x" * n)
              for i, n in enumerate(sizes)]
    frames += [node_pb2.SocketFrame(socket_id=1000 + i, op=node_pb2.SOCKET_OP_REGISTER,
                                    tags=["t" * 256] * t, attachment=b"a" * 16384,
                                    has_attachment=True) for i, t in enumerate(tags)]
    batches = split_frames(frames)
    assert [f for b in batches for f in b] == frames
    for b in batches:
        encoded = sum(f.ByteSize() + 5 for f in b)  # + the field tag and length of each frame
        assert all(frame_bytes(f) >= f.ByteSize() for f in b)
        if len(b) > 1:
            assert encoded <= MAX_BATCH_BYTES
        assert encoded < 64 * MiB


def test_config_checks_the_limits():
    assert EdgeConfig().admin_listen == "127.0.0.1:8789"
    for env, words in (({"DURO_EDGE_SOCKET_WINDOW_BYTES": "0"}, "socket_window_bytes"),
                       ({"DURO_EDGE_MAX_CONNECTIONS": "-1"}, "max_connections"),
                       ({"DURO_EDGE_HEADER_TIMEOUT": "0"}, "header_timeout"),
                       ({"DURO_EDGE_NEW_OBJECTS_PER_SECOND": "-1"}, "new_objects_per_second"),
                       ({"DURO_EDGE_MAX_BODY_BYTES_IN_FLIGHT": "1"}, "max_body_bytes_in_flight")):
        with pytest.raises(ConfigError, match=words):
            load_edge_config(None, env=env)
    cfg = load_edge_config(None, env={"DURO_EDGE_NEW_OBJECTS_PER_SECOND": "0",
                                      "DURO_EDGE_ADMIN_LISTEN": ""})
    assert cfg.new_objects_per_second == 0 and cfg.admin_listen == ""
