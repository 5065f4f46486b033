"""The node's ownership rules that do not need etcd: the commit-time fence against a lagging
directory watch and against a group failover, and the 'moved' redirect a migration leaves
behind."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from duro import _codec
from duro._namespace import Call, CallKind
from duro._wire import RedirectError
from duro.node.cluster import NodeOwnership
from duro.node.runtime.grant import Grant
from duro.testing import Testbed
from duro.topology.directory_entry import Entry

OID = bytes(range(32))


GID = 7


def ownership_with(entry: Entry | None, *, serving_epoch: int | None = 5) -> NodeOwnership:
    """An ownership whose node serves group GID at ``serving_epoch`` (None: not serving it)."""
    cache = SimpleNamespace(lookup=lambda _hex: entry)
    membership = SimpleNamespace(is_live=lambda: True)
    prim = SimpleNamespace(epoch=serving_epoch)
    replication = SimpleNamespace(
        serving=lambda gid: prim if gid == GID and serving_epoch is not None else None)
    cluster = SimpleNamespace(serving=True, membership=membership, node_id="me",
                              router=SimpleNamespace(directory=cache), replication=replication)
    return NodeOwnership(cluster)  # type: ignore[arg-type]


def entry(group: int, epoch: int) -> Entry:
    return Entry(object_id=OID.hex(), binding="B", group=group, epoch=epoch, region="r")


@pytest.mark.parametrize(
    "cached, activated_epoch, may_write",
    [
        (None, 3, True),                  # watch has not seen the entry yet
        (entry(9, 2), 3, True),           # watch lags: an older epoch says nothing new
        (entry(GID, 3), 3, True),
        (entry(9, 3), 3, False),          # same epoch, another group: impossible but refused
        (entry(GID, 4), 3, False),        # superseded, even if the new epoch is ours again
        (entry(9, 4), 3, False),          # moved away
    ],
)
def test_commit_fence_against_a_lagging_watch(cached, activated_epoch, may_write) -> None:
    own = ownership_with(cached)
    assert own.still_owner(OID, Grant(activated_epoch, GID, 5)) is may_write
    assert own.fenced_writes == (0 if may_write else 1)


@pytest.mark.parametrize(
    "serving_epoch, activated_group_epoch, may_write",
    [
        (5, 5, True),
        (6, 5, False),    # the group failed over (and back): a new term, the old instance is out
        (None, 5, False),  # this node no longer serves the group at all
    ],
)
def test_commit_fence_against_a_group_failover(serving_epoch, activated_group_epoch,
                                               may_write) -> None:
    own = ownership_with(entry(GID, 3), serving_epoch=serving_epoch)
    assert own.still_owner(OID, Grant(3, GID, activated_group_epoch)) is may_write


async def test_moved_redirect_yields_to_a_call_with_a_newer_epoch(tmp_path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "from duro import DurableObject\n"
        "class Box(DurableObject):\n"
        "    async def ping(self):\n"
        "        return 'pong'\n"
    )
    async with Testbed(app=app, data_dir=tmp_path / "d") as tb:
        oid = tb.env.BOX.get_by_name("x").id.raw
        tb.host.moved[oid] = RedirectError(node_id="T", address="t:1", epoch=2)
        call = Call("BOX", oid, CallKind.RPC, "ping", _codec.encode([[], {}]), epoch=2)
        with pytest.raises(RedirectError):
            await tb.host.invoke(call)
        newer = Call("BOX", oid, CallKind.RPC, "ping", _codec.encode([[], {}]), epoch=3)
        assert _codec.decode(await tb.host.invoke(newer)) == "pong"
        assert oid not in tb.host.moved
