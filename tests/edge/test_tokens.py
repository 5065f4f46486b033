"""Gateway tokens (duro.edge.tokens): the file and environment formats, every mistake a clear
ConfigError, limits per binding and method, reload on change, and the development token. The
Gateway answering UNAUTHENTICATED/PERMISSION_DENIED is tested through its listener in
tests/edge/test_gateway_security.py."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from duro._app import ConfigError
from duro.edge.tokens import (
    MIN_TOKEN_CHARS,
    Principal,
    TokenStore,
    Unauthenticated,
    dev_token,
    new_token,
    parse_env_tokens,
    parse_tokens_file,
    token_digest,
    token_entry,
)

pytestmark = pytest.mark.timeout(10)

BINDINGS = ("COUNTER", "CHAT")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_entries_round_trip_and_limits(tmp_path):
    full, limited = new_token(), new_token()
    f = write(tmp_path / "t.toml", token_entry("full", full) + token_entry(
        "limited", limited, bindings=["COUNTER"], methods=["get", "CHAT.fetch"]))
    assert full not in f.read_text() and limited not in f.read_text()  # digests only
    store = TokenStore(f, known_bindings=BINDINGS)
    p = store.authenticate(f"Bearer {full}")
    assert p.name == "full" and p.allows("CHAT", "anything")
    q = store.authenticate(f"bearer  {limited} ")  # scheme case-insensitive, spaces trimmed
    assert q.name == "limited"
    assert q.allows("COUNTER", "get")
    assert not q.allows("COUNTER", "increment")
    assert not q.allows("CHAT", "fetch")  # CHAT is not among its bindings
    assert Principal("m", b"", None, frozenset({"CHAT.fetch"})).allows("CHAT", "fetch")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc",
                                    "Bearer not-a-known-token-at-all", "token"])
def test_missing_or_unknown_tokens_are_unauthenticated(tmp_path, header):
    store = TokenStore(write(tmp_path / "t.toml", token_entry("a", new_token())))
    with pytest.raises(Unauthenticated):
        store.authenticate(header)


def test_no_tokens_refuses_everything():
    store = TokenStore()
    assert store.principals == []
    with pytest.raises(Unauthenticated):
        store.authenticate("Bearer " + new_token())


def test_plain_tokens_in_the_file_and_env(tmp_path):
    plain = "p" * MIN_TOKEN_CHARS
    f = write(tmp_path / "t.toml", f'[[token]]\nname = "plain"\ntoken = "{plain}"\n')
    env_plain, env_hashed = new_token(), new_token()
    store = TokenStore(f, f" {env_plain} , sha256:{token_digest(env_hashed)},")
    assert store.authenticate(f"Bearer {plain}").name == "plain"
    assert store.authenticate(f"Bearer {env_plain}").name == "env[0]"
    assert store.authenticate(f"Bearer {env_hashed}").name == "env[1]"
    assert store.authenticate(f"Bearer {env_hashed}").allows("ANY", "thing")


HEX_A, HEX_B = "a" * 64, "b" * 64


@pytest.mark.parametrize("text, words", [
    ("[[token]\n", ["not valid TOML"]),
    ("tokens = []\n", ["tokens", "unknown field"]),
    ("token = 3\n", ["array of tables"]),
    (f'[[token]]\nsha256 = "{HEX_A}"\n', ["token[0].name", "required"]),
    ('[[token]]\nname = "x"\n', ["exactly one of sha256 and token"]),
    ('[[token]]\nname = "x"\nsha256 = "abc"\n', ["token[0].sha256", "64 hex"]),
    ('[[token]]\nname = "x"\ntoken = "short"\n', ["token[0].token", "at least"]),
    (f'[[token]]\nname = "x"\ntoken = "{"y" * 30}"\nsha256 = "{HEX_A}"\n', ["exactly one"]),
    (f'[[token]]\nname = "x"\nsha256 = "{HEX_A}"\nbindings = ["NOPE"]\n',
     ["token[0].bindings", "'NOPE'", "no such binding"]),
    (f'[[token]]\nname = "x"\nsha256 = "{HEX_A}"\nmethods = ["NOPE.get"]\n',
     ["token[0].methods", "NOPE"]),
    (f'[[token]]\nname = "x"\nsha256 = "{HEX_A}"\nmethods = "get"\n',
     ["token[0].methods", "array"]),
    (f'[[token]]\nname = "x"\nsha256 = "{HEX_A}"\nrole = "admin"\n',
     ["token[0].role", "unknown field"]),
    (f'[[token]]\nname = "x"\nsha256 = "{HEX_A}"\n[[token]]\nname = "x"\nsha256 = "{HEX_B}"\n',
     ["duplicate name"]),
    (f'[[token]]\nname = "x"\nsha256 = "{HEX_A}"\n[[token]]\nname = "y"\n'
     f'sha256 = "{HEX_A.upper()}"\n', ["'x' and 'y' are the same"]),
])
def test_file_mistakes_are_config_errors(tmp_path, text, words):
    f = write(tmp_path / "tokens.toml", text)
    with pytest.raises(ConfigError) as ei:
        parse_tokens_file(f, BINDINGS)
    message = str(ei.value)
    assert str(f) in message
    for word in words:
        assert word in message, (word, message)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        TokenStore(tmp_path / "nope.toml")


@pytest.mark.parametrize("text", ["short", "sha256:xyz", f"{'a' * 30},{'a' * 30}"])
def test_env_mistakes_are_config_errors(text):
    with pytest.raises(ConfigError, match="gateway_tokens"):
        parse_env_tokens(text)


def test_file_is_reloaded_when_it_changes(tmp_path):
    old, new = new_token(), new_token()
    f = write(tmp_path / "t.toml", token_entry("old", old))
    store = TokenStore(f, check_interval=0.0)
    assert store.authenticate(f"Bearer {old}").name == "old"
    write(f, token_entry("new", new))
    os.utime(f, ns=(time.time_ns() + 10**9,) * 2)  # a new mtime even on coarse clocks
    assert store.authenticate(f"Bearer {new}").name == "new"
    with pytest.raises(Unauthenticated):  # revoked
        store.authenticate(f"Bearer {old}")
    # A broken file keeps the tokens that were good (and logs an error).
    write(f, "[[token]\n")
    os.utime(f, ns=(time.time_ns() + 2 * 10**9,) * 2)
    assert store.authenticate(f"Bearer {new}").name == "new"


def test_reload_is_checked_at_most_once_per_interval(tmp_path):
    old, new = new_token(), new_token()
    f = write(tmp_path / "t.toml", token_entry("old", old))
    store = TokenStore(f, check_interval=3600.0)
    write(f, token_entry("new", new))
    with pytest.raises(Unauthenticated):
        store.authenticate(f"Bearer {new}")


def test_dev_token_is_private_and_reused(tmp_path):
    token, token_file, tokens_file = dev_token(tmp_path / "gw")
    assert token_file.read_text().strip() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert TokenStore(tokens_file).authenticate(f"Bearer {token}").name == "dev"
    assert dev_token(tmp_path / "gw")[0] == token  # the next run of duro dev keeps it
    token_file.write_text("something else\n")
    again = dev_token(tmp_path / "gw")[0]
    assert again not in (token, "something else")  # not a token of the file: a new one
    assert TokenStore(tokens_file).authenticate(f"Bearer {again}").name == "dev"


def test_cli_makes_a_token_and_appends_only_its_digest(tmp_path, capsys):
    from duro.cli import main

    f = tmp_path / "tokens.toml"
    assert main(["gateway-token", "--name", "ci", "--bindings", "COUNTER", "--methods",
                 "get,COUNTER.increment", "--file", str(f)]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["gateway-token", "--name", "other", "--file", str(f)]) == 0
    assert token not in f.read_text() and stat.S_IMODE(f.stat().st_mode) == 0o600
    store = TokenStore(f, known_bindings=BINDINGS)
    p = store.authenticate(f"Bearer {token}")
    assert p.name == "ci" and p.allows("COUNTER", "increment") and not p.allows("CHAT", "get")
