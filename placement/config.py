"""Configuration of one placement replica: a frozen dataclass loaded file < env < flags.

TOML file (``--config``), section ``[placement]`` or top level::

    etcd = ["127.0.0.1:2379"]
    cluster = "default"
    listen = "127.0.0.1:7000"
    replica_id = "placement-1"
    leader_ttl = 3
    metrics_port = 9400
    replicas = 3          # copies of each replica group (docs/replication.md)
    min_in_sync = 2

Environment: ``DURO_ETCD`` (comma-separated), ``DURO_CLUSTER``, ``DURO_PLACEMENT_LISTEN``,
``DURO_PLACEMENT_ADVERTISE``, ``DURO_PLACEMENT_ID``, ``DURO_PLACEMENT_LEADER_TTL``,
``DURO_PLACEMENT_METRICS_PORT``, ``DURO_PLACEMENT_METRICS_HOST``, ``DURO_REPLICAS``,
``DURO_MIN_IN_SYNC``, ``DURO_PLACEMENT_TLS_CA``, ``DURO_PLACEMENT_TLS_CERT``,
``DURO_PLACEMENT_TLS_KEY``, ``DURO_PLACEMENT_INSECURE``.
"""

from __future__ import annotations

import argparse
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["PlacementConfig", "build_parser"]


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    etcd: tuple[str, ...] = ("127.0.0.1:2379",)
    cluster: str = "default"
    listen: str = "127.0.0.1:7000"  # port 0: pick a free port
    advertise: str = ""  # address written in the leader key; defaults to the bound listen address
    replica_id: str = ""  # defaults to "<hostname>-<pid>"
    leader_ttl: int = 3
    metrics_port: int | None = None  # Prometheus /metrics; None: off, 0: a free port
    metrics_host: str = "127.0.0.1"
    # Migration toward callers (placement/rebalancer.py, placement/planner.py)
    rebalance: bool = True
    rebalance_interval: float = 2.0
    min_share: float = 0.7
    min_calls: float = 20.0
    min_dwell: float = 6.0
    cooldown: float = 60.0
    max_moves: int = 16
    no_migrate: str = ""  # comma-separated bindings that never move
    # Replication (docs/replication.md): written to etcd for the whole cluster by the leader
    replicas: int = 3  # copies of each replica group (1 is allowed and explicit)
    min_in_sync: int = 2  # writes are refused below this many in-sync copies
    replace_after: float = 30.0  # seconds a member may be gone before another node replaces it
    group_interval: float = 0.5  # seconds between two rounds of the group manager (at most)
    # The object directory (docs/directory.md): fixed when the cluster is first started
    partitions: int = 1024
    # mTLS (docs/security.md): the cluster CA, this replica's certificate (duro://placement) and
    # key; without them the service speaks plaintext, allowed only on loopback or with insecure
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        if self.min_in_sync < 1:
            raise ValueError("min_in_sync must be at least 1")
        if not self.etcd:
            raise ValueError("at least one etcd endpoint is required")
        if self.leader_ttl < 2:
            raise ValueError("leader_ttl must be at least 2 seconds")
        if not 1 <= self.partitions <= 1 << 20:
            raise ValueError("partitions must be between 1 and 1048576")
        from duro.tls import check_plaintext, from_settings

        if from_settings(self.tls_ca, self.tls_cert, self.tls_key) is None:
            check_plaintext((self.listen,), self.insecure, "placement")

    @property
    def effective_replica_id(self) -> str:
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"

    @classmethod
    def load(
        cls,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PlacementConfig:
        """Defaults < TOML file (``--config``/``DURO_PLACEMENT_CONFIG``) < env < flags."""
        env = os.environ if env is None else env
        opts = build_parser().parse_args(list(argv) if argv is not None else [])
        values: dict[str, Any] = {}
        path = opts.config or env.get("DURO_PLACEMENT_CONFIG")
        if path:
            with open(path, "rb") as f:
                data = tomllib.load(f)
            values.update(_from_mapping(data.get("placement", data)))
        values.update(_from_env(env))
        values.update({k: v for k, v in _from_flags(opts).items() if v is not None})
        return replace(cls(), **values)


_NAMES = {f.name for f in fields(PlacementConfig)}


def _coerce(name: str, value: Any) -> Any:
    if name == "etcd":
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return tuple(str(v).strip() for v in value)
    if name in ("leader_ttl", "max_moves", "replicas", "min_in_sync", "partitions"):
        return int(value)
    if name in ("rebalance_interval", "min_share", "min_calls", "min_dwell", "cooldown",
                "replace_after", "group_interval"):
        return float(value)
    if name in ("rebalance", "insecure"):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if name == "metrics_port":
        return None if value in ("", None, "off") else int(value)
    return str(value)


def _from_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(data) - _NAMES
    if unknown:
        raise ValueError(f"unknown placement config keys: {sorted(unknown)}")
    return {k: _coerce(k, v) for k, v in data.items()}


_ENV = {
    "DURO_ETCD": "etcd",
    "DURO_CLUSTER": "cluster",
    "DURO_PLACEMENT_LISTEN": "listen",
    "DURO_PLACEMENT_ADVERTISE": "advertise",
    "DURO_PLACEMENT_ID": "replica_id",
    "DURO_PLACEMENT_LEADER_TTL": "leader_ttl",
    "DURO_PLACEMENT_METRICS_PORT": "metrics_port",
    "DURO_PLACEMENT_METRICS_HOST": "metrics_host",
    "DURO_REPLICAS": "replicas",
    "DURO_MIN_IN_SYNC": "min_in_sync",
    "DURO_PLACEMENT_TLS_CA": "tls_ca",
    "DURO_PLACEMENT_TLS_CERT": "tls_cert",
    "DURO_PLACEMENT_TLS_KEY": "tls_key",
    "DURO_PLACEMENT_INSECURE": "insecure",
}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    return {name: _coerce(name, env[var]) for var, name in _ENV.items() if env.get(var)}


def _from_flags(opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _NAMES:
        v = getattr(opts, name, None)
        if v is not None:
            out[name] = _coerce(name, v)
    return out


def build_parser(prog: str = "python -m duro.placement") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run a duro placement service replica.")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--etcd", help="etcd endpoints, comma-separated host:port")
    p.add_argument("--cluster", help="cluster name (etcd key prefix /duro/<cluster>/)")
    p.add_argument("--listen", help="gRPC listen address host:port")
    p.add_argument("--advertise", help="gRPC address other processes use to reach this replica")
    p.add_argument("--id", dest="replica_id", help="replica id (default hostname-pid)")
    p.add_argument("--leader-ttl", dest="leader_ttl", type=int, help="leader lease TTL, seconds")
    p.add_argument("--metrics-port", dest="metrics_port", help="Prometheus port ('off' or a port)")
    p.add_argument("--metrics-host", dest="metrics_host")
    p.add_argument("--rebalance", help="move objects toward their callers (true/false)")
    p.add_argument("--rebalance-interval", dest="rebalance_interval", help="seconds between rounds")
    p.add_argument("--min-share", dest="min_share", help="share of calls from one region to move")
    p.add_argument("--min-calls", dest="min_calls", help="decayed calls needed to move")
    p.add_argument("--min-dwell", dest="min_dwell", help="seconds an object stays a candidate first")
    p.add_argument("--cooldown", help="seconds between two moves of one object")
    p.add_argument("--max-moves", dest="max_moves", help="moves per round at most")
    p.add_argument("--no-migrate", dest="no_migrate", help="bindings that never move (a,b)")
    p.add_argument("--replicas", type=int, help="copies of each replica group (default 3)")
    p.add_argument("--min-in-sync", dest="min_in_sync", type=int,
                   help="refuse writes below this many in-sync copies (default 2)")
    p.add_argument("--replace-after", dest="replace_after",
                   help="seconds before a gone member is replaced (default 30)")
    p.add_argument("--partitions", type=int,
                   help="directory partitions (fixed when the cluster is first started; 1024)")
    p.add_argument("--group-interval", dest="group_interval",
                   help="seconds between group manager rounds (default 0.5)")
    p.add_argument("--tls-ca", dest="tls_ca", help="cluster CA certificate (PEM; docs/security.md)")
    p.add_argument("--tls-cert", dest="tls_cert", help="this replica's certificate (duro://placement)")
    p.add_argument("--tls-key", dest="tls_key", help="this replica's private key")
    p.add_argument("--insecure", action="store_const", const=True, default=None,
                   help="allow plaintext on a non-loopback address (no TLS; debugging only)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p
