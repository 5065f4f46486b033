"""docs/api.md is what scripts/gen_api_docs.py makes from the docstrings now, and it covers what
a user's code touches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)


def test_api_reference_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, (
        "docs/api.md is stale: run `python scripts/gen_api_docs.py` and commit the result\n"
        f"{result.stdout}{result.stderr}"
    )


def test_api_reference_covers_the_user_facing_names() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    for name in ("duro.DurableObject", "duro.Request", "duro.Response", "duro.Namespace",
                 "duro.Stub", "WebSocketContext", "ObjectStorage", "Transaction",
                 "duro.testing.Testbed", "duro.client.connect", "The error tree"):
        assert f"{name}" in text, name
    for method in ("block_concurrency_while(", "get_many(", "put_many(", "delete_all(",
                   "transaction(", "set_alarm(", "accept_web_socket(", "get_web_sockets(",
                   "serialize_attachment(", "id_from_name(", "get_by_name("):
        assert method in text, method
