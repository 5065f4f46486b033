"""The edge's configuration: one frozen dataclass, loaded file < env (``DURO_EDGE_*``) < flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from duro._config import load_config
from duro.tls import TlsConfig, from_settings

__all__ = ["EdgeConfig", "load_edge_config", "ENV_PREFIX"]

ENV_PREFIX = "DURO_EDGE_"
MiB = 1024 * 1024


@dataclass(frozen=True)
class EdgeConfig:
    """One edge process (``duro edge``)."""

    app: str = field(default="examples", metadata={"help": "app directory, duro.toml or module"})
    etcd: str = field(default="127.0.0.1:2379", metadata={"help": "etcd endpoint host:port"})
    cluster: str = field(default="duro", metadata={"help": "cluster name (etcd key prefix)"})
    region: str = field(default="local", metadata={"help": "region every call is marked with"})
    edge_id: str = field(default="", metadata={"help": "edge id (default: random per process)"})
    http_listen: str = field(default="127.0.0.1:8787", metadata={"help": "HTTP/WS host:port"})
    grpc_listen: str = field(
        default="127.0.0.1:0", metadata={"help": "gRPC Gateway host:port ('' = off)"}
    )
    gateway_tokens_file: Path | None = field(
        default=None,
        metadata={"help": "TOML file of the Gateway's bearer tokens, re-read when it changes "
                          "(docs/security.md); no tokens at all: every Gateway call is refused"},
    )
    gateway_tokens: str = field(
        default="",
        metadata={"help": "Gateway tokens allowed everything the app exposes, comma-separated, "
                          "each the token or sha256:<hex> (give it as an environment variable, "
                          "not a flag: flags show in ps)"},
    )
    directory_cache: int = field(
        default=100_000,
        metadata={"help": "object directory entries this edge caches (LRU; docs/directory.md)"},
    )
    tls_ca: Path | None = field(
        default=None, metadata={"help": "cluster CA certificate, PEM (mTLS; docs/security.md)"})
    tls_cert: Path | None = field(
        default=None, metadata={"help": "this process's certificate, PEM (duro certs)"})
    tls_key: Path | None = field(default=None, metadata={"help": "its private key, PEM"})
    admin_listen: str = field(
        default="127.0.0.1:8789",
        metadata={"help": "admin HTTP host:port: /health and /metrics ('' = off; never public)"},
    )
    console_admin_tokens_file: Path | None = field(
        default=None,
        metadata={"help": "TOML file of the bearer tokens that may act from the console "
                          "(migrate, drain, undrain; format of the Gateway tokens file; "
                          "docs/console.md); none: the console only reads"},
    )
    console_admin_tls_cert: Path | None = field(
        default=None,
        metadata={"help": "an admin certificate (duro certs --admin), PEM: the console's actions "
                          "are made with it (with TLS; CA: tls_ca)"},
    )
    console_admin_tls_key: Path | None = field(
        default=None, metadata={"help": "its private key, PEM"})
    console_interval: float = field(
        default=1.0,
        metadata={"help": "seconds between the console's cluster samples while a page is open"},
    )
    static_dir: str = field(
        default="", metadata={"help": "static files served at / (default: the app's static/)"}
    )
    call_timeout: float = field(default=30.0, metadata={"help": "seconds per call to an object"})
    max_body_bytes: int = field(default=16 * MiB, metadata={"help": "largest HTTP request body"})
    stream_threshold: int = field(
        default=1 * MiB,
        metadata={"help": "request bodies up to this many bytes travel whole inside the call; "
                          "larger ones stream to the object (async for chunk in request)"},
    )
    max_message_bytes: int = field(
        default=32 * MiB, metadata={"help": "largest WebSocket message (close 1009 beyond)"}
    )
    max_socket_buffer_bytes: int = field(
        default=4 * MiB,
        metadata={"help": "bytes queued for one client that does not read before it is closed "
                          "with 1008 (a single larger message is still allowed)"},
    )
    socket_window: int = field(
        default=64, metadata={"help": "messages of one socket in flight to its object"}
    )
    socket_window_bytes: int = field(
        default=1 * MiB,
        metadata={"help": "message bytes of one socket in flight to its object (one larger "
                          "message is allowed when none is in flight)"},
    )
    socket_inflight_bytes: int = field(
        default=256 * MiB,
        metadata={"help": "client message bytes in flight to objects over all of this edge's "
                          "sockets; beyond it the edge stops reading clients until some are "
                          "handled"},
    )
    max_connections: int = field(
        default=0,
        metadata={"help": "open client connections (HTTP and WebSocket) this edge holds; "
                          "beyond it new ones get 503 and are closed (0 = the process's "
                          "open-file limit less 256)"},
    )
    max_requests: int = field(
        default=4096,
        metadata={"help": "HTTP requests handled at once; beyond it 503 (WebSockets count "
                          "only until their upgrade)"},
    )
    max_body_bytes_in_flight: int = field(
        default=64 * MiB,
        metadata={"help": "request body bytes this edge holds at once over all requests; "
                          "beyond it 503"},
    )
    header_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds a connection has to send a complete request head (from "
                          "its start, or from the first byte of a later head): else it is "
                          "closed"},
    )
    idle_timeout: float = field(
        default=75.0,
        metadata={"help": "seconds a kept-alive HTTP connection may wait for its next request"},
    )
    body_timeout: float = field(
        default=20.0,
        metadata={"help": "seconds to read a request body, plus one second per "
                          "body_min_rate bytes received; else 408"},
    )
    body_min_rate: int = field(
        default=64 * 1024,
        metadata={"help": "bytes per second a slow body must keep up (see body_timeout)"},
    )
    new_objects_per_second: float = field(
        default=50.0,
        metadata={"help": "objects one client (remote address) may create per second through "
                          "this edge; beyond it 429 (0 = no limit)"},
    )
    new_objects_burst: int = field(
        default=200,
        metadata={"help": "objects one client may create at once before "
                          "new_objects_per_second applies"},
    )
    node_loss_grace: float = field(
        default=30.0,
        metadata={"help": "seconds sockets stay open while their node is unreachable, before "
                          "they are closed with 1012 (service restart)"},
    )
    ws_heartbeat: float = field(
        default=0.0,
        metadata={"help": "seconds between WebSocket pings to each client (0 = none: dead "
                          "clients are found by TCP keepalive, ~60 s, at no memory cost)"},
    )
    access_log: bool = field(default=True, metadata={"help": "log one line per HTTP request"})
    log_level: str = field(default="INFO", metadata={"help": "logging level"})
    log_json: bool = field(default=False, metadata={"help": "JSON log lines"})

    def __post_init__(self) -> None:
        if self.socket_window < 1:
            raise ValueError("socket_window must be at least 1")
        if self.directory_cache < 1:
            raise ValueError("directory_cache must be at least 1 entry")
        if self.max_message_bytes < 1 or self.max_message_bytes > 32 * MiB:
            raise ValueError("max_message_bytes must be in 1..32 MiB (docs/edge.md)")
        for name in ("socket_window_bytes", "socket_inflight_bytes", "max_requests",
                     "max_body_bytes_in_flight", "body_min_rate", "new_objects_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_connections < 0:
            raise ValueError("max_connections must be 0 (automatic) or more")
        if min(self.header_timeout, self.body_timeout, self.idle_timeout) <= 0:
            raise ValueError("header_timeout, body_timeout and idle_timeout must be more than "
                             "0 seconds")
        if self.new_objects_per_second < 0:
            raise ValueError("new_objects_per_second must be 0 (no limit) or more")
        if self.stream_threshold < 0:
            raise ValueError("stream_threshold must be 0 (stream every body) or more")
        if self.max_body_bytes_in_flight < min(self.max_body_bytes, self.stream_threshold + 1):
            raise ValueError("max_body_bytes_in_flight must be at least the body an edge "
                             "buffers: min(max_body_bytes, stream_threshold + 1)")
        self.tls  # half the TLS settings: an error now, not at the first connection
        if bool(self.console_admin_tls_cert) != bool(self.console_admin_tls_key):
            raise ValueError("console_admin_tls_cert and console_admin_tls_key go together")
        if self.console_interval < 0.1:
            raise ValueError("console_interval must be at least 0.1 seconds")

    @property
    def tls(self) -> TlsConfig | None:
        """The edge's certificate for its connections into the cluster (duro.tls), or None:
        plaintext. The edge's public listeners (HTTP, Gateway) do not use it."""
        return from_settings(self.tls_ca, self.tls_cert, self.tls_key)


def load_edge_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> EdgeConfig:
    return load_config(
        EdgeConfig, file=file, env=os.environ if env is None else env, env_prefix=ENV_PREFIX,
        overrides=overrides,
    )


def split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


