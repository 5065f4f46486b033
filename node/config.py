"""The host node's configuration: one frozen dataclass, loaded file < env (``DURO_NODE_*``) < flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from duro.tls import TlsConfig, check_plaintext, from_settings

__all__ = ["NodeConfig", "RuntimeConfig"]


@dataclass(frozen=True)
class RuntimeConfig:
    """What the object runtime needs (also used alone by ``duro.testing.Testbed``)."""

    sync_wal: bool = field(
        default=True,
        metadata={"help": "fsync the WAL on every group commit; false = unsynced WAL: durable "
                          "against a process crash, NOT against power loss"},
    )
    idle_timeout: float = field(
        default=30.0, metadata={"help": "seconds an idle object stays in memory"}
    )
    max_active_objects: int = field(
        default=100_000, metadata={"help": "objects in memory at most (LRU eviction beyond)"}
    )
    memory_budget_mb: int = field(
        default=0, metadata={"help": "evict idle objects while RSS exceeds this (0 = off)"}
    )
    max_queued_events: int = field(
        default=1000, metadata={"help": "events waiting for one object before it is overloaded"}
    )
    max_value_bytes: int = field(
        default=128 * 1024, metadata={"help": "largest storage value, encoded"}
    )
    max_storage_bytes: int = field(
        default=10 * 1000**3,
        metadata={"help": "storage quota of one object: its keys' UTF-8 bytes plus its encoded "
                          "values, in bytes (default 10 GB, as Cloudflare's SQLite-backed "
                          "Durable Objects; 0 = no quota; docs/storage.md)"},
    )
    max_list_bytes: int = field(
        default=128 * 1024 * 1024,
        metadata={"help": "most bytes (keys + encoded values) one storage.list() returns; a "
                          "larger result is refused with a hint to paginate (0 = no cap)"},
    )
    block_concurrency_timeout: float = field(
        default=30.0, metadata={"help": "seconds block_concurrency_while may run before a reset"}
    )
    sweep_interval: float = field(
        default=1.0, metadata={"help": "seconds between eviction sweeps"}
    )
    region: str = field(default="local", metadata={"help": "region this node runs in"})

    def __post_init__(self) -> None:
        for name in ("max_storage_bytes", "max_list_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no limit) or a positive number of bytes")


@dataclass(frozen=True)
class NodeConfig(RuntimeConfig):
    """A host node process."""

    node_id: str = field(default="", metadata={"help": "stable node id (default: kept in data dir)"})
    data_dir: Path = field(default=Path("./data/node"), metadata={"help": "RocksDB and identity"})
    app: str = field(default="examples", metadata={"help": "app directory, duro.toml or module"})
    listen: str = field(default="127.0.0.1:0", metadata={"help": "gRPC listen host:port"})
    advertise: str = field(default="", metadata={"help": "address others reach us at (default: listen)"})
    zone: str = field(default="", metadata={"help": "zone within the region"})
    capacity: int = field(default=100_000, metadata={"help": "objects this node should carry"})
    etcd: str = field(default="", metadata={"help": "etcd endpoint host:port ('' = standalone)"})
    cluster: str = field(default="duro", metadata={"help": "cluster name (etcd key prefix)"})
    lease_ttl: float = field(default=5.0, metadata={"help": "membership lease TTL in seconds"})
    replication_listen: str = field(
        default="",
        metadata={"help": "host:port of the replication stream listener (default: the listen "
                          "host, a free port); advertised with the advertise host"},
    )
    replica_ack_timeout: float = field(
        default=1.0,
        metadata={"help": "seconds an in-sync follower may leave a batch unacknowledged before "
                          "it is removed from in_sync (docs/replication.md)"},
    )
    replica_log_mb: int = field(
        default=16, metadata={"help": "recent batches kept per replica group for catch-up, MiB"}
    )
    directory_cache: int = field(
        default=100_000,
        metadata={"help": "object directory entries this node's router caches (LRU; "
                          "docs/directory.md)"},
    )
    edge: bool = field(
        default=False,
        metadata={"help": "also run this region's edge (HTTP, WebSocket, Gateway, admin) in this "
                          "process: calls to this node's objects skip a process hop "
                          "(docs/architecture.md); needs --etcd"},
    )
    edge_config: Path | None = field(
        default=None,
        metadata={"help": "TOML file of the co-located edge's settings (as duro edge --config; "
                          "DURO_EDGE_* variables apply too); etcd, cluster, region, app, TLS and "
                          "the edge id come from the node"},
    )
    max_call_bytes_in_flight: int = field(
        default=256 * 1024 * 1024,
        metadata={"help": "encoded argument bytes of the calls running on this node at once, "
                          "all callers together; a call past it is refused as overloaded "
                          "(retryable) and not executed (docs/security.md)"},
    )
    tls_ca: Path | None = field(
        default=None, metadata={"help": "cluster CA certificate, PEM (mTLS; docs/security.md)"})
    tls_cert: Path | None = field(
        default=None, metadata={"help": "this process's certificate, PEM (duro certs)"})
    tls_key: Path | None = field(default=None, metadata={"help": "its private key, PEM"})
    insecure: bool = field(
        default=False,
        metadata={"help": "allow plaintext (no TLS) on a non-loopback address; debugging only"})
    metrics_port: int = field(default=-1, metadata={"help": "Prometheus port (0 = any, -1 = off)"})
    log_level: str = field(default="INFO", metadata={"help": "logging level"})
    log_json: bool = field(default=False, metadata={"help": "JSON log lines"})
    gc_threshold: int = field(
        default=50_000,
        metadata={"help": "Python GC generation-0 threshold for the node process (0 = Python's "
                          "default); with 100,000s of objects in memory, default-frequency full "
                          "collections cost up to half the CPU and pauses of 100s of ms"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.directory_cache < 1:
            raise ValueError("directory_cache must be at least 1 entry")
        if self.edge and not self.etcd:
            raise ValueError("edge: a co-located edge needs a cluster (--etcd)")
        if self.max_call_bytes_in_flight < 1:
            raise ValueError("max_call_bytes_in_flight must be at least 1 byte")
        if self.tls is None:
            check_plaintext((self.listen, self.replication_listen), self.insecure, "the node")

    @property
    def tls(self) -> TlsConfig | None:
        """The node's certificate (duro.tls), or None: plaintext."""
        return from_settings(self.tls_ca, self.tls_cert, self.tls_key)
