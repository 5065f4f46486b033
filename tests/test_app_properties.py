"""Property-based tests of duro.toml loading (duro._app, duro._exposure) and of the services'
TOML config files (duro._config): random bytes, random TOML documents made of duro.toml's own
vocabulary, and random mutations of a valid duro.toml either load or raise ConfigError naming
the file, never another exception. Small budgets: CI time (docs/security.md, "Fuzzing")."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from duro._app import App, ConfigError, load_app
from duro._config import load_config
from duro.edge.config import EdgeConfig

pytestmark = pytest.mark.timeout(60)

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

APP_PY = """
from duro import DurableObject

class Counter(DurableObject):
    async def increment(self, by=1):
        return by

    @staticmethod
    def helper():
        return 1

    async def fetch(self, request):
        return None

class ChatRoom(DurableObject):
    async def post(self, text):
        return text
"""

VALID = {
    "name": "fuzz",
    "main": "app.py",
    "vars": {"GREETING": "hi", "LIMITS": {"max": 3}},
    "durable_objects": {"bindings": [{"name": "COUNTER", "class_name": "Counter"},
                                     {"name": "CHAT", "class_name": "ChatRoom"}]},
    "migrations": [{"tag": "v1", "new_classes": ["Counter"]},
                   {"tag": "v2", "new_classes": ["ChatRoom"]}],
    "expose": {"COUNTER": {"http": True, "gateway": ["increment", "fetch"]},
               "CHAT": {"gateway": True}},
}

WORDS = ["name", "main", "vars", "durable_objects", "bindings", "class_name", "migrations", "tag",
         "new_classes", "new_sqlite_classes", "renamed_classes", "deleted_classes", "from", "to",
         "expose", "http", "gateway", "COUNTER", "CHAT", "Counter", "ChatRoom", "app.py",
         "increment", "fetch", "helper", "mro", "_private", "post", "x", ""]

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = (st.sampled_from(WORDS) | text | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats())
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(WORDS) | text, inner, max_size=4),
    max_leaves=20,
)


def toml(value: Any) -> str:
    """A TOML rendering of a JSON-like value (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


def document(top: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml(v)}\n" for k, v in top.items())


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzzapp")
    (root / "app.py").write_text(textwrap.dedent(APP_PY))
    return root


def load(app_dir: Path, data: bytes) -> App | None:
    (app_dir / "duro.toml").write_bytes(data)
    try:
        app = load_app(app_dir)
    except ConfigError as exc:
        assert "duro.toml" in str(exc), exc  # names the file
        event("ConfigError")
        return None
    event("loaded")
    return app


def test_the_valid_document_loads(app_dir):
    (app_dir / "duro.toml").write_text(document(VALID))
    app = load_app(app_dir)
    assert set(app.bindings) == {"COUNTER", "CHAT"}
    assert app.exposure.http == {"COUNTER"}


@FAST
@given(st.binary(max_size=300))
def test_random_bytes(app_dir, data):
    load(app_dir, data)


@FAST
@given(st.dictionaries(st.sampled_from(WORDS) | text, toml_values, max_size=6))
def test_random_documents_of_duro_toml_words(app_dir, top):
    load(app_dir, document(top).encode())


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


@FAST
@given(st.data())
def test_mutations_of_a_valid_document(app_dir, data):
    doc = json.loads(json.dumps(VALID))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = data.draw(toml_values)
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(WORDS) | text)] = data.draw(toml_values)
        else:
            parent.append(data.draw(toml_values))
    load(app_dir, document(doc).encode())


@FAST
@given(st.binary(max_size=200) | st.dictionaries(text, toml_values, max_size=4).map(
    lambda top: document(top).encode()))
def test_service_config_files(tmp_path_factory, data):
    """A service's --config file (here the edge's): loaded or a ConfigError naming the file."""
    path = tmp_path_factory.mktemp("cfg") / "edge.toml"
    path.write_bytes(data)
    try:
        load_config(EdgeConfig, file=path)
    except ConfigError as exc:
        assert str(path) in str(exc) or "EdgeConfig" in str(exc), exc
