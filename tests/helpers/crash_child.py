"""Child process for the crash tests (tests/node/runtime/test_crash.py). Runs the real runtime and
RocksDB (a Testbed) on DATA_DIR, forever, until the parent SIGKILLs it.

    python crash_child.py coalesce DATA_DIR   # many events, each putting KEYS keys without await
    python crash_child.py ack DATA_DIR        # increments; "ACK <id> <value>" after each reply

First line on stdout: ``READY <id hex> ...`` (the objects it writes to).

Environment:

* ``DURO_COMMIT_DELAY=<seconds>``: group commits run that long after the writes instead of at the
  end of the loop turn. This widens the window between a reply and its commit, so that a reply
  released before its commit would be caught by the kill (the guarantee must hold at any timing).
* ``DURO_SABOTAGE=nogate|split``: break the runtime on purpose (no output gate / each key written
  in its own batch), to check that the crash tests fail when the guarantee does not hold. Never
  set by the tests.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from duro.testing import Testbed

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: find tests/
from tests.helpers.commits import delay_commits  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "node" / "runtime" / "apps" / "objs.py"
OBJECTS = 4
KEYS = 16


async def coalesce(tb: Testbed) -> None:
    stubs = [tb.env.PLAIN.get_by_name(f"multi-{i}") for i in range(OBJECTS)]
    keys = [f"k{j:02}" for j in range(KEYS)]
    print("READY", *(s.id.hex() for s in stubs), flush=True)
    version = time.time_ns()
    while True:
        version += 1
        # Several objects, several puts each without await, every loop turn: group commits of
        # multi-key batches are what the kill lands in.
        await asyncio.gather(*(s.put_several(keys, version) for s in stubs))


async def ack(tb: Testbed) -> None:
    stubs = [tb.env.COUNTER.get_by_name(f"acked-{i}") for i in range(OBJECTS)]
    print("READY", *(s.id.hex() for s in stubs), flush=True)
    out = sys.stdout

    async def caller(stub):
        while True:
            value = await stub.increment()
            # The reply has been released: acknowledge it to the parent at once.
            out.write(f"ACK {stub.id.hex()} {value}\n")
            out.flush()

    await asyncio.gather(*(caller(s) for s in stubs))


def _tamper(tb: Testbed) -> None:
    delay = float(os.environ.get("DURO_COMMIT_DELAY", "0"))
    if delay:
        delay_commits(tb.host.committer, delay)
    sabotage = os.environ.get("DURO_SABOTAGE")
    if sabotage == "nogate":
        from duro.node.storage.object_storage import ObjectStorage

        ObjectStorage.output_gate = lambda self: None
    elif sabotage == "split":
        import rocksdict

        from duro.node.storage import object_storage

        def apply_to(layer, batch):
            for k, v in layer.writes.items():  # one synced write per key: not atomic
                one = rocksdict.WriteBatch(raw_mode=True)
                one.put(k, v) if v is not None else one.delete(k)
                tb.engine.write(one)

        object_storage.Layer.apply_to = apply_to


async def main(mode: str, data_dir: str) -> None:
    async with Testbed(app=APP, data_dir=data_dir) as tb:
        _tamper(tb)
        await {"coalesce": coalesce, "ack": ack}[mode](tb)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
