"""Replica-group configurations in etcd: ``/duro/<cluster>/groups/<gid>`` (docs/replication.md).

A configuration changes only by compare-and-swap on its key's ``mod_revision``
(:func:`swap_group`), written by the placement leader (create, failover, membership) and by the
group's primary (``in_sync`` shrink and join); every write carries a guard (leadership, or the
writer's own registration), so a deposed writer cannot apply a late transaction.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from etcd3aio import Etcd3Client
from etcd3aio._protobuf import Compare

from duro.topology.keys import group_key, groups_prefix
from duro.topology.nodes import NodeInfo
from duro.topology.watch import PrefixView

__all__ = [
    "GroupConfig",
    "GroupConflict",
    "GroupView",
    "create_group",
    "group_key",
    "groups_prefix",
    "primary_gone",
    "swap_group",
]


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """One replica group's configuration (see the module docstring and docs/replication.md)."""

    gid: int
    region: str
    epoch: int
    primary: str
    lease: int  # the etcd lease the primary held when it was chosen
    replicas: tuple[str, ...]  # target members, preferred primary first
    in_sync: tuple[tuple[str, str], ...]  # sorted (member, storage id)
    home: str = ""  # the node the group was created for
    revision: int = 0  # etcd mod_revision of the stored value (0: not stored)

    def sid_of(self, node: str) -> str | None:
        for n, sid in self.in_sync:
            if n == node:
                return sid
        return None

    @property
    def in_sync_nodes(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.in_sync)

    @property
    def in_sync_map(self) -> dict[str, str]:
        return dict(self.in_sync)

    def with_in_sync(self, in_sync: dict[str, str]) -> GroupConfig:
        return dataclasses.replace(self, in_sync=tuple(sorted(in_sync.items())))

    def replace(self, **changes: Any) -> GroupConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> bytes:
        return json.dumps({
            "gid": self.gid, "region": self.region, "epoch": self.epoch,
            "primary": self.primary, "lease": f"{self.lease:x}",
            "replicas": list(self.replicas), "in_sync": dict(self.in_sync), "home": self.home,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, revision: int = 0) -> GroupConfig:
        d = json.loads(data)
        in_sync = d.get("in_sync") or {}
        if not isinstance(in_sync, dict):
            raise ValueError("in_sync must be an object")
        return cls(
            gid=int(d["gid"]), region=sys.intern(str(d.get("region", ""))),
            epoch=int(d["epoch"]), primary=sys.intern(str(d.get("primary", ""))),
            lease=int(str(d.get("lease", "0")), 16),
            replicas=tuple(sys.intern(str(r)) for r in d.get("replicas") or ()),
            in_sync=tuple(sorted((sys.intern(str(k)), str(v)) for k, v in in_sync.items())),
            home=sys.intern(str(d.get("home", ""))), revision=revision,
        )


class GroupConflict(RuntimeError):
    """The configuration changed (or a guard failed) since it was read; ``current`` is what is
    stored now (None: gone)."""

    def __init__(self, current: GroupConfig | None, guard_failed: bool = False) -> None:
        what = "a guard no longer holds" if guard_failed else f"now {current}"
        super().__init__(f"group configuration changed: {what}")
        self.current = current
        self.guard_failed = guard_failed


async def swap_group(
    client: Etcd3Client, cluster: str, current: GroupConfig, new: GroupConfig,
    *, guards: Sequence[Any] = (), timeout: float = 5.0,
) -> GroupConfig:
    """Write ``new`` if the stored configuration is still ``current`` (its revision) and every
    guard compare holds; raise :class:`GroupConflict` otherwise."""
    key = group_key(cluster, current.gid)
    kv = client.kv
    compares = [Compare(result=Compare.EQUAL, target=Compare.MOD, key=key.encode(),
                        mod_revision=current.revision), *guards]
    resp = await kv.txn(compares, [kv.txn_op_put(key, new.to_json())], [kv.txn_op_get(key)],
                        timeout=timeout, max_attempts=1)
    if resp.succeeded:
        return dataclasses.replace(new, revision=int(resp.header.revision))
    kvs = resp.responses[0].response_range.kvs
    now = GroupConfig.from_json(kvs[0].value, kvs[0].mod_revision) if kvs else None
    raise GroupConflict(now, guard_failed=now is not None and now.revision == current.revision)


async def create_group(
    client: Etcd3Client, cluster: str, config: GroupConfig, *, guards: Sequence[Any] = (),
    timeout: float = 5.0,
) -> GroupConfig | None:
    """Create the group if its gid is free (and the guards hold); None if it is taken."""
    key = group_key(cluster, config.gid)
    kv = client.kv
    compares = [Compare(result=Compare.EQUAL, target=Compare.CREATE, key=key.encode(),
                        create_revision=0), *guards]
    resp = await kv.txn(compares, [kv.txn_op_put(key, config.to_json())], [],
                        timeout=timeout, max_attempts=1)
    if not resp.succeeded:
        return None
    return dataclasses.replace(config, revision=int(resp.header.revision))


def _parse(name: str, value: bytes, revision: int, _lease: int) -> GroupConfig:
    return GroupConfig.from_json(value, revision)


class GroupView(PrefixView[GroupConfig]):
    """Every group's configuration (a handful per node), by watch; ``get(gid)``."""

    def __init__(self, client: Etcd3Client, cluster: str) -> None:
        super().__init__(client, groups_prefix(cluster), _parse, name="group-view")

    def get(self, gid: int) -> GroupConfig | None:
        return self.items.get(f"{gid:010d}")

    def all(self) -> list[GroupConfig]:
        return list(self.items.values())


def primary_gone(cfg: GroupConfig, nodes: dict[str, NodeInfo]) -> str | None:
    """Why the group's primary cannot be serving it (None: it may be)."""
    info = nodes.get(cfg.primary)
    if info is None:
        return "its node is not registered (lease expired)"
    if info.lease != cfg.lease:
        return "its node registered again under a new lease"
    if info.storage_id and info.storage_id != cfg.sid_of(cfg.primary):
        return "its node's storage is not the in-sync copy"
    return None
