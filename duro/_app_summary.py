"""What an app offers, as plain data: its bindings, their callable methods and what is exposed.

``duro dev`` uses it twice: to print hints for *the app it runs* (not for the examples), and to
check that changed app code still loads before it restarts the cluster on it. Both run it in a
child process (``python -m duro._app_summary APP``, one JSON line on stdout, or the load error on
stderr and exit status 1): ``duro dev`` itself never imports the user's code, so a reload always
sees the files as they are now, and a broken edit cannot take the supervisor down.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["AppSummary", "BindingSummary", "summarize", "summarize_in_child", "hints"]


@dataclass(frozen=True)
class BindingSummary:
    name: str
    class_name: str
    #: callable methods, each with its example arguments (JSON) or "" when it needs none
    methods: tuple[tuple[str, str], ...]
    http: bool  # the edge's default route /<name lower-cased>/<object>/... reaches it
    gateway: bool


@dataclass(frozen=True)
class AppSummary:
    name: str
    bindings: tuple[BindingSummary, ...]
    worker: bool  # a module-level fetch(request, env) routes every HTTP request

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "worker": self.worker, "bindings": [
            {"name": b.name, "class_name": b.class_name, "methods": [list(m) for m in b.methods],
             "http": b.http, "gateway": b.gateway} for b in self.bindings]})

    @classmethod
    def from_json(cls, text: str) -> AppSummary:
        raw = json.loads(text)
        return cls(raw["name"], tuple(
            BindingSummary(b["name"], b["class_name"], tuple((m, a) for m, a in b["methods"]),
                           b["http"], b["gateway"]) for b in raw["bindings"]), raw["worker"])


def _example_args(func: Any) -> str:
    """``""`` when the method can be called without arguments, else a JSON list of
    placeholders naming the parameters it needs (``["<name>"]``)."""
    params = list(inspect.signature(func).parameters.values())[1:]  # without self
    needed = [p.name for p in params if p.default is p.empty
              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return json.dumps([f"<{n}>" for n in needed]) if needed else ""


def summarize(app_ref: str) -> AppSummary:
    """Load the app (:func:`duro._app.load_app`, in this process) and describe it."""
    from duro._app import load_app
    from duro._methods import callable_methods, find_method

    app = load_app(app_ref)
    out = []
    for name, b in app.bindings.items():
        methods = tuple((m, _example_args(find_method(b.cls, m))) for m in
                        callable_methods(b.cls))
        out.append(BindingSummary(name, b.class_name, methods, app.exposure.http_open(name),
                                  app.exposure.gateway_open(name)))
    return AppSummary(app.name, tuple(out), app.worker_fetch is not None)


async def summarize_in_child(app_ref: str, python: str = sys.executable,
                             timeout: float = 60.0) -> AppSummary:
    """:func:`summarize` in a fresh interpreter; :class:`~duro._app.ConfigError` with what the
    load printed (the error, or the traceback of the user's code) when the app does not load."""
    from duro._app import ConfigError

    proc = await asyncio.create_subprocess_exec(
        python, "-m", "duro._app_summary", app_ref, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ConfigError(f"loading {app_ref} took more than {timeout:g} s") from None
    if proc.returncode != 0:
        raise ConfigError(err.decode(errors="replace").strip() or f"exit status {proc.returncode}")
    return AppSummary.from_json(out.decode())


def hints(summary: AppSummary, *, etcd: str | None, edge_url: str | None,
          limit: int = 3) -> list[str]:
    """Commands to try on this app's objects, from its own bindings (``etcd``: the flag they
    need, None when the CLI finds the cluster by itself)."""
    lines = []
    for b in summary.bindings[:limit]:
        if b.methods:
            method, args = next(((m, a) for m, a in b.methods if not a), b.methods[0])
            lines.append(f"duro call {b.name} demo {method}" + (f" '{args}'" if args else "")
                         + (f" --etcd {etcd}" if etcd else "") + f"    ({b.class_name}: "
                         + ", ".join(m for m, _ in b.methods[:6])
                         + (", ..." if len(b.methods) > 6 else "") + ")")
        else:
            lines.append(f"{b.name} ({b.class_name}) has no public methods: only fetch() "
                         "reaches it")
    if len(summary.bindings) > limit:
        lines.append(f"... and {len(summary.bindings) - limit} more bindings "
                     f"({', '.join(b.name for b in summary.bindings[limit:])})")
    if edge_url:
        if summary.worker:
            lines.append(f"curl {edge_url}/    (the app's fetch(request, env) routes it)")
        else:
            routed = [b for b in summary.bindings if b.http]
            lines.extend(f"curl {edge_url}/{b.name.lower()}/demo/    ({b.class_name}.fetch "
                         f"gets the rest of the path)" for b in routed[:limit])
            if not routed:
                lines.append(f"HTTP at {edge_url} reaches nothing yet: add [expose.<BINDING>] "
                             f"http = true to duro.toml, or a fetch(request, env) (docs/edge.md)")
    return lines


def _main(argv: list[str]) -> int:
    from duro._app import ConfigError

    if len(argv) != 1:
        print("usage: python -m duro._app_summary APP", file=sys.stderr)
        return 2
    try:
        summary = summarize(argv[0])
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    # Anything the user's module raised on import: its traceback is what they need to see.
    print(summary.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
