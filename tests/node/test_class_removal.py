"""Class migrations on a node without a cluster (the Testbed runs the node's runtime on RocksDB):
at start, the objects of a deleted class are removed from group 0 once, and a transferred class
reads the objects its source class wrote. The cluster's version: tests/cluster/test_class_migrations.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from duro.errors import InvalidIdError
from duro.testing import Testbed
from tests.cluster.test_class_migrations import NEW_APP, NEW_TOML, OLD_APP, OLD_TOML, write_app

pytestmark = pytest.mark.timeout(60)


def keys_naming(tb: Testbed, oid: bytes) -> int:
    return sum(1 for k, _v in tb.host.engine.scan(b"\x10", b"\x11") if oid in k)


async def test_a_standalone_node_removes_a_deleted_class_at_start(tmp_path: Path) -> None:
    # Two directories: an app loaded in this process stays cached under its directory's name.
    old, new, data = tmp_path / "old", tmp_path / "new", tmp_path / "data"
    old.mkdir()
    new.mkdir()
    write_app(old, OLD_APP, OLD_TOML)
    write_app(new, NEW_APP, NEW_TOML)
    async with Testbed(app=old, data_dir=data) as tb:
        for binding in ("COUNTER", "DOOMED", "LEGACY"):
            stub = tb.env.__dict__[binding].get_by_name("x")
            await stub.put("v", binding)
            await stub.arm(4_000_000_000)
        doomed = tb.env.DOOMED.id_from_name("x").raw
        assert keys_naming(tb, doomed) == 4  # data, alarm, alarm index, account

    async with Testbed(app=new, data_dir=data) as tb:
        assert keys_naming(tb, doomed) == 0
        assert tb.host.removal.removed == 1
        assert await tb.env.INHERITED.get_by_name("x").get("v") == "LEGACY"
        assert await tb.env.COUNTER.get_by_name("x").get("v") == "COUNTER"
        # An id of the deleted class, sent under a live binding, is refused with the reason.
        with pytest.raises(InvalidIdError, match="'Doomed' was deleted by migration 'v2'"):
            await tb.host.invoke(_call("COUNTER", doomed))

    async with Testbed(app=new, data_dir=data) as tb:  # done once: recorded in the group
        assert tb.host.removal.removed == 0
        assert await tb.env.INHERITED.get_by_name("x").get("v") == "LEGACY"


def _call(binding: str, oid: bytes):  # noqa: ANN202
    from duro import _codec
    from duro._namespace import Call, CallKind

    return Call(binding=binding, object_id=oid, kind=CallKind.RPC, method="get",
                payload=_codec.encode([["v"], {}]))
