"""gRPC transport settings, in one place: message limits, channel and server options, and the
metadata and header names both ends of a connection must agree on.

Every gRPC server and channel in duro takes its options from here, so the 64 MiB message limit,
the keepalive pings and the reconnect backoff are set once (docs/architecture.md, "Layout").
"""

from __future__ import annotations

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_VALUE_BYTES",
    "MAX_BATCH_BYTES",
    "EDGE_ID_METADATA",
    "NODE_ID_METADATA",
    "SOCKET_HEADER",
    "PLACEMENT_BACKOFF_MS",
    "PORT_NOT_SHARED",
    "message_limits",
    "server_options",
    "channel_options",
    "placement_channel_options",
]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""gRPC's largest message, both ways, on every channel and server of the cluster."""

MAX_VALUE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
"""The largest payload of one call or result: a message less room for the fields around it."""

MAX_BATCH_BYTES = MAX_MESSAGE_BYTES // 2
"""Where a batched stream (``duro._batched``) cuts its batches: well below the message limit, so
that a batch's framing and size estimates never push a message over it."""

EDGE_ID_METADATA = "duro-edge-id"
"""gRPC metadata naming the edge on its ``NodeSockets.Sockets`` stream to a node."""

NODE_ID_METADATA = "duro-node-id"
"""gRPC metadata naming the caller on a replication stream (a node, or ``placement:<id>``)."""

SOCKET_HEADER = "Duro-Socket"
"""HTTP header with which the edge marks a WebSocket upgrade it forwards to an object."""

# A restarted placement leader must be reached again within a second of being elected: with gRPC's
# default backoff (1 s growing 1.6x to 120 s) routers kept failing to place new objects for 11-17 s
# after the only placement replica restarted, although a leader was back within 1 s.
PLACEMENT_BACKOFF_MS = 1_000


PORT_NOT_SHARED = ("grpc.so_reuseport", 0)
"""Two servers must never share a port silently (gRPC turns SO_REUSEPORT on by default)."""


def message_limits(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """The send and receive limits, for servers and channels that need nothing else."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def _reconnect_backoff(max_ms: int) -> list[tuple[str, int]]:
    # A restarted peer should be reached again within a fraction of a second, not after gRPC's
    # default backoff of up to two minutes.
    return [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", max_ms),
    ]


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Channel arguments for a node's server (calls, sockets, replication, migration)."""
    return [
        *message_limits(max_message_bytes),
        # Ping idle callers so dead peers (no FIN, e.g. a partition) are noticed.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept the callers' keepalive pings (channel_options) without GOAWAY.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
        PORT_NOT_SHARED,
    ]


def channel_options(
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    *,
    keepalive_ms: int = 20_000,
    max_backoff_ms: int = 2_000,
) -> list[tuple[str, int]]:
    """Channel arguments for connections to nodes: keepalive pings every ``keepalive_ms`` (a
    dead node is noticed within 1.5 times that) and a reconnect backoff capped at
    ``max_backoff_ms``."""
    return [
        *message_limits(max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_ms // 2),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        *_reconnect_backoff(max_backoff_ms),
    ]


def placement_channel_options() -> list[tuple[str, int]]:
    """Channel arguments for connections to the placement service: the reconnect backoff capped
    at :data:`PLACEMENT_BACKOFF_MS`, and no keepalive pings (its calls are rare and short, and
    its server would answer idle pings with GOAWAY ``too_many_pings``)."""
    return _reconnect_backoff(PLACEMENT_BACKOFF_MS)
