"""Cluster-wide replication settings, in etcd at ``/duro/<cluster>/settings/replication``.

Written by the placement leader from its configuration (``--replicas``, ``--min-in-sync``) when
it takes office; read by every node (by watch), so the whole cluster applies one floor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from etcd3aio import Etcd3Client

from duro.topology.etcdkv import get_value, put_value
from duro.topology.keys import replication_settings_key as settings_key
from duro.topology.keys import settings_prefix
from duro.topology.watch import PrefixView

__all__ = ["ReplicationSettings", "SettingsView", "settings_key", "write_settings",
           "read_settings"]


@dataclass(frozen=True, slots=True)
class ReplicationSettings:
    replicas: int = 3  # copies of each group: the primary and replicas - 1 followers
    min_in_sync: int = 2  # writes are refused below this many in-sync copies

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")
        if not 1 <= self.min_in_sync:
            raise ValueError(f"min_in_sync must be at least 1, got {self.min_in_sync}")

    @property
    def floor(self) -> int:
        """The effective floor: ``replicas = 1`` (explicit) writes with one copy."""
        return min(self.min_in_sync, self.replicas)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ReplicationSettings:
        d = json.loads(raw)
        return cls(replicas=int(d.get("replicas", 3)), min_in_sync=int(d.get("min_in_sync", 2)))


async def write_settings(client: Etcd3Client, cluster: str, s: ReplicationSettings) -> None:
    await put_value(client, settings_key(cluster), s.to_json())


async def read_settings(client: Etcd3Client, cluster: str) -> ReplicationSettings | None:
    raw = await get_value(client, settings_key(cluster))
    return None if raw is None else ReplicationSettings.from_json(raw)


class SettingsView(PrefixView[ReplicationSettings]):
    def __init__(self, client: Etcd3Client, cluster: str) -> None:
        super().__init__(client, settings_prefix(cluster),
                         lambda name, raw, _r, _l: ReplicationSettings.from_json(raw)
                         if name == "replication" else None, name="settings-view")

    @property
    def current(self) -> ReplicationSettings:
        return self.items.get("replication") or ReplicationSettings()
