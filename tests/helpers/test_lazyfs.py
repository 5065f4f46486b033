"""The LazyFS helper (tests/helpers/lazyfs.py): what was fsynced survives a simulated power loss,
what was not is lost, for plain files and for a RocksDB database (rocksdict, raw mode) written
by a process that is then SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.lazyfs import LazyFS, require_fuse


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyFS]:
    require_fuse()
    with LazyFS(tmp_path / "disk", tmp_path / "mnt") as lazy:
        yield lazy


def write(path: Path, data: bytes, *, offset: int | None = None, sync: str = "",
          flags: int = os.O_WRONLY | os.O_CREAT) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
        if sync == "fsync":
            os.fsync(fd)
        elif sync == "fdatasync":
            os.fdatasync(fd)
    finally:
        os.close(fd)


def test_fsynced_data_survives_a_power_loss_and_the_rest_is_lost(fs: LazyFS) -> None:
    m = fs.mountpoint
    write(m / "a", b"hello", sync="fsync")
    write(m / "a", b" world", offset=5)  # not synced
    write(m / "b", b"durable", sync="fdatasync")
    write(m / "c", b"never synced")
    (m / "d").mkdir()
    write(m / "d" / "e", b"x" * 10000, sync="fsync")
    # A process kill keeps everything (the page cache outlives processes): all of it is there.
    assert (m / "a").read_bytes() == b"hello world"
    assert (m / "c").read_bytes() == b"never synced"
    assert fs.stats()["unsynced_files"] == 2

    lost = fs.power_loss()

    assert lost == {"files": 2, "bytes": 6 + 12}
    assert (m / "a").read_bytes() == b"hello"
    assert (m / "b").read_bytes() == b"durable"
    assert (m / "c").exists() and (m / "c").read_bytes() == b""  # created (metadata), no data
    assert (m / "d" / "e").read_bytes() == b"x" * 10000
    assert (fs.backing / "a").read_bytes() == b"hello"  # the backing file itself went back
    # Writing goes on normally after a power loss.
    write(m / "a", b"!", offset=5, sync="fsync")
    assert fs.power_loss() == {"files": 0, "bytes": 0}
    assert (m / "a").read_bytes() == b"hello!"


def test_overwrites_truncations_and_holes_roll_back_to_the_last_fsync(fs: LazyFS) -> None:
    m = fs.mountpoint
    original = bytes(range(256)) * 64 + b"tail"  # 16388 bytes: 5 blocks, the last one partial
    write(m / "f", original, sync="fsync")
    write(m / "f", b"Z" * 5000, offset=3000)  # overwrites across blocks
    os.truncate(m / "f", 100)  # cut
    write(m / "f", b"Y" * 20000, offset=9000)  # extend past the old end, leaving a hole
    with open(m / "f", "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, 50000)
    assert (m / "f").stat().st_size == 50000
    write(m / "g", b"g" * 9000, sync="fsync")
    with open(m / "g", "wb") as f:  # O_TRUNC, then new contents
        f.write(b"new")
    write(m / "log", b"synced.", sync="fsync")
    with open(m / "log", "ab") as f:  # O_APPEND: the kernel gives the offset
        f.write(b"appended")
    assert (m / "log").read_bytes() == b"synced.appended"
    write(m / "h", b"h" * 12000, sync="fsync")
    fd = os.open(m / "h", os.O_RDWR)
    try:
        _punch_hole(fd, 4096, 4096)
    finally:
        os.close(fd)
    assert (m / "h").read_bytes()[4096:8192] == b"\0" * 4096

    fs.power_loss()

    assert (m / "f").read_bytes() == original
    assert (m / "g").read_bytes() == b"g" * 9000
    assert (m / "h").read_bytes() == b"h" * 12000
    assert (m / "log").read_bytes() == b"synced."
    with open(m / "log", "ab") as f:  # appends go to the rolled-back end
        f.write(b"again")
    assert (m / "log").read_bytes() == b"synced.again"


def test_a_later_fsync_or_sync_makes_changes_durable(fs: LazyFS) -> None:
    m = fs.mountpoint
    write(m / "a", b"one", sync="fsync")
    write(m / "a", b"two", offset=3)
    write(m / "a", b"", sync="fdatasync")  # another descriptor's fsync syncs the file
    write(m / "b", b"bbb")
    fd = os.open(m / "c", os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o644)
    os.write(fd, b"each write durable")  # O_DSYNC: the kernel syncs every write
    os.close(fd)
    write(m / "d", b"until sync(1)")
    assert fs.sync() == {"files": 2}  # b and d; c was synced by its O_DSYNC write
    write(m / "d", b"after sync", offset=0)

    fs.power_loss()

    assert (m / "a").read_bytes() == b"onetwo"
    assert (m / "b").read_bytes() == b"bbb"
    assert (m / "c").read_bytes() == b"each write durable"
    assert (m / "d").read_bytes() == b"until sync(1)"


def test_renames_and_unlinks_are_durable_at_once(fs: LazyFS) -> None:
    m = fs.mountpoint
    write(m / "tmp", b"contents", sync="fsync")
    os.rename(m / "tmp", m / "final")  # as RocksDB writes CURRENT: synced, then renamed
    write(m / "gone", b"x", sync="fsync")
    os.unlink(m / "gone")
    write(m / "final", b"+", offset=8)  # unsynced change of the renamed file: lost
    with open(m / "open-then-unlinked", "wb") as f:
        f.write(b"y")
        os.unlink(m / "open-then-unlinked")
        f.write(b"z")

    fs.power_loss()

    assert sorted(os.listdir(m)) == ["final"]
    assert (m / "final").read_bytes() == b"contents"


def test_power_loss_refuses_while_a_file_is_open(fs: LazyFS) -> None:
    with open(fs.mountpoint / "held", "wb") as f:
        f.write(b"x")
        with pytest.raises(RuntimeError, match="still open"):
            fs.power_loss(wait_closed=0.2)
    assert fs.power_loss() == {"files": 1, "bytes": 1}


ROCKS_CHILD = textwrap.dedent("""
    import os, sys, rocksdict
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    db = rocksdict.Rdict(sys.argv[1], opts)
    if sys.argv[2] == "write":
        synced, unsynced = rocksdict.WriteOptions(), rocksdict.WriteOptions()
        synced.sync, unsynced.sync = True, False
        for i in range(200):  # a few hundred small synced writes, as a node makes
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.put(b"synced-%03d" % i, b"v" * 100)
            db.write(wb, synced)
        wb = rocksdict.WriteBatch(raw_mode=True)
        wb.put(b"unsynced", b"1")
        db.write(wb, unsynced)
        print("written", flush=True)
        sys.stdin.read()  # wait for SIGKILL: no close, no flush
    else:
        keys = [k for k, _ in db.items()]
        print(len([k for k in keys if k.startswith(b"synced-")]), b"unsynced" in keys)
        db.close()
""")


def _rocks(path: Path, mode: str) -> str:
    if mode == "read":
        out = subprocess.run([sys.executable, "-c", ROCKS_CHILD, str(path), "read"],
                             check=False, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()
    child = subprocess.Popen([sys.executable, "-c", ROCKS_CHILD, str(path), "write"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        for f in (child.stdin, child.stdout):
            if f is not None:
                f.close()
    return ""


def test_rocksdb_keeps_synced_writes_and_loses_unsynced_ones(fs: LazyFS) -> None:
    killed_only = fs.mountpoint / "killed"
    power_lost = fs.mountpoint / "power-lost"
    _rocks(killed_only, "write")
    _rocks(power_lost, "write")
    # Reopening "killed" first is fine: the power loss below happens after; its recovery
    # flushes what the WAL held into a synced table, so it keeps the unsynced write then too.
    assert _rocks(killed_only, "read") == "200 True"  # a SIGKILL alone loses nothing

    lost = fs.power_loss()

    assert lost["bytes"] > 0
    assert _rocks(power_lost, "read") == "200 False"
    assert _rocks(killed_only, "read") == "200 True"


def _punch_hole(fd: int, offset: int, length: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, 0x01 | 0x02, offset, length) != 0:  # KEEP_SIZE | PUNCH_HOLE
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
