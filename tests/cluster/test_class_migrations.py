"""Class migrations on a real cluster (docs/runtime.md, "Class migrations"): the cluster runs app
``old-app``, then its nodes restart on ``new-app``, whose migrations delete ``Doomed`` and take
over ``old-app``'s ``Legacy`` objects as ``Inherited``.

* the deleted class's objects lose their data, alarms and directory entries on every copy (each
  node's RocksDB is read after the cluster stops), and calls to them fail with a clear error;
* the transferred class's objects keep their data under the new class name;
* an untouched class is untouched.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import duro.client
from duro.errors import InvalidArgumentError
from duro.node.storage.engine import StorageEngine
from tests.cluster.conftest import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

CODE = '''
from duro import DurableObject


class Counter(DurableObject):
    async def put(self, key, value):
        self.ctx.storage.put(key, value)

    async def get(self, key):
        return await self.ctx.storage.get(key)

    async def arm(self, when):
        self.ctx.storage.set_alarm(when)

    async def alarm(self, info):
        pass
'''
OLD_APP = CODE + '''

class Doomed(Counter):
    pass


class Legacy(Counter):
    pass
'''
OLD_TOML = '''
name = "old-app"
main = "app.py"
[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"
[[durable_objects.bindings]]
name = "DOOMED"
class_name = "Doomed"
[[durable_objects.bindings]]
name = "LEGACY"
class_name = "Legacy"
[[migrations]]
tag = "v1"
new_classes = ["Counter", "Doomed", "Legacy"]
'''
NEW_APP = CODE + '''

class Inherited(Counter):
    pass
'''
NEW_TOML = '''
name = "new-app"
main = "app.py"
[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"
[[durable_objects.bindings]]
name = "INHERITED"
class_name = "Inherited"
[[migrations]]
tag = "v1"
new_classes = ["Counter", "Doomed"]
[[migrations]]
tag = "v2"
deleted_classes = ["Doomed"]
[[migrations]]
tag = "v3"
transferred_classes = [{from = "Legacy", from_script = "old-app", to = "Inherited"}]
'''
N = 6


def write_app(root: Path, code: str, toml: str) -> None:
    (root / "app.py").write_text(code)
    (root / "duro.toml").write_text(toml)


def keys_naming(cluster, ids: list[bytes]) -> dict[str, int]:  # noqa: ANN001
    """Per node (stopped), how many of its RocksDB keys name one of ``ids`` (data, alarm and its
    index entry, storage account, directory entry)."""
    out = {}
    for spec in cluster.nodes:
        engine = StorageEngine(cluster.root / "nodes" / spec.name / "rocksdb")
        try:
            out[spec.name] = sum(1 for k, _v in engine.scan(b"\x10", b"\x11")
                                 if any(oid in k for oid in ids))
        finally:
            engine.close()
    return out


async def restart_nodes(cluster) -> None:  # noqa: ANN001
    await asyncio.gather(*(cluster.start_node(i) for i in range(len(cluster.nodes))))
    await cluster.wait_replicated()


async def test_deleted_class_is_removed_and_transferred_class_keeps_its_data(make_cluster,
                                                                            tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    write_app(app, OLD_APP, OLD_TOML)
    cluster = await make_cluster(app=app)
    alarm_at = time.time() + 3600
    async with duro.client.connect(etcd=cluster.etcd.endpoint) as c:
        for i in range(N):
            for binding in ("COUNTER", "DOOMED", "LEGACY"):
                stub = c.namespace(binding).get_by_name(f"o{i}")
                await stub.put("v", f"{binding}-{i}")
                await stub.arm(alarm_at)
        doomed = [c.namespace("DOOMED").id_from_name(f"o{i}").raw for i in range(N)]
        legacy = [c.namespace("LEGACY").id_from_name(f"o{i}").raw for i in range(N)]
    await cluster.wait_replicated()

    await asyncio.gather(*(cluster.stop_node(i) for i in range(len(cluster.nodes))))
    before = keys_naming(cluster, doomed)
    # Every copy holds them: data, alarm, alarm index, account, directory entry.
    assert sum(before.values()) >= 2 * 5 * N, before
    legacy_keys = keys_naming(cluster, legacy)
    assert all(legacy_keys.values()), legacy_keys

    write_app(app, NEW_APP, NEW_TOML)
    await restart_nodes(cluster)
    async with duro.client.connect(etcd=cluster.etcd.endpoint) as c:
        assert sorted(c.bindings) == ["COUNTER", "INHERITED"]
        for i in range(N):
            # Transferred: Legacy's objects answer as Inherited, with their data.
            assert await c.namespace("INHERITED").get_by_name(f"o{i}").get("v") == f"LEGACY-{i}"
            assert await c.namespace("COUNTER").get_by_name(f"o{i}").get("v") == f"COUNTER-{i}"
        with pytest.raises(InvalidArgumentError, match="unknown binding 'DOOMED'"):
            c.namespace("DOOMED")
        directory = c.invoker.directory  # type: ignore[attr-defined]

        async def entries_gone() -> bool:
            found = await asyncio.gather(*(directory.resolve(oid, create=False)
                                           for oid in doomed))
            return all(e is None for e in found)

        await wait_until(entries_gone, timeout=60, interval=0.2,
                         message="the deleted class's directory entries are still there")

    # A caller that still knows the old binding gets a clear error, and no entry is made again.
    async with duro.client.connect(etcd=cluster.etcd.endpoint,
                                   bindings={"DOOMED": "Doomed"}) as old:
        with pytest.raises(InvalidArgumentError, match="'Doomed' was deleted by migration 'v2'"):
            await old.namespace("DOOMED").get_by_name("o0").get("v")

    await asyncio.gather(*(cluster.stop_node(i) for i in range(len(cluster.nodes))))
    assert keys_naming(cluster, doomed) == {s.name: 0 for s in cluster.nodes}
    assert keys_naming(cluster, legacy) == legacy_keys  # kept, key for key
