"""The placement leader's part in the directory (docs/directory.md): the directory settings,
partitions assigned to replica groups on first use, and the import of a directory from before
partitions (per-object etcd keys) into the partitions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import TYPE_CHECKING, Callable

from etcd3aio import Etcd3Client, prefix_range_end

from duro.topology.directory_entry import Entry
from duro.topology.etcdkv import put_value
from duro.topology.partitions import (
    DirectorySettings,
    PartitionView,
    assign_partitions,
    directory_settings_key,
    read_directory_settings,
)

if TYPE_CHECKING:
    from duro.client.directory import DirectoryClient
    from duro.placement.election import LeaderGuard
    from duro.topology.groups import GroupView

__all__ = ["PartitionManager", "legacy_prefix"]

log = logging.getLogger("duro.placement.partitions")

IMPORT_BATCH = 500


def legacy_prefix(cluster: str) -> str:
    return f"/duro/{cluster}/dir/"


class PartitionManager:
    def __init__(self, etcd: Etcd3Client, cluster: str, groups: GroupView,
                 guard: Callable[[], LeaderGuard | None], partitions: int) -> None:
        self.etcd = etcd
        self.cluster = cluster
        self.groups = groups
        self._guard = guard
        self.wanted_partitions = partitions
        self.view = PartitionView(etcd, cluster)
        self.settings: DirectorySettings | None = None
        self._lock = asyncio.Lock()
        self.imported = 0

    async def start(self) -> None:
        await self.view.start()

    async def stop(self) -> None:
        await self.view.stop()

    async def ensure_settings(self) -> DirectorySettings:
        """Write the directory settings once (the number of partitions is fixed at the first
        start; ``legacy`` if per-object etcd entries of an older version exist)."""
        current = await read_directory_settings(self.etcd, self.cluster)
        legacy = await self._legacy_count() > 0
        if current is None:
            current = DirectorySettings(partitions=self.wanted_partitions, legacy=legacy)
            await put_value(self.etcd, directory_settings_key(self.cluster), current.to_json())
        elif current.legacy != legacy:
            current = DirectorySettings(partitions=current.partitions, legacy=legacy)
            await put_value(self.etcd, directory_settings_key(self.cluster), current.to_json())
        if current.partitions != self.wanted_partitions:
            log.info("the cluster has %s directory partitions (fixed when it was created); "
                     "--partitions %s is ignored", current.partitions, self.wanted_partitions)
        self.settings = current
        return current

    async def assign(self, partitions: list[int]) -> list[int]:
        """Each partition's group, assigning the unassigned ones to the groups holding fewest."""
        guard = self._guard()
        if guard is None:
            raise RuntimeError("not the placement leader")
        n = (self.settings or await self.ensure_settings()).partitions
        if any(not 0 <= p < n for p in partitions):
            raise ValueError(f"partitions are numbered 0..{n - 1}")
        async with self._lock:
            missing = sorted({p for p in partitions if self.view.group_of(p) is None})
            if missing:
                # The groups holding fewest partitions take them, one at a time, so a batch
                # spreads over the groups; written together (a transaction per 100).
                groups = self.groups.all()
                if not groups:
                    raise RuntimeError("no replica group exists yet")
                held = Counter(self.view.items.values())
                wanted = {}
                for p in missing:
                    gid = min(groups, key=lambda g: (held.get(g.gid, 0), g.gid)).gid
                    wanted[p] = gid
                    held[gid] += 1
                written = await assign_partitions(self.etcd, self.cluster, wanted, guard)
                for p, gid in written.items():
                    self.view._set(f"{p:06d}", gid)  # our own write: do not wait for the watch
            return [self.view.group_of(p) for p in partitions]  # type: ignore[misc]

    # -- upgrading a directory from before partitions ----------------------------------------
    async def _legacy_count(self) -> int:
        prefix = legacy_prefix(self.cluster).encode()
        resp = await self.etcd.kv.get(prefix, prefix_range_end(prefix), count_only=True,
                                      timeout=10.0)
        return int(resp.count)

    async def import_legacy(self, directory: DirectoryClient, legacy_entry) -> int:  # noqa: ANN001
        """Move every per-object etcd entry into its partition (create-if-absent), then delete
        it; clears ``legacy`` in the settings when none is left. Returns how many moved."""
        prefix = legacy_prefix(self.cluster).encode()
        moved = 0
        while True:
            resp = await self.etcd.kv.get(prefix, prefix_range_end(prefix), limit=IMPORT_BATCH,
                                          timeout=10.0)
            if not resp.kvs:
                break
            entries: list[Entry] = []
            for kv in resp.kvs:
                oid = kv.key[len(prefix):].decode()
                entries.append(legacy_entry(oid, kv.value))
            result = await directory.import_entries(entries)
            if result.errors:
                raise RuntimeError(f"import failed for {len(result.errors)} entries: "
                                   f"{list(result.errors)[:3]}")
            for kv in resp.kvs:
                await self.etcd.kv.delete(kv.key, timeout=5.0)
            moved += len(entries)
            self.imported += len(entries)
        if self.settings is not None and self.settings.legacy:
            self.settings = DirectorySettings(partitions=self.settings.partitions, legacy=False)
            await put_value(self.etcd, directory_settings_key(self.cluster),
                            self.settings.to_json())
        if moved:
            log.info("imported %s directory entries from etcd into the partitions", moved)
        return moved


def legacy_json(raw: bytes) -> dict:
    return json.loads(raw)
