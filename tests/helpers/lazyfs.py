"""A FUSE passthrough filesystem that can lose what was not fsynced: power loss for tests.

In the spirit of Jepsen's LazyFS, written for this test suite. :class:`LazyFS` mounts a directory
(``mountpoint``) that shows and stores the files of another one (``backing``) through a FUSE
daemon (this file run as a script, in a subprocess), and :meth:`LazyFS.power_loss` puts every file
back as it was at its last fsync, as a machine's disk would be after its power went out.

Design
------
* Every operation passes through to the backing directory at once: a write is a ``pwrite(2)`` on
  the backing file, a read reads it, so every process sees ordinary POSIX behaviour.
* Per file (keyed by the backing inode, so renames and hard links keep it), the daemon keeps an
  **undo log** of what the file held at its last fsync: the size then (``synced_size``) and, for
  each 4 KiB block of the synced contents that has been overwritten, truncated away or punched
  since, the block's old bytes, saved just before its first change. A file no one changed since
  its last fsync has no entry; a block beyond ``synced_size`` needs no undo (the size restores it).
* ``fsync(2)`` and ``fdatasync(2)`` of a file (the kernel's ``FUSE_FSYNC``, whichever
  descriptor of the file it comes through; ``msync(MS_SYNC)`` sends it too) drop the file's
  entry: its current contents are now durable. So does each write through a descriptor opened
  with ``O_SYNC`` or ``O_DSYNC``.
  :meth:`LazyFS.sync` does that for every file (the OS writing every dirty page back, as
  ``sync(1)`` or the periodic writeback would).
* :meth:`LazyFS.power_loss` writes the saved blocks back and truncates each changed file to its
  ``synced_size``, then forgets every entry. Call it only while no process has a file open on the
  mount (the test kills them first; it waits for the kernel's release of their files).

What is simulated, and what is not
----------------------------------
* Simulated: loss of file *data* (contents and size) written since the file's last fsync: writes,
  overwrites, extensions (``write``, ``ftruncate``, ``fallocate``), truncations (``O_TRUNC``,
  ``truncate``) and hole punching; a file created and never fsynced comes back **empty** (it
  still exists).
* Not simulated: metadata is durable at once, as in LazyFS's default mode: ``create``, ``mkdir``,
  ``rename``, ``unlink``, ``link``, ``symlink``, ``chmod``/``chown``/``utimens`` are never undone,
  so a directory fsync is a no-op and a program that forgets to fsync a directory after a rename
  is not caught. Torn writes (part of one write) and reordering are not simulated: a file comes
  back exactly at its last fsync. ``sync(2)``/``syncfs(2)`` on the mount are not seen by the daemon
  (the kernel does not forward them to FUSE); use :meth:`LazyFS.sync`. ``sync_file_range(2)``
  does not make data durable (as on a real disk it gives no guarantee). The backing files are not
  fsynced themselves (nothing survives a real crash of the machine running the test). Pages of
  a shared writable ``mmap`` reach the daemon when the kernel writes them back, and count as
  unsynced until an fsync or ``msync``, as on a real disk.
* The kernel's page cache of the mount is not used for writes (FUSE without writeback cache:
  every write reaches the daemon before ``write(2)`` returns) and is dropped when a file is opened
  again, and attributes and lookups are not cached (``attr_timeout=0``...), so after
  :meth:`power_loss` every process reads the rolled-back files.

Requirements: ``/dev/fuse``, the ``mfusepy`` package (ctypes bindings for libfuse 2 and 3), and
libfuse with its mount helper: Debian ``fuse3`` and ``libfuse3-3`` (or ``fuse`` and ``libfuse2``).
:func:`fuse_unavailable` says what is missing; :func:`require_fuse` skips the calling test then
(or fails it, with ``DURO_REQUIRE_FUSE=1``, for CI that must not skip it).

Usage::

    with LazyFS(tmp_path / "disk", tmp_path / "mnt") as fs:
        ...  # processes write under tmp_path / "mnt"
        ...  # kill them
        fs.power_loss()
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

__all__ = ["LazyFS", "LazyOperations", "fuse_unavailable", "require_fuse"]

BLOCK = 4096  # granularity of the undo log

# fallocate(2) modes (linux/falloc.h)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20

_libc = ctypes.CDLL(None, use_errno=True)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    fn = _libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fn(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _renameat2(old: str, new: str, flags: int) -> None:
    fn = _libc.renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# -- the filesystem (runs in the daemon) -------------------------------------------------------

class _Unsynced:
    """What one file held at its last fsync: its size and the old bytes of changed blocks."""

    __slots__ = ("fd", "synced_size", "undo")

    def __init__(self, fd: int, synced_size: int) -> None:
        self.fd = fd  # the daemon's own descriptor of the inode (survives close, rename, unlink)
        self.synced_size = synced_size
        self.undo: dict[int, bytes] = {}  # block index -> its bytes at the last fsync


class LazyOperations:
    """FUSE operations (mfusepy's high-level API, raw file handles = backing descriptors).

    Every method may be called from several libfuse threads at once: one lock guards the undo
    logs and each change made together with its undo record.
    """

    use_ns = True  # mfusepy: times in nanoseconds

    def __init__(self, backing: str | Path) -> None:
        self.root = os.path.realpath(backing)
        self._mu = threading.Lock()
        self.unsynced: dict[tuple[int, int], _Unsynced] = {}  # (st_dev, st_ino) -> undo log
        self.handles: dict[int, tuple[tuple[int, int], bool]] = {}  # fd -> (inode, O_SYNC)
        self.counts = {"writes": 0, "fsyncs": 0, "bytes_written": 0, "power_losses": 0}

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    # -- the undo log (callers hold self._mu) --------------------------------------------------
    def _entry(self, fd: int) -> _Unsynced:
        """The file's undo log, begun now if it had none: it was fully synced until now."""
        key = self._key(fd)
        u = self.unsynced.get(key)
        if u is None:
            u = self.unsynced[key] = _Unsynced(os.dup(fd), os.fstat(fd).st_size)
        return u

    def _key(self, fd: int) -> tuple[int, int]:
        h = self.handles.get(fd)
        if h is not None:
            return h[0]
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)

    @staticmethod
    def _save(u: _Unsynced, start: int, end: int) -> None:
        """Record the synced bytes of [start, end) that are not recorded yet (before a change)."""
        end = min(end, u.synced_size)
        if start >= end:
            return
        for b in range(start // BLOCK, (end - 1) // BLOCK + 1):
            if b not in u.undo:
                off = b * BLOCK
                u.undo[b] = os.pread(u.fd, min(BLOCK, u.synced_size - off), off)

    def _synced(self, fd: int) -> None:
        u = self.unsynced.pop(self._key(fd), None)
        if u is not None:
            os.close(u.fd)
        self.counts["fsyncs"] += 1

    def _truncate_fd(self, fd: int, length: int) -> None:
        u = self._entry(fd)
        self._save(u, length, os.fstat(fd).st_size)
        os.ftruncate(fd, length)

    def sync_all(self) -> dict[str, int]:
        with self._mu:
            n = len(self.unsynced)
            for u in self.unsynced.values():
                os.close(u.fd)
            self.unsynced.clear()
            return {"files": n}

    def power_loss(self) -> dict[str, int]:
        """Roll every changed file back to its last fsync (no file may be open)."""
        with self._mu:
            files = discarded = 0
            for u in self.unsynced.values():
                try:
                    if os.fstat(u.fd).st_nlink > 0:  # an unlinked file is gone anyway
                        files += 1
                        discarded += max(0, os.fstat(u.fd).st_size - u.synced_size)
                        for b, data in u.undo.items():
                            os.pwrite(u.fd, data, b * BLOCK)
                            discarded += len(data)
                        os.ftruncate(u.fd, u.synced_size)
                finally:
                    os.close(u.fd)
            self.unsynced.clear()
            self.counts["power_losses"] += 1
            return {"files": files, "bytes": discarded}

    def stats(self) -> dict[str, Any]:
        with self._mu:
            return {**self.counts, "unsynced_files": len(self.unsynced),
                    "open_files": len(self.handles)}

    # -- files ------------------------------------------------------------------------------------
    def _open(self, full: str, flags: int, mode: int = 0o644, create: bool = False) -> int:
        # The daemon reads old bytes before overwriting them: always O_RDWR. O_APPEND is left to
        # the kernel (it sends the write's offset); O_TRUNC is done below, with its undo record;
        # O_SYNC/O_DSYNC are honoured by marking each write synced; O_DIRECT is not needed.
        sync_each = bool(flags & (os.O_SYNC | os.O_DSYNC))
        drop = (os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_SYNC | os.O_DSYNC
                | getattr(os, "O_DIRECT", 0) | os.O_NOCTTY)
        oflags = (flags & ~drop) | os.O_RDWR | os.O_CLOEXEC
        if not create:
            oflags &= ~(os.O_CREAT | os.O_EXCL)
        fd = os.open(full, oflags, mode)
        try:
            st = os.fstat(fd)
            with self._mu:
                self.handles[fd] = ((st.st_dev, st.st_ino), sync_each)
                if flags & os.O_TRUNC and st.st_size:
                    self._truncate_fd(fd, 0)
        except BaseException:
            self.handles.pop(fd, None)
            os.close(fd)
            raise
        return fd

    def open(self, path: str, flags: int) -> int:
        return self._open(self._path(path), flags)

    def create(self, path: str, mode: int, flags: int) -> int:
        # A new file is empty: nothing to undo until it is written (a file that is never fsynced
        # comes back empty). An existing one (O_CREAT without O_EXCL) is opened as usual.
        return self._open(self._path(path), flags | os.O_CREAT, mode, create=True)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mu:
            u = self._entry(fh)
            self._save(u, offset, offset + len(data))
            n = os.pwrite(fh, data, offset)
            self.counts["writes"] += 1
            self.counts["bytes_written"] += n
            if self.handles.get(fh, (None, False))[1]:
                self._synced(fh)
            return n

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if fh is not None and fh in self.handles:
            with self._mu:
                self._truncate_fd(fh, length)
            return 0
        fd = os.open(self._path(path), os.O_RDWR | os.O_CLOEXEC)
        try:
            with self._mu:
                self._truncate_fd(fd, length)
        finally:
            os.close(fd)
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        with self._mu:
            if mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE):
                u = self._entry(fh)  # everything after offset moves
                self._save(u, offset, max(u.synced_size, os.fstat(fh).st_size))
            elif mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                u = self._entry(fh)
                self._save(u, offset, offset + size)
            elif not mode & FALLOC_FL_KEEP_SIZE:
                self._entry(fh)  # may grow the file: the undo log restores its size
            # KEEP_SIZE alone (preallocation) changes nothing a reader sees.
            _fallocate(fh, mode, offset, size)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mu:
            self._synced(fh)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0  # metadata is durable at once (see the module docstring)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._mu:
            self.handles.pop(fh, None)
        os.close(fh)
        return 0

    # -- metadata: straight through -----------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None and fh in self.handles else os.lstat(self._path(path))
        return {
            "st_mode": st.st_mode, "st_nlink": st.st_nlink, "st_uid": st.st_uid,
            "st_gid": st.st_gid, "st_size": st.st_size, "st_blocks": st.st_blocks,
            "st_blksize": st.st_blksize, "st_rdev": st.st_rdev,
            "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns,
        }

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._path(path), amode):
            raise OSError(errno.EACCES, "access")
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def opendir(self, path: str) -> int:
        if not os.path.isdir(self._path(path)):
            raise OSError(errno.ENOTDIR, path)
        return 0

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._path(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._path(path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._path(path))
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags:
            _renameat2(self._path(old), self._path(new), flags)
        else:
            os.rename(self._path(old), self._path(new))
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._path(source), self._path(target))
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._path(target))
        return 0

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def mknod(self, path: str, mode: int, dev: int) -> int:
        os.mknod(self._path(path), mode, dev)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._path(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._path(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._path(path), follow_symlinks=False)
        else:
            os.utime(self._path(path), ns=(int(times[0]), int(times[1])), follow_symlinks=False)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._path(path))
        return {k: getattr(sv, k) for k in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
            "f_favail", "f_flag", "f_namemax")}


# -- the daemon --------------------------------------------------------------------------------

def _unmount_command(mountpoint: str, lazy: bool = False) -> list[str]:
    for helper in ("fusermount3", "fusermount"):
        if shutil.which(helper):
            return [helper, "-u", *(["-z"] if lazy else []), "-q", mountpoint]
    return ["umount", *(["-l"] if lazy else []), mountpoint]


def _serve(backing: str, mountpoint: str) -> int:
    """Mount, answer control commands on stdin (one JSON line out per line in), run FUSE."""
    if not os.environ.get("FUSE_LIBRARY_PATH") and not os.environ.get("FUSE_LIBRARY_NAME"):
        from ctypes.util import find_library

        if find_library("fuse3"):
            os.environ["FUSE_LIBRARY_NAME"] = "fuse3"  # prefer libfuse 3 where both are installed
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    import mfusepy

    ops = LazyOperations(backing)
    out_lock = threading.Lock()

    def say(msg: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(msg) + "\n")
            sys.stdout.flush()

    def control() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            try:
                if cmd == "power_loss":
                    say({"ok": True, **ops.power_loss()})
                elif cmd == "sync":
                    say({"ok": True, **ops.sync_all()})
                elif cmd == "stats":
                    say({"ok": True, **ops.stats()})
                else:
                    say({"ok": False, "error": f"unknown command {cmd!r}"})
            except Exception as exc:  # noqa: BLE001 - reported to the test
                say({"ok": False, "error": repr(exc)})
        # stdin closed: the test process is gone; do not leave the mount behind
        subprocess.run(_unmount_command(mountpoint, lazy=True), check=False)

    def init(path: str) -> None:
        threading.Thread(target=control, name="lazyfs-control", daemon=True).start()
        say({"ready": True, "pid": os.getpid()})

    ops.init = init  # type: ignore[attr-defined]

    class _FUSE(mfusepy.FUSE):
        # mfusepy drops rename's flags on libfuse 3 (RENAME_NOREPLACE would silently replace)
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return self.operations.rename(old.decode(self.encoding, self.errors),
                                          new.decode(self.encoding, self.errors), flags)

    opts: dict[str, Any] = {
        "foreground": True, "nothreads": False, "fsname": "lazyfs",
        "attr_timeout": 0, "entry_timeout": 0, "negative_timeout": 0,
    }
    _FUSE(ops, mountpoint, raw_fi=False, **opts)
    return 0


# -- the test side -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def fuse_unavailable() -> str | None:
    """Why a LazyFS cannot be mounted here, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (FUSE kernel module missing or not exposed)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc}"
    probe = subprocess.run(
        [sys.executable, "-c", "import warnings; warnings.simplefilter('ignore'); import mfusepy"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return ("the FUSE binding does not load (pip install mfusepy; apt-get install fuse3 "
                f"libfuse3-3): {last}")
    if os.geteuid() != 0 and not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "no fusermount3/fusermount to mount as a user (apt-get install fuse3)"
    return None


def require_fuse() -> None:
    """Skip the calling test, naming what is missing, if a LazyFS cannot be mounted here
    (``DURO_REQUIRE_FUSE=1``: fail it instead, for CI that must run it)."""
    import pytest

    reason = fuse_unavailable()
    if reason is None:
        return
    if os.environ.get("DURO_REQUIRE_FUSE") == "1":
        pytest.fail(f"LazyFS unavailable: {reason}")
    pytest.skip(f"LazyFS unavailable: {reason}")


class LazyFS:
    """Mount ``backing`` at ``mountpoint`` through the LazyFS daemon (a subprocess).

    ``with LazyFS(...) as fs`` (or :meth:`start` / :meth:`stop`). The methods block; from asyncio,
    call them with ``asyncio.to_thread``.
    """

    def __init__(self, backing: str | Path, mountpoint: str | Path, *,
                 log_path: str | Path | None = None, timeout: float = 30.0) -> None:
        self.backing = Path(backing).resolve()
        self.mountpoint = Path(mountpoint).resolve()
        self.log_path = Path(log_path) if log_path else self.backing.with_name(
            self.backing.name + ".lazyfs.log")
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Self:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if os.listdir(self.mountpoint):
            raise RuntimeError(f"{self.mountpoint} is not empty: it would be hidden by the mount")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon holds it
        try:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "serve", str(self.backing),
                 str(self.mountpoint)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            ready = self._read_line(self.timeout)
            if not ready.get("ready"):
                raise RuntimeError(f"LazyFS did not start: {ready}")
            deadline = time.monotonic() + self.timeout
            while not os.path.ismount(self.mountpoint):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.mountpoint} is not a mount point")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Unmount (retrying while the mount is busy, lazily in the end) and end the daemon."""
        proc, self.proc = self.proc, None
        deadline = time.monotonic() + timeout
        while os.path.ismount(self.mountpoint):
            lazy = time.monotonic() > deadline
            subprocess.run(_unmount_command(str(self.mountpoint), lazy=lazy), check=False,
                           capture_output=True)
            if lazy:
                break
            if os.path.ismount(self.mountpoint):
                time.sleep(0.1)
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control --------------------------------------------------------------------------------
    def _read_line(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
                             daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"LazyFS daemon did not answer within {timeout} s; log:\n{tail}")
        return json.loads(box[0])

    def _command(self, cmd: str) -> dict[str, Any]:
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("LazyFS is not running")
            assert self.proc.stdin is not None
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            reply = self._read_line(self.timeout)
        if not reply.get("ok"):
            raise RuntimeError(f"LazyFS {cmd}: {reply.get('error')}")
        reply.pop("ok")
        return reply

    def stats(self) -> dict[str, Any]:
        """Counters: writes, fsyncs, bytes_written, power_losses, unsynced_files, open_files."""
        return self._command("stats")

    def sync(self) -> dict[str, Any]:
        """Make everything written so far durable (what ``sync(1)`` does on a real disk)."""
        return self._command("sync")

    def power_loss(self, wait_closed: float = 10.0) -> dict[str, Any]:
        """Discard every write not fsynced: each file goes back to its last fsync.

        Every process that had files open on the mount must be dead: this waits up to
        ``wait_closed`` s for the kernel to release their files, then raises if some are
        still open. Returns ``{"files": rolled back, "bytes": discarded}``.
        """
        deadline = time.monotonic() + wait_closed
        while (n := self.stats()["open_files"]) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"power_loss: {n} files are still open on {self.mountpoint}")
            time.sleep(0.05)
        return self._command("power_loss")


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        return _serve(argv[1], argv[2])
    print("usage: lazyfs.py serve BACKING MOUNTPOINT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
