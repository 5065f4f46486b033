"""Deploy tests: the ``docker`` marker, and the compose test's timings in the terminal summary."""

from __future__ import annotations

from typing import Any

import pytest

#: Filled by test_compose_cluster.py (through the ``timings`` fixture): what was measured.
TIMINGS: dict[str, Any] = {}


@pytest.fixture(scope="session")
def timings() -> dict[str, Any]:
    return TIMINGS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs a Docker engine and Compose (skipped with a reason without one)"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "docker compose cluster")
        for key, value in TIMINGS.items():
            terminalreporter.write_line(f"{key}: {value}")
