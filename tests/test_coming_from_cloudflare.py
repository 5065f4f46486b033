"""docs/coming-from-cloudflare.md says only what is true: every duro name it gives exists, and
every row marked **[pending-runtime]** is still missing (once the work that brings it is merged,
this test fails until the mark is removed)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from duro import ObjectId, Request, Response
from duro._namespace import Namespace, Stub
from duro.node.runtime.websockets import WebSocket, WebSocketContext
from duro.node.storage.object_storage import ObjectStorage, Transaction

pytestmark = pytest.mark.timeout(60)

DOC = Path(__file__).resolve().parent.parent / "docs" / "coming-from-cloudflare.md"
MARK = "[pending-runtime]"


def rows() -> list[tuple[str, str, str, str]]:
    """(section, Cloudflare cell, duro cell, whole row) of every table row."""
    out, section = [], ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| ") and not line.startswith("| ---") and \
                not line.startswith("| Cloudflare |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out.append((section, cells[0], cells[1], line))
    return out


def spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- where a duro name must exist, by section ------------------------------------------------------

def _has(owner: type, attr: str) -> bool:
    return hasattr(owner, attr)


def _cli_commands() -> set[str]:
    import argparse

    from duro.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def _exists(section: str, name: str) -> bool | None:
    """Whether ``name`` (a span of the duro column) exists; None: not a name this test checks."""
    from duro import _app
    from duro._methods import RUNTIME_HANDLERS

    name = re.sub(r"^(await |async with )", "", name)
    if m := re.match(r"duro (\w+)", name):
        return m.group(1) in _cli_commands()
    if section.startswith("Writing") and (m := re.match(r"(?:async def )?(\w+)\(self", name)):
        return m.group(1) in RUNTIME_HANDLERS or m.group(1) in ("__init__", "increment")
    if section.startswith("Configuration"):
        if name in ("new_sqlite_classes", "deleted_classes", "renamed_classes"):
            return name in _app._MIGRATION_FIELDS
        if name.startswith("[expose."):
            return "expose" in _app._TOP_FIELDS
        return None
    if m := re.match(r"ctx\.storage\.(\w+)", name):
        return _has(ObjectStorage, m.group(1))
    if m := re.match(r"ctx\.(\w+)", name):
        return _has(WebSocketContext, m.group(1))
    if m := re.match(r"(?:stub|id|ws|request|exc|txn)\.(\w+)", name):
        owner = {"stub": Stub, "id": ObjectId, "ws": WebSocket, "request": Request,
                 "txn": Transaction}.get(name.split(".")[0])
        if owner is Stub and m.group(1) == "increment":  # any public method: __getattr__
            return hasattr(Stub, "__getattr__")
        return None if owner is None else _has(owner, m.group(1))
    if m := re.match(r"(\w+)=True$", name):  # a storage option
        return any(m.group(1) in inspect.signature(getattr(ObjectStorage, f)).parameters
                   for f in ("get", "get_many", "put", "put_many", "delete", "list"))
    if m := re.match(r"(\w+)\(", name):
        owner = (ObjectStorage if section.startswith("`ctx.storage`") else
                 Namespace if section.startswith("Namespaces") else None)
        return None if owner is None else _has(owner, m.group(1))
    return None


def test_every_unmarked_duro_name_exists() -> None:
    checked = 0
    for section, cf, duro_cell, row in rows():
        if MARK in row:
            continue
        for name in spans(duro_cell):
            ok = _exists(section, name)
            if ok is not None:
                checked += 1
                assert ok, f"{DOC.name}: {name!r} (for {cf}) does not exist in duro"
    assert checked >= 40, checked  # the page is mostly names, and they are checked
    assert Response(status=101).status == 101


# -- what a marked row promises, probed for real --------------------------------------------------

# Cloudflare cell -> a probe: does duro have it now? (sync or async, given tmp_path). Every row
# marked pending has one here; none is pending since the runtime work of issue 13 was merged.
PROBES: dict[str, Callable[[Path], Any]] = {}


async def test_marked_rows_are_still_pending(tmp_path: Path) -> None:
    marked = [cf for _, cf, _, row in rows() if MARK in row]
    assert sorted(marked) == sorted(PROBES), "every marked row has a probe here, and only those"
    landed = []
    for cf in marked:
        result = PROBES[cf](tmp_path)
        if inspect.isawaitable(result):
            result = await result
        if result:  # the name exists / the Cloudflare behaviour is there now
            landed.append(cf)
    assert not landed, (f"{DOC.name}: {landed} now exist in duro: remove their {MARK} marks "
                        f"and correct the rows")
