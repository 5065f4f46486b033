"""One standalone host node process (no etcd: it owns every object) for tests over gRPC, with
the session's mTLS certificate (tests/helpers/tls.py) unless the suite runs in plaintext."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers.tls import process_tls_args

__all__ = ["start_node", "stop_node"]

ROOT = Path(__file__).resolve().parents[2]


def start_node(app: Path, data_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start ``duro node`` on a free 127.0.0.1 port; (the process, its gRPC address)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "duro.cli", "node", "--app", str(app), "--data-dir", str(data_dir),
         "--listen", "127.0.0.1:0", "--log-level", "WARNING", "--node-id", data_dir.name,
         *process_tls_args("node", data_dir.name), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("DURO-NODE-READY"):
        proc.kill()
        raise AssertionError(f"node did not start: {line!r} {proc.stderr.read()}")
    fields = dict(f.split("=", 1) for f in line.split()[1:])
    return proc, fields["address"]


def stop_node(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM, and check that it exits cleanly within ``grace`` (SIGKILL if not)."""
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(grace) == 0, f"node exited with {proc.returncode}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
