"""duro.toml's [expose] (duro._exposure): what it opens, closed by default, and a clear
ConfigError naming file and field for every mistake. The entry points themselves are tested in
tests/edge/test_gateway_security.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from duro._app import ConfigError, load_app
from duro._exposure import Exposure

pytestmark = pytest.mark.timeout(10)

APP_PY = """
from duro import DurableObject

class Counter(DurableObject):
    async def increment(self, by=1):
        return by

    async def get(self):
        return 0

    @staticmethod
    def helper():
        return 1

    async def fetch(self, request):
        return None

class Silent(DurableObject):  # no fetch
    async def ping(self):
        return "pong"
"""

BASE = """
name = "x"
main = "app.py"

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[[durable_objects.bindings]]
name = "SILENT"
class_name = "Silent"
"""

_seq = iter(range(10**6))


def load(tmp_path: Path, expose: str, app_py: str = APP_PY):
    # A directory per app: the module of one directory is imported once per process.
    root = tmp_path / f"app{next(_seq)}"
    root.mkdir()
    (root / "app.py").write_text(textwrap.dedent(app_py))
    expose = textwrap.dedent(expose)
    if expose.lstrip().startswith("expose ="):  # a top-level key: before the first table
        text = textwrap.dedent(BASE).replace('main = "app.py"\n', f'main = "app.py"\n{expose}\n')
    else:
        text = textwrap.dedent(BASE) + expose
    (root / "duro.toml").write_text(text)
    return load_app(root)


def test_nothing_is_exposed_by_default(tmp_path):
    app = load(tmp_path, "")
    assert app.exposure == Exposure()
    assert not app.exposure.http_open("COUNTER") and not app.exposure.gateway_open("COUNTER")


def test_discovered_apps_expose_nothing(tmp_path):
    (tmp_path / "mod.py").write_text(textwrap.dedent(APP_PY))
    app = load_app(tmp_path / "mod.py")
    assert set(app.bindings) == {"COUNTER", "SILENT"} and app.exposure == Exposure()


def test_what_is_opened(tmp_path):
    app = load(tmp_path, """
        [expose.COUNTER]
        http = true
        gateway = ["increment", "fetch"]

        [expose.SILENT]
        http = false
        gateway = true
        """)
    e = app.exposure
    assert e.http == {"COUNTER"}
    assert e.gateway_method_open("COUNTER", "increment") and e.gateway_method_open(
        "COUNTER", "fetch")
    assert not e.gateway_method_open("COUNTER", "get")
    assert e.gateway_open("SILENT") and e.gateway_method_open("SILENT", "anything")
    assert not e.http_open("SILENT")


def test_gateway_false_or_empty_closes(tmp_path):
    app = load(tmp_path, """
        [expose.COUNTER]
        gateway = []
        [expose.SILENT]
        gateway = false
        """)
    assert not app.exposure.gateway_open("COUNTER") and not app.exposure.gateway_open("SILENT")


@pytest.mark.parametrize("expose, words", [
    ("[expose.NOPE]\nhttp = true", ["expose.NOPE", "no such binding", "COUNTER"]),
    ("[expose.COUNTER]\nhttps = true", ["expose.COUNTER.https", "unknown field"]),
    ("[expose.COUNTER]\nhttp = 1", ["expose.COUNTER.http", "true or false"]),
    ("[expose.COUNTER]\nhttp = \"yes\"", ["expose.COUNTER.http"]),
    ("[expose.COUNTER]\ngateway = \"increment\"", ["expose.COUNTER.gateway", "array"]),
    ("[expose.COUNTER]\ngateway = [1]", ["expose.COUNTER.gateway"]),
    ("[expose.COUNTER]\ngateway = [\"incremnt\"]",
     ["expose.COUNTER.gateway", "'incremnt'", "not a callable method of Counter",
      "['get', 'increment']"]),
    ("[expose.COUNTER]\ngateway = [\"helper\"]", ["'helper'", "not a callable method"]),
    ("[expose.COUNTER]\ngateway = [\"mro\"]", ["'mro'", "not a callable method"]),
    ("[expose.COUNTER]\ngateway = [\"_private\"]", ["'_private'"]),
    ("[expose.SILENT]\ngateway = [\"fetch\"]", ["expose.SILENT.gateway", "no fetch method"]),
    ("expose = 3", ["expose must be a table"]),
    ("expose = {COUNTER = 3}", ["expose.COUNTER must be a table"]),
])
def test_mistakes_are_config_errors(tmp_path, expose, words):
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, expose)
    message = str(ei.value)
    assert "duro.toml" in message
    for word in words:
        assert word in message, (word, message)


def test_http_with_a_worker_fetch_is_an_error(tmp_path):
    worker = APP_PY + "\nasync def fetch(request, env):\n    return None\n"
    with pytest.raises(ConfigError, match="worker fetch"):
        load(tmp_path, "[expose.COUNTER]\nhttp = true\n", app_py=worker)
    # The Gateway is independent of the worker.
    app = load(tmp_path, "[expose.COUNTER]\ngateway = true\n", app_py=worker)
    assert app.exposure.gateway_open("COUNTER")


def test_examples_open_what_they_serve():
    root = Path(__file__).resolve().parents[1] / "examples"
    e = load_app(root).exposure
    assert e.http == {"COUNTER", "CHAT", "BANK"}  # the seed article's URLs, and the bank's
    assert e.gateway_method_open("COUNTER", "increment")
    assert e.gateway_method_open("CHAT", "fetch")
    assert not e.gateway_open("BANK")  # its transfers are not on the Gateway
    for sub, binding in (("counter", "COUNTER"), ("chat", "CHAT"), ("bank", "BANK")):
        assert load_app(root / sub).exposure.http == {binding}
