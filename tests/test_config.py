"""duro._config: file < env < flags, type coercion, and errors naming the field and source."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from duro._app import ConfigError
from duro._config import add_dataclass_flags, env_var, flag_name, flags_from_args, load_config

PREFIX = "DURO_TEST_"


@dataclass(frozen=True)
class ServiceConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=7001, metadata={"help": "gRPC port"})
    ratio: float = 0.5
    sync_wal: bool = field(default=True, metadata={"help": "fsync the WAL on commit"})
    data_dir: Path = Path("data")
    regions: tuple[str, ...] = ("eu",)
    ports: tuple[int, ...] = ()
    limit: int | None = None
    label: str | None = None
    mode: Literal["fast", "safe"] = "safe"


@dataclass(frozen=True)
class Required:
    node_id: str
    port: int = 1

    def __post_init__(self) -> None:
        if self.port < 0:
            raise ValueError("port must be >= 0")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    assert load_config(ServiceConfig) == ServiceConfig()
    assert load_config(ServiceConfig, file=None, env={}, env_prefix=PREFIX, overrides={}) == ServiceConfig()


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'host = "0.0.0.0"\nport = 9000\nratio = 2\nsync_wal = false\ndata_dir = "~/d"\n'
        'regions = ["us", "ap"]\nports = [1, "2"]\nlimit = 5\nmode = "fast"\n',
    )
    cfg = load_config(ServiceConfig, file=path)
    assert cfg.host == "0.0.0.0" and cfg.port == 9000
    assert cfg.ratio == 2.0 and isinstance(cfg.ratio, float)
    assert cfg.sync_wal is False
    assert cfg.data_dir == Path("~/d").expanduser()
    assert cfg.regions == ("us", "ap") and cfg.ports == (1, 2)
    assert cfg.limit == 5 and cfg.mode == "fast"


def test_env_values() -> None:
    env = {
        "DURO_TEST_PORT": " 8080 ",
        "DURO_TEST_RATIO": "0.25",
        "DURO_TEST_SYNC_WAL": "off",
        "DURO_TEST_DATA_DIR": "/var/lib/duro",
        "DURO_TEST_REGIONS": "us, eu ,ap",
        "DURO_TEST_PORTS": "",
        "DURO_TEST_LIMIT": "",
        "DURO_TEST_LABEL": "x",
        "DURO_TEST_UNKNOWN": "ignored: the environment is shared",
        "PORT": "1",
    }
    cfg = load_config(ServiceConfig, env=env, env_prefix=PREFIX)
    assert cfg.port == 8080 and cfg.ratio == 0.25 and cfg.sync_wal is False
    assert cfg.data_dir == Path("/var/lib/duro")
    assert cfg.regions == ("us", "eu", "ap") and cfg.ports == ()
    assert cfg.limit is None and cfg.label == "x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("False", False), ("no", False)],
)
def test_bool_strings(text: str, expected: bool) -> None:
    assert load_config(ServiceConfig, env={"SYNC_WAL": text}).sync_wal is expected


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 1\nhost = "file"\nlabel = "file"\n')
    env = {"DURO_TEST_PORT": "2", "DURO_TEST_HOST": "env"}
    cfg = load_config(ServiceConfig, file=path, env=env, env_prefix=PREFIX, overrides={"port": "3", "label": None})
    assert cfg.port == 3  # flag beats env beats file
    assert cfg.host == "env"  # env beats file
    assert cfg.label == "file"  # None in overrides means "not given"


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "prot = 1\n")
    with pytest.raises(ConfigError, match=r"service\.toml: prot: unknown setting for ServiceConfig"):
        load_config(ServiceConfig, file=path)


def test_unknown_override() -> None:
    with pytest.raises(ConfigError, match="nope: unknown setting"):
        load_config(ServiceConfig, overrides={"nope": 1})


def test_missing_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ServiceConfig, file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(ServiceConfig, file=write(tmp_path, "port = \n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(ServiceConfig, file=tmp_path)  # a directory


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("port", "eighty"),
        ("port", "1.5"),
        ("ratio", "fast"),
        ("sync_wal", "maybe"),
        ("ports", "1,x"),
        ("limit", "many"),
        ("mode", "medium"),
        ("data_dir", ""),
    ],
)
def test_bad_env_value_names_field_and_variable(name: str, raw: str) -> None:
    var = env_var(PREFIX, name)
    with pytest.raises(ConfigError) as info:
        load_config(ServiceConfig, env={var: raw}, env_prefix=PREFIX)
    msg = str(info.value)
    assert msg.startswith(f"{name}: environment variable {var}: bad value {raw!r}")


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("port = true\n", "port"),
        ("port = 1.5\n", "port"),
        ("ratio = false\n", "ratio"),
        ("host = 3\n", "host"),
        ("sync_wal = 2\n", "sync_wal"),
        ("regions = 3\n", "regions"),
        ("data_dir = 3\n", "data_dir"),
    ],
)
def test_bad_file_value_names_field_and_file(tmp_path: Path, text: str, name: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(ServiceConfig, file=path)
    assert str(info.value).startswith(f"{name}: file {path}: bad value")


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^port: flag --port: bad value 'x'"):
        load_config(ServiceConfig, overrides={"port": "x"})
    with pytest.raises(ConfigError, match=r"^data_dir: flag --data-dir: bad value"):
        load_config(ServiceConfig, overrides={"data_dir": 5})


def test_required_field_missing() -> None:
    with pytest.raises(ConfigError, match=r"node_id: required setting of Required is missing.*DURO_TEST_NODE_ID.*--node-id"):
        load_config(Required, env_prefix=PREFIX)
    assert load_config(Required, env={"DURO_TEST_NODE_ID": "n1"}, env_prefix=PREFIX).node_id == "n1"


def test_post_init_error_becomes_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid Required: port must be >= 0"):
        load_config(Required, overrides={"node_id": "n", "port": "-1"})


def test_unsupported_types() -> None:
    @dataclass
    class Odd:
        items: list[str] = field(default_factory=list)
        pair: tuple[int, str] = (1, "a")
        either: int | str = 1

    with pytest.raises(ConfigError, match="items: .*unsupported config type"):
        load_config(Odd, overrides={"items": "a"})
    with pytest.raises(ConfigError, match="pair: .*use tuple"):
        load_config(Odd, overrides={"pair": "1,a"})
    with pytest.raises(ConfigError, match="either: .*unsupported"):
        load_config(Odd, overrides={"either": "1"})
    with pytest.raises(TypeError, match="not a dataclass"):
        load_config(int)


def test_names() -> None:
    assert env_var("DURO_NODE_", "data_dir") == "DURO_NODE_DATA_DIR"
    assert flag_name("data_dir") == "--data-dir"


# -- argparse --------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svc")
    parser.add_argument("--config", type=Path)  # not a config field: ignored by flags_from_args
    add_dataclass_flags(parser, ServiceConfig, env_prefix=PREFIX)
    return parser


def test_flags_only_given_ones() -> None:
    ns = make_parser().parse_args(["--port", "9", "--no-sync-wal", "--regions", "a,b", "--config", "x"])
    flags = flags_from_args(ns)
    assert flags == {"port": "9", "sync_wal": False, "regions": "a,b"}
    cfg = load_config(ServiceConfig, env={"DURO_TEST_PORT": "1"}, env_prefix=PREFIX, overrides=flags)
    assert cfg.port == 9 and cfg.sync_wal is False and cfg.regions == ("a", "b")
    assert flags_from_args(make_parser().parse_args([])) == {}
    assert flags_from_args(make_parser().parse_args(["--sync-wal"])) == {"sync_wal": True}


def test_flag_help() -> None:
    text = make_parser().format_help()
    assert "--data-dir" in text and "--sync-wal, --no-sync-wal" in text
    assert "gRPC port (default: 7001) [env DURO_TEST_PORT]" in " ".join(text.split())
    assert "{fast,safe}" in text and "A,B,..." in text


def test_bad_flag_value_reported_by_load_config() -> None:
    flags = flags_from_args(make_parser().parse_args(["--port", "many"]))
    with pytest.raises(ConfigError, match="port: flag --port"):
        load_config(ServiceConfig, overrides=flags)
