"""Notice that an app's code changed: ``duro dev``'s reload trigger.

A poll of the app directory's ``*.py`` and ``*.toml`` files (path, size, modification time), every
``interval`` seconds: no dependency, no inotify limits, and an app directory is small. Hidden
directories (``.duro``, ``.venv``, ``.git``), ``__pycache__``, ``node_modules`` and virtualenvs are
skipped, so the cluster's own data directory inside the app never triggers a reload. A change is
reported once the files have stayed the same for ``settle`` seconds, so an editor's save in
several writes (or a ``git checkout``) gives one reload, not several.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

__all__ = ["AppWatcher", "watched_dir"]

_SUFFIXES = (".py", ".toml")
_SKIP = {"__pycache__", "node_modules", "venv", "site-packages"}
MAX_FILES = 5000  # past this, the directory is not an app's; stop looking deeper

Snapshot = dict[str, tuple[int, int]]


def watched_dir(app_ref: str) -> Path | None:
    """The directory to watch for ``duro dev --app``: the app directory, the directory of its
    ``duro.toml`` or ``.py`` file; None for a module name (installed code is not reloaded)."""
    p = Path(app_ref)
    if p.is_dir():
        return p.resolve()
    if p.is_file():
        return p.resolve().parent
    return None


class AppWatcher:
    def __init__(self, root: Path, *, interval: float = 0.5, settle: float = 0.3) -> None:
        self.root = root
        self.interval = interval
        self.settle = settle
        self._last = self.snapshot()

    def snapshot(self) -> Snapshot:
        out: Snapshot = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP
                           and not (Path(dirpath, d) / "pyvenv.cfg").exists()]
            for name in filenames:
                if name.endswith(_SUFFIXES):
                    path = os.path.join(dirpath, name)
                    try:
                        st = os.stat(path)
                    except OSError:  # removed while we looked
                        continue
                    out[os.path.relpath(path, self.root)] = (st.st_mtime_ns, st.st_size)
            if len(out) > MAX_FILES:
                break
        return out

    def changed_since_last(self) -> list[str]:
        """The files added, removed or modified since the last call (or construction)."""
        now = self.snapshot()
        changed = sorted(p for p in now.keys() | self._last.keys()
                         if now.get(p) != self._last.get(p))
        self._last = now
        return changed

    async def wait_change(self) -> list[str]:
        """Wait for a change and for the files to settle; return what changed."""
        changed: set[str] = set()
        while not changed:
            await asyncio.sleep(self.interval)
            changed.update(await asyncio.to_thread(self.changed_since_last))
        while True:  # settle: until one look finds nothing new
            await asyncio.sleep(self.settle)
            more = await asyncio.to_thread(self.changed_since_last)
            if not more:
                return sorted(changed)
            changed.update(more)
