"""The installed package is the source tree: every Python package in the repository is listed
in pyproject.toml, so a wheel (the container images install one) imports what the tests run.

A package missing from the list works from a checkout and fails only once installed, which is
how a container image once shipped without ``duro.node.directory``.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _declared() -> tuple[set[str], dict[str, str]]:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(conf["packages"]), dict(conf["package-dir"])


def _source_dir(package: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools looks for ``package``: the longest mapped prefix, then the rest."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[n:])
    return ROOT / Path(*parts)


def test_every_declared_package_exists() -> None:
    packages, package_dir = _declared()
    missing = sorted(p for p in packages
                     if not (_source_dir(p, package_dir) / "__init__.py").is_file())
    assert not missing, f"pyproject.toml lists packages with no __init__.py: {missing}"


def test_every_source_package_is_declared() -> None:
    packages, package_dir = _declared()
    found = set()
    for root_pkg, rel in package_dir.items():
        base = ROOT / rel
        for init in base.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            sub = init.parent.relative_to(base).parts
            found.add(".".join((root_pkg, *sub)))
    undeclared = sorted(found - packages)
    assert not undeclared, (f"packages missing from [tool.setuptools] packages in "
                            f"pyproject.toml (an installed duro would lack them): {undeclared}")


def test_the_image_build_copies_every_source_folder() -> None:
    """deploy/Dockerfile COPYs each top-level source folder, and .dockerignore lets it into the
    build context (a folder added to pyproject but not there fails only when the image is built,
    as topology/ once did)."""
    _, package_dir = _declared()
    folders = sorted({rel.split("/")[0] for rel in package_dir.values() if rel})
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for folder in folders:
        assert f"COPY {folder}/ /src/{folder}/" in dockerfile, f"deploy/Dockerfile lacks {folder}/"
        assert f"!{folder}/" in ignore, f".dockerignore keeps {folder}/ out of the build context"
