"""EdgeConfig: file < environment (DURO_EDGE_*) < flags, with clear errors."""

from __future__ import annotations

import pytest

from duro._config import ConfigError, flags_from_args
from duro.edge.config import EdgeConfig, load_edge_config
from duro.edge.main import build_parser


def test_precedence(tmp_path):
    f = tmp_path / "edge.toml"
    f.write_text('region = "from-file"\nsocket_window = 8\nhttp_listen = "0.0.0.0:9000"\n')
    env = {"DURO_EDGE_REGION": "from-env", "DURO_EDGE_SOCKET_WINDOW": "16"}
    args = build_parser().parse_args(["--region", "from-flag"])
    cfg = load_edge_config(f, env=env, overrides=flags_from_args(args))
    assert (cfg.region, cfg.socket_window, cfg.http_listen) == ("from-flag", 16, "0.0.0.0:9000")
    assert load_edge_config(None, env={}) == EdgeConfig()


def test_errors(tmp_path):
    f = tmp_path / "edge.toml"
    f.write_text("regoin = 'typo'\n")
    with pytest.raises(ConfigError, match="regoin"):
        load_edge_config(f, env={})
    with pytest.raises(ConfigError, match="socket_window"):
        load_edge_config(None, env={"DURO_EDGE_SOCKET_WINDOW": "many"})
    with pytest.raises(ConfigError, match="32 MiB"):
        load_edge_config(None, env={"DURO_EDGE_MAX_MESSAGE_BYTES": str(64 << 20)})
