"""One cluster CA for the whole test session, so that every test runs with mTLS by default.

``session_certs()`` makes (once per process) a CA and an admin certificate in a temporary
directory; the root conftest points ``DURO_TLS_*`` at the admin certificate, so every client the
tests make in-process (``duro.client.connect``, ``Router``, ``NodeConnection``, etcd clients) talks
mTLS, and the cluster fixtures pass the directory to ``LocalCluster(certs_dir=...)``, so that the
clusters' processes hold certificates of the same CA. ``DURO_TEST_TLS=0`` runs the suite in
plaintext instead (``LocalCluster(tls=False)``, no ``DURO_TLS_*``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from duro._certs import ensure_ca, issue
from duro.tls import TlsConfig

__all__ = ["session_certs", "tls_enabled", "cluster_tls_kwargs", "admin_tls", "process_tls_args"]

_dir: Path | None = None


def tls_enabled() -> bool:
    return os.environ.get("DURO_TEST_TLS", "1").strip().lower() not in ("0", "false", "no", "off")


def session_certs() -> Path:
    """The session's certificates directory (CA, admin certificate), made on first use."""
    global _dir
    if _dir is None:
        _dir = Path(tempfile.mkdtemp(prefix="duro-test-certs-"))
        atexit.register(shutil.rmtree, _dir, True)
        ensure_ca(_dir)
        issue(_dir, "admin")
    return _dir


def admin_tls() -> TlsConfig:
    return issue(session_certs(), "admin")


def cluster_tls_kwargs() -> dict[str, object]:
    """What the cluster fixtures give ``LocalCluster``: the session CA, or plaintext."""
    if not tls_enabled():
        return {"tls": False}
    return {"tls": True, "certs_dir": session_certs()}


def process_tls_args(role: str, ident: str = "") -> list[str]:
    """``--tls-ca/--tls-cert/--tls-key`` of a process a test starts itself (empty: plaintext)."""
    if not tls_enabled():
        return []
    c = issue(session_certs(), role, ident)
    return ["--tls-ca", str(c.ca), "--tls-cert", str(c.cert), "--tls-key", str(c.key)]
