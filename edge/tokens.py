"""Gateway credentials: bearer tokens, who holds them, and what each may call.

A Gateway client sends the gRPC metadata ``authorization: Bearer <token>``. Tokens come from

* a **tokens file** (``--gateway-tokens-file``, ``DURO_EDGE_GATEWAY_TOKENS_FILE``), TOML::

      [[token]]
      name = "billing"                   # who holds it (logs, metrics, messages)
      sha256 = "5e8c...64 hex digits"    # SHA-256 of the token (or: token = "<the token>")
      bindings = ["COUNTER"]             # optional: only these bindings (default: all)
      methods = ["get", "COUNTER.increment", "fetch"]   # optional: only these methods

  ``methods`` entries are a method name (any allowed binding) or ``BINDING.method``; ``fetch`` is
  the Fetch RPC. The file is re-read when it changes (checked at most once a second), so a token
  is added or revoked without a restart; a file that does not parse keeps the previous tokens and
  logs an error.
* the **environment** (``DURO_EDGE_GATEWAY_TOKENS``): comma-separated tokens, each the token
  itself or ``sha256:<hex>``, allowed every binding and method (for containers and Secrets).

Nothing configured means every call is refused: the Gateway is closed by default.

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest` against every known
token (no early exit), so neither the token nor which entry matched leaks through timing; only
digests need to be stored. A token is random (``duro gateway-token`` makes 32 random bytes,
URL-safe base64 with the prefix ``duro_gw_``), so a fast hash is enough; a token given in
plain text must be at least :data:`MIN_TOKEN_CHARS` characters. Whatever the Gateway allows, a
token reaches only what ``duro.toml``'s ``[expose]`` opens (``duro._exposure``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from duro._app import ConfigError

__all__ = [
    "Principal",
    "TokenStore",
    "Unauthenticated",
    "new_token",
    "token_digest",
    "token_entry",
    "dev_token",
    "MIN_TOKEN_CHARS",
]

log = logging.getLogger("duro.edge.gateway")

TOKEN_PREFIX = "duro_gw_"
MIN_TOKEN_CHARS = 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = ("name", "sha256", "token", "bindings", "methods")


class Unauthenticated(Exception):
    """No credential, or one that no configured token matches."""


@dataclass(frozen=True)
class Principal:
    """One token's holder and what it may call (``None``: no restriction)."""

    name: str
    digest: bytes
    bindings: frozenset[str] | None = None
    methods: frozenset[str] | None = None

    def allows(self, binding: str, method: str) -> bool:
        if self.bindings is not None and binding not in self.bindings:
            return False
        if self.methods is None:
            return True
        return method in self.methods or f"{binding}.{method}" in self.methods


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_entry(name: str, token: str, *, bindings: Collection[str] | None = None,
                methods: Collection[str] | None = None) -> str:
    """The ``[[token]]`` TOML entry for ``token`` (its digest, never the token)."""
    lines = ["[[token]]", f"name = {_toml_str(name)}", f'sha256 = "{token_digest(token)}"']
    if bindings is not None:
        lines.append(f"bindings = [{', '.join(map(_toml_str, bindings))}]")
    if methods is not None:
        lines.append(f"methods = [{', '.join(map(_toml_str, methods))}]")
    return "\n".join(lines) + "\n"


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dev_token(directory: Path) -> tuple[str, Path, Path]:
    """``(token, token file, tokens file)`` for a development cluster in ``directory``.

    Reuses the token of an earlier run (so scripts keep working across restarts of ``duro
    dev``), else makes one: ``gateway-token`` holds it (mode 0600), ``gateway-tokens.toml`` its
    digest as the entry ``dev`` with access to everything the app exposes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "gateway-token"
    tokens_file = directory / "gateway-tokens.toml"
    if token_file.is_file() and tokens_file.is_file():
        token = token_file.read_text().strip()
        if token and token_digest(token) in tokens_file.read_text():
            return token, token_file, tokens_file
    token = new_token()
    _write_private(token_file, token + "\n")
    _write_private(tokens_file, "# Gateway tokens of this development cluster "
                                "(docs/security.md)\n" + token_entry("dev", token))
    return token, token_file, tokens_file


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# -- parsing -----------------------------------------------------------------------------------

def parse_tokens_file(path: Path, known_bindings: Collection[str] | None = None
                      ) -> list[Principal]:
    """The tokens of ``path``; :class:`ConfigError` naming the file and entry if invalid."""
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the Gateway tokens file: {exc}") from None
    for key in raw:
        if key != "token":
            raise ConfigError(f"{path}: {key}: unknown field (the file holds [[token]] entries)")
    entries = raw.get("token", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: token must be an array of tables ([[token]])")
    out: list[Principal] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        principal = _parse_entry(f"{path}: token[{i}]", entry, known_bindings)
        if principal.name in names:
            raise ConfigError(f"{path}: token[{i}].name = {principal.name!r}: duplicate name")
        names.add(principal.name)
        out.append(principal)
    _no_duplicate_digests(str(path), out)
    return out


def _parse_entry(where: str, entry: Any, known: Collection[str] | None) -> Principal:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table, not {type(entry).__name__}")
    for key in entry:
        if key not in _ENTRY_FIELDS:
            raise ConfigError(f"{where}.{key}: unknown field (expected one of "
                              f"{list(_ENTRY_FIELDS)})")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name: required, a non-empty string")
    if ("sha256" in entry) == ("token" in entry):
        raise ConfigError(f"{where} ({name}): give exactly one of sha256 and token")
    if "sha256" in entry:
        digest = entry["sha256"]
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
            raise ConfigError(f"{where}.sha256 ({name}): must be 64 hex digits (the token's "
                              f"SHA-256)")
        raw_digest = bytes.fromhex(digest)
    else:
        raw_digest = _plain_digest(f"{where}.token ({name})", entry["token"])
    bindings = _names(f"{where}.bindings", entry.get("bindings"))
    methods = _names(f"{where}.methods", entry.get("methods"))
    if known is not None:
        for b in bindings or ():
            if b not in known:
                raise ConfigError(f"{where}.bindings: {b!r}: no such binding in this app "
                                  f"(bindings: {sorted(known)})")
        for m in methods or ():
            b, dot, _ = m.rpartition(".")
            if dot and b not in known:
                raise ConfigError(f"{where}.methods: {m!r}: no such binding {b!r} in this app")
    return Principal(name, raw_digest, bindings, methods)


def _plain_digest(where: str, token: Any) -> bytes:
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where}: a token must be a string of at least {MIN_TOKEN_CHARS} "
                          f"characters (make one with `duro gateway-token`)")
    if token != token.strip() or "," in token:
        raise ConfigError(f"{where}: a token has no spaces or commas")
    return hashlib.sha256(token.encode()).digest()


def _names(where: str, value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: must be an array of non-empty strings")
    return frozenset(value)


def parse_env_tokens(text: str) -> list[Principal]:
    """``DURO_EDGE_GATEWAY_TOKENS``: comma-separated tokens or ``sha256:<hex>``, full access."""
    out = []
    for i, item in enumerate(t.strip() for t in text.split(",")):
        if not item:
            continue
        where = f"gateway_tokens (DURO_EDGE_GATEWAY_TOKENS) entry {i}"
        if item.startswith("sha256:"):
            digest = item[len("sha256:"):].lower()
            if not _HEX64.fullmatch(digest):
                raise ConfigError(f"{where}: sha256: must be followed by 64 hex digits")
            raw = bytes.fromhex(digest)
        else:
            raw = _plain_digest(where, item)
        out.append(Principal(f"env[{i}]", raw))
    _no_duplicate_digests("gateway_tokens", out)
    return out


def _no_duplicate_digests(where: str, principals: list[Principal]) -> None:
    seen: dict[bytes, str] = {}
    for p in principals:
        if p.digest in seen:
            raise ConfigError(f"{where}: tokens {seen[p.digest]!r} and {p.name!r} are the same")
        seen[p.digest] = p.name


# -- the store ---------------------------------------------------------------------------------

class TokenStore:
    """The tokens one edge accepts; re-reads its file when it changes."""

    def __init__(self, file: Path | None = None, env_tokens: str = "", *,
                 known_bindings: Collection[str] | None = None,
                 check_interval: float = 1.0) -> None:
        self.file = file
        self.known_bindings = None if known_bindings is None else frozenset(known_bindings)
        self.check_interval = check_interval
        self._env = parse_env_tokens(env_tokens)  # ConfigError: the edge does not start
        self._from_file: list[Principal] = []
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0
        if file is not None:
            self._signature = self._stat()
            self._from_file = parse_tokens_file(file, self.known_bindings)
            self._checked = time.monotonic()

    @property
    def principals(self) -> list[Principal]:
        return [*self._env, *self._from_file]

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.file is not None
        try:
            st = self.file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.file is None or now - self._checked < self.check_interval:
            return
        self._checked = now
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self._from_file = parse_tokens_file(self.file, self.known_bindings)
        except ConfigError as exc:
            log.error("Gateway tokens file not reloaded, keeping the %d previous tokens: %s",
                      len(self._from_file), exc)
            return
        log.info("Gateway tokens reloaded from %s: %d tokens", self.file, len(self._from_file))

    def authenticate(self, authorization: str | None) -> Principal:
        """The holder of the bearer token in an ``authorization`` value;
        :class:`Unauthenticated` otherwise."""
        self._maybe_reload()
        if not authorization:
            raise Unauthenticated(
                "the Gateway needs a token: send the metadata 'authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for principal in self.principals:  # every entry, whichever matches: constant time
            if hmac.compare_digest(digest, principal.digest) and found is None:
                found = principal
        if found is None:
            raise Unauthenticated("unknown Gateway token")
        return found
