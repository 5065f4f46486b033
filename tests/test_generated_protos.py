"""The committed generated code in duro/_pb matches proto/ (scripts/gen_protos.py --check)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="grpcio-tools is not installed (pip install -e '.[test]'); cannot regenerate protos",
)
def test_generated_protos_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (
        "duro/_pb is stale: run `python scripts/gen_protos.py` and commit the result\n"
        f"{result.stdout}{result.stderr}"
    )
