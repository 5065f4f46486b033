"""docs/tutorial.md, done as written: its files in an empty temporary folder, its tests run there
with pytest (outside this repository, so only the folder's own configuration applies), and
without the pytest configuration it says the folder needs, the tests do not pass."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"

pytestmark = pytest.mark.timeout(180)


def tutorial_files() -> dict[str, str]:
    """Every fenced block whose first line is ``# hello-counter/<file>``: file -> content."""
    files = {}
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", TUTORIAL.read_text(), re.S):
        first, _, rest = block.partition("\n")
        if m := re.fullmatch(r"# hello-counter/(\S+)", first.strip()):
            files[m.group(1)] = rest
    return files


def pytest_in(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=folder, capture_output=True, text=True, timeout=150)


def test_tutorial_from_an_empty_folder_to_passing_tests(tmp_path: Path) -> None:
    files = tutorial_files()
    assert set(files) == {"app.py", "duro.toml", "pyproject.toml", "test_counter.py"}, files
    folder = tmp_path / "hello-counter"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)

    r = pytest_in(folder)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 passed" in r.stdout, r.stdout

    # The configuration is what makes the async tests run: without it they do not pass.
    (folder / "pyproject.toml").unlink()
    r = pytest_in(folder)
    assert "4 passed" not in r.stdout, r.stdout
    assert r.returncode != 0 and "natively support" in r.stdout + r.stderr, r.stdout
