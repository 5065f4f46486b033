"""duro._app: loading apps from duro.toml, .py files and modules, and every error path."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest

from duro import DurableObject, InvalidArgumentError
from duro._app import App, Binding, ConfigError, Migration, load_app
from duro._ids import namespace_key

APP_PY = """
from duro import DurableObject

class Counter(DurableObject):
    async def increment(self, by=1):
        return by

class ChatRoom(DurableObject):
    pass

class NotAnObject:
    pass

async def fetch(request, env):
    return None
"""

TOML = """
name = "counter-app"
main = "app.py"

[vars]
GREETING = "hi"
LIMITS = {max = 3, names = ["a", "b"]}

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[[durable_objects.bindings]]
name = "ROOMS"
class_name = "ChatRoom"

[[migrations]]
tag = "v1"
new_classes = ["Counter", "ChatRoom"]
"""


def write_app(root: Path, toml: str | None = TOML, app_py: str = APP_PY, main: str = "app.py") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / main).parent.mkdir(parents=True, exist_ok=True)
    (root / main).write_text(textwrap.dedent(app_py))
    if toml is not None:
        (root / "duro.toml").write_text(textwrap.dedent(toml))
    return root


def config_error(path: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_app(path)  # type: ignore[arg-type]
    return str(info.value)


# -- success ---------------------------------------------------------------------------------------


def test_load_from_directory(tmp_path: Path) -> None:
    root = write_app(tmp_path / "counter")
    app = load_app(root)
    assert isinstance(app, App)
    assert app.name == "counter-app"
    assert app.root == root.resolve()
    assert app.config_path == (root / "duro.toml").resolve()
    assert list(app.bindings) == ["COUNTER", "ROOMS"]
    counter = app.bindings["COUNTER"]
    assert isinstance(counter, Binding)
    assert counter.class_name == "Counter"
    assert issubclass(counter.cls, DurableObject)
    assert counter.cls.__name__ == "Counter"
    assert app.vars == {"GREETING": "hi", "LIMITS": {"max": 3, "names": ["a", "b"]}}
    assert app.worker_fetch is app.module.fetch
    assert app.migrations == [Migration(tag="v1", new_classes=("Counter", "ChatRoom"))]
    assert app.binding_for_class("ChatRoom").name == "ROOMS"


def test_load_from_toml_path_and_str(tmp_path: Path) -> None:
    root = write_app(tmp_path / "a")
    app = load_app(str(root / "duro.toml"))
    assert app.name == "counter-app"


def test_same_app_twice_gives_same_classes(tmp_path: Path) -> None:
    root = write_app(tmp_path / "counter")
    a = load_app(root)
    b = load_app(root / "duro.toml")
    c = load_app(root / "app.py")  # a .py next to its duro.toml goes through the toml
    assert a.module is b.module is c.module
    assert a.bindings["COUNTER"].cls is b.bindings["COUNTER"].cls is c.bindings["COUNTER"].cls
    assert c.config_path is not None


def test_two_apps_do_not_collide(tmp_path: Path) -> None:
    a = load_app(write_app(tmp_path / "one" / "app"))
    b = load_app(write_app(tmp_path / "two" / "app"))
    assert a.module is not b.module
    assert a.module.__name__ != b.module.__name__
    assert a.bindings["COUNTER"].cls is not b.bindings["COUNTER"].cls


def test_module_name_is_stable(tmp_path: Path) -> None:
    root = write_app(tmp_path / "my-app")
    app = load_app(root)
    name = app.module.__name__
    assert name.startswith("duro_app_my_app_") and name.endswith(".app")
    # A second process loading the same directory computes the same name.
    from duro._app import _package_name

    assert name == _package_name(root.resolve()) + ".app"


def test_main_may_import_siblings_relatively(tmp_path: Path) -> None:
    root = write_app(
        tmp_path / "rel",
        app_py="""
        from duro import DurableObject
        from .helpers import START

        class Counter(DurableObject):
            start = START

        class ChatRoom(DurableObject):
            pass
        """,
    )
    (root / "helpers.py").write_text("START = 41\n")
    app = load_app(root)
    assert app.bindings["COUNTER"].cls.start == 41
    assert app.worker_fetch is None


def test_main_may_be_a_package(tmp_path: Path) -> None:
    root = tmp_path / "pkgapp"
    write_app(root, toml=TOML.replace('main = "app.py"', 'main = "src/myapp"'),
              main="src/myapp/__init__.py")
    app = load_app(root)
    assert app.module.__name__.endswith(".src.myapp")
    assert app.bindings["COUNTER"].cls.__name__ == "Counter"


def test_no_migrations_is_accepted(tmp_path: Path) -> None:
    toml = TOML.split("[[migrations]]")[0]
    app = load_app(write_app(tmp_path / "nomig", toml=toml))
    assert app.migrations == []


def test_no_vars_is_accepted(tmp_path: Path) -> None:
    toml = TOML.replace('[vars]\nGREETING = "hi"\nLIMITS = {max = 3, names = ["a", "b"]}\n', "")
    app = load_app(write_app(tmp_path / "novars", toml=toml))
    assert app.vars == {}


def test_migrations_rename_and_delete(tmp_path: Path) -> None:
    toml = """
    name = "x"
    main = "app.py"
    [[durable_objects.bindings]]
    name = "COUNTER"
    class_name = "Counter"
    [[durable_objects.bindings]]
    name = "COUNTER2"
    class_name = "Counter"
    [[migrations]]
    tag = "v1"
    new_classes = ["Old", "Gone"]
    new_sqlite_classes = ["ChatRoom"]
    [[migrations]]
    tag = "v2"
    renamed_classes = [{from = "Old", to = "Counter"}]
    deleted_classes = ["Gone"]
    """
    app = load_app(write_app(tmp_path / "mig", toml=toml))
    assert app.migrations[0].new_classes == ("Old", "Gone", "ChatRoom")
    assert app.migrations[1].renamed_classes == (("Old", "Counter"),)
    assert app.migrations[1].deleted_classes == ("Gone",)
    assert app.namespace_class("Counter") == "Old"
    assert app.namespace_class("ChatRoom") == "ChatRoom"
    # Two bindings may name one class; binding_for_class gives the first in file order.
    assert app.binding_for_class("Counter").name == "COUNTER"
    with pytest.raises(KeyError, match="NoSuch"):
        app.binding_for_class("NoSuch")


def test_transferred_classes_take_the_source_class_namespace(tmp_path: Path) -> None:
    toml = """
    name = "counter-app"
    main = "app.py"
    [[durable_objects.bindings]]
    name = "COUNTER"
    class_name = "Counter"
    [[migrations]]
    tag = "v1"
    new_classes = ["Gone"]
    [[migrations]]
    tag = "v2"
    transferred_classes = [{from = "Tally", from_script = "old-app", to = "Renamed"}]
    deleted_classes = ["Gone"]
    [[migrations]]
    tag = "v3"
    renamed_classes = [{from = "Renamed", to = "Counter"}]
    """
    app = load_app(write_app(tmp_path / "xfer", toml=toml))
    assert app.migrations[1].transferred_classes == (("Tally", "old-app", "Renamed"),)
    # Counter <- Renamed (renamed) <- Tally of old-app (transferred): Tally's ids and data.
    assert app.namespace_class("Counter") == "Tally"
    assert app.deleted_namespaces() == {
        namespace_key("Gone"): "class 'Gone' was deleted by migration 'v2'"}


def test_discovery_from_py_file(tmp_path: Path) -> None:
    root = write_app(tmp_path / "disc", toml=None)
    app = load_app(root / "app.py")
    assert app.config_path is None
    assert sorted(app.bindings) == ["CHATROOM", "COUNTER"]
    assert app.bindings["CHATROOM"].class_name == "ChatRoom"
    assert app.migrations == [] and app.vars == {}
    assert app.worker_fetch is app.module.fetch
    assert load_app(str(root / "app.py")).module is app.module


def test_discovery_ignores_imported_classes_and_aliases(tmp_path: Path) -> None:
    root = write_app(tmp_path / "disc2", toml=None)
    (root / "other.py").write_text(
        "from duro import DurableObject\n"
        "from .app import Counter\n"
        "Alias = Counter\n"
        "class Local(DurableObject):\n    pass\n"
    )
    app = load_app(root / "other.py")
    assert list(app.bindings) == ["LOCAL"]


def test_discovery_from_module_object_and_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "mypkg_disc"
    write_app(pkg, toml=None)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        by_name = load_app("mypkg_disc.app")
        import mypkg_disc.app as module  # type: ignore[import-not-found]

        by_module = load_app(module)
        assert by_name.module is module and by_module.module is module
        assert by_name.bindings["COUNTER"].cls is module.Counter
        assert by_module.root == pkg.resolve()
    finally:
        for name in [n for n in sys.modules if n.startswith("mypkg_disc")]:
            del sys.modules[name]


def test_module_with_toml_next_to_it_uses_the_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "mypkg_toml"
    write_app(pkg)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        import mypkg_toml.app as module  # type: ignore[import-not-found]

        app = load_app(module)
        assert app.name == "counter-app"
        assert list(app.bindings) == ["COUNTER", "ROOMS"]
        assert app.bindings["COUNTER"].cls is module.Counter  # the given module's classes
        assert app.vars["GREETING"] == "hi"
    finally:
        for name in [n for n in sys.modules if n.startswith("mypkg_toml")]:
            del sys.modules[name]


def test_module_without_file_discovers(tmp_path: Path) -> None:
    module = types.ModuleType("dyn_mod_for_test")
    exec(
        "from duro import DurableObject\nclass Thing(DurableObject):\n    pass\n",
        module.__dict__,
    )
    app = load_app(module)
    assert list(app.bindings) == ["THING"]


# -- errors ----------------------------------------------------------------------------------------


def test_config_error_is_invalid_argument() -> None:
    assert issubclass(ConfigError, InvalidArgumentError)
    assert not ConfigError.retryable


def test_missing_paths(tmp_path: Path) -> None:
    assert "no duro.toml" in config_error(tmp_path)
    assert "no such file" in config_error(tmp_path / "nope.toml")
    assert "no such file" in config_error(str(tmp_path / "nope" / "app.py"))
    (tmp_path / "x.txt").write_text("")
    assert "expected a directory" in config_error(tmp_path / "x.txt")
    assert "no such file or module" in config_error("no_such_module_for_duro_tests")
    with pytest.raises(TypeError):
        load_app(42)  # type: ignore[arg-type]


def test_bad_toml(tmp_path: Path) -> None:
    root = write_app(tmp_path / "bad", toml="name = \n")
    msg = config_error(root)
    assert "duro.toml" in msg and "not valid TOML" in msg


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace('name = "counter-app"\n', ""), "name: missing required field"),
        (lambda t: t.replace('main = "app.py"\n', ""), "main: missing required field"),
        (lambda t: t.replace('name = "counter-app"', "name = 3"), "name: must be a non-empty string"),
        (lambda t: "compatibility_date = '2024-01-01'\n" + t, "compatibility_date: unknown field"),
        (lambda t: t.replace('main = "app.py"', 'main = "missing.py"'), "main = 'missing.py': no such file"),
        (lambda t: t.replace('main = "app.py"', 'main = "duro.toml"'), "must be a .py file"),
        (lambda t: t.replace('class_name = "Counter"', 'class_name = "Nope"'),
         "durable_objects.bindings[0].class_name = 'Nope': no such class"),
        (lambda t: t.replace('class_name = "Counter"', 'class_name = "NotAnObject"'),
         "not a subclass of duro.DurableObject"),
        (lambda t: t.replace('class_name = "Counter"', 'class_name = "DurableObject"'),
         "not a subclass of duro.DurableObject"),
        (lambda t: t.replace('name = "ROOMS"', 'name = "COUNTER"'),
         "durable_objects.bindings[1].name = 'COUNTER': duplicate binding name"),
        (lambda t: t.replace('name = "COUNTER"', 'name = "MY-COUNTER"'), "must be a Python identifier"),
        (lambda t: t.replace('name = "COUNTER"\n', ""), "durable_objects.bindings[0].name: missing"),
        (lambda t: t.replace('class_name = "Counter"\n', 'class_name = "Counter"\nscript_name = "x"\n'),
         "durable_objects.bindings[0].script_name: unknown field"),
        (lambda t: t.split("[[durable_objects.bindings]]")[0], "durable_objects: missing"),
        (lambda t: t.replace("[vars]", "vars = 3\n[other]"), "other: unknown field"),
        (lambda t: "vars = 3\n" + t.replace("[vars]", "[durable_objects]"), "vars must be a table"),
        (lambda t: t.replace('GREETING = "hi"', "GREETING = 1979-05-27"), "vars.GREETING"),
        (lambda t: t.replace('GREETING = "hi"', 'COUNTER = "hi"'), "vars.COUNTER: the same name"),
        (lambda t: t.replace('GREETING = "hi"', '"NOT-ID" = "hi"'), "vars.NOT-ID"),
        (lambda t: t.replace('tag = "v1"', 'tag = "v1"\nnew_classes_typo = []'),
         "migrations[0].new_classes_typo: unknown field"),
        (lambda t: t.replace('tag = "v1"\n', ""), "migrations[0].tag: missing"),
        (lambda t: t.replace('new_classes = ["Counter", "ChatRoom"]', 'new_classes = "Counter"'),
         "migrations[0].new_classes: must be an array"),
        (lambda t: t.replace('new_classes = ["Counter", "ChatRoom"]', 'new_classes = ["ChatRoom"]'),
         "class 'Counter' no migration introduced it"),
        (lambda t: t.replace('"Counter", "ChatRoom"]', '"Counter", "ChatRoom", "Ghost"]'),
         "migrations: class 'Ghost' = 'Ghost': no such class"),
        (lambda t: t + '[[migrations]]\ntag = "v1"\n', "duplicate migration tag"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\nnew_classes = ["Counter"]\n', "already introduced"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\ndeleted_classes = ["Nope"]\n',
         "deleted_classes: 'Nope': no earlier migration introduced it"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\ndeleted_classes = ["Counter"]\n',
         "class 'Counter' was deleted or renamed"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\nrenamed_classes = [{from = "X", to = "Y"}]\n',
         "renamed_classes: from = 'X'"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\nrenamed_classes = [{from = "Counter", to = "ChatRoom"}]\n',
         "to = 'ChatRoom' already exists"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\nrenamed_classes = [{from = "Counter"}]\n',
         "renamed_classes[0].to: missing"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\nrenamed_classes = [{from = "Counter", to = "A", x = 1}]\n',
         "renamed_classes[0].x: unknown field"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\nrenamed_classes = ["Counter"]\n',
         "renamed_classes[0] must be a table"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\nrenamed_classes = 1\n', "must be an array of tables"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\ntransferred_classes = [{from = "X", '
         'from_script = "counter-app", to = "Y"}]\n', "from_script = 'counter-app' is this app"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\ntransferred_classes = [{from = "X", '
         'from_script = "other", to = "Counter"}]\n',
         "transferred_classes: to = 'Counter' already exists"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\ntransferred_classes = [{from = "X", to = "Y"}]\n',
         "transferred_classes[0].from_script: missing"),
        (lambda t: t + '[[migrations]]\ntag = "v2"\nnew_classes = ["Gone"]\n[[migrations]]\n'
         'tag = "v3"\ndeleted_classes = ["Gone"]\n[[migrations]]\ntag = "v4"\n'
         'new_classes = ["Gone"]\n', "'Gone': a class of that name was deleted by migration 'v3'"),
        (lambda t: t.replace("[[migrations]]", "migrations = 1\n[[x]]"), "unknown field"),
        (lambda t: "migrations = 1\n" + t.split("[[migrations]]")[0], "migrations must be an array"),
        (lambda t: "durable_objects = 1\n" + t.split("[[durable_objects.bindings]]")[0],
         "durable_objects must be a table"),
        (lambda t: t.split("[[durable_objects.bindings]]")[0] + "[durable_objects]\nbindings = []\n",
         "durable_objects.bindings: missing or empty"),
        (lambda t: t.split("[[durable_objects.bindings]]")[0] + "[durable_objects]\nbindings = [1]\n",
         "durable_objects.bindings[0] must be a table"),
        (lambda t: t.split("[[durable_objects.bindings]]")[0] + "[durable_objects]\nother = 1\n",
         "durable_objects.other: unknown field"),
        (lambda t: "migrations = [1]\n" + t.split("[[migrations]]")[0], "migrations[0] must be a table"),
    ],
)
def test_toml_errors_name_file_and_field(tmp_path: Path, edit, expected: str) -> None:  # type: ignore[no-untyped-def]
    root = write_app(tmp_path / "bad", toml=edit(textwrap.dedent(TOML)))
    msg = config_error(root)
    assert expected in msg
    assert "duro.toml" in msg


def test_main_outside_the_app_or_not_an_identifier(tmp_path: Path) -> None:
    root = write_app(tmp_path / "x" / "app", toml=TOML.replace('main = "app.py"', 'main = "../up.py"'))
    (root.parent / "up.py").write_text(textwrap.dedent(APP_PY))
    assert "main = '../up.py' must be inside" in config_error(root)
    root = write_app(
        tmp_path / "y", toml=TOML.replace('main = "app.py"', 'main = "my-app.py"'), main="my-app.py"
    )
    assert "main = 'my-app.py': every part of the path must be a Python identifier" in config_error(root)


def test_import_error_in_main_is_a_config_error(tmp_path: Path) -> None:
    root = write_app(tmp_path / "boom", app_py="raise RuntimeError('boom at import')\n")
    msg = config_error(root)
    assert "app.py" in msg and "RuntimeError: boom at import" in msg
    # A failed import leaves nothing half-imported behind: fixing the file makes it load.
    write_app(root, toml=TOML)
    assert load_app(root).bindings["COUNTER"].cls.__name__ == "Counter"


def test_sync_worker_fetch_is_refused(tmp_path: Path) -> None:
    root = write_app(tmp_path / "syncfetch", app_py=APP_PY.replace("async def fetch", "def fetch"))
    assert "async def fetch(request, env)" in config_error(root)


def test_py_file_next_to_toml_with_other_main(tmp_path: Path) -> None:
    root = write_app(tmp_path / "other")
    (root / "second.py").write_text(textwrap.dedent(APP_PY))
    assert "main = 'app.py', not 'second.py'" in config_error(root / "second.py")


def test_module_next_to_toml_with_other_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "mypkg_other"
    write_app(pkg)
    (pkg / "__init__.py").write_text("")
    (pkg / "second.py").write_text(textwrap.dedent(APP_PY))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        msg = config_error("mypkg_other.second")
        assert "is not module 'mypkg_other.second'" in msg
    finally:
        for name in [n for n in sys.modules if n.startswith("mypkg_other")]:
            del sys.modules[name]


def test_module_name_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "mypkg_broken"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "app.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        msg = config_error("mypkg_broken.app")
        assert "importing the app failed" in msg and "no_such_dependency_xyz" in msg
    finally:
        for name in [n for n in sys.modules if n.startswith("mypkg_broken")]:
            del sys.modules[name]


def test_discovery_errors(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    (root / "app.py").write_text("X = 1\n")
    assert "defines no DurableObject subclass" in config_error(root / "app.py")
    (root / "clash.py").write_text(
        "from duro import DurableObject\n"
        "class Foo(DurableObject):\n    pass\n"
        "class FOO(DurableObject):\n    pass\n"
    )
    assert "both give binding 'FOO'" in config_error(root / "clash.py")
