"""What the tests read of a running process."""

from __future__ import annotations

__all__ = ["rss_mib"]


def rss_mib(pid: int) -> float:
    """The process's resident set size now, in MiB (``VmRSS`` in ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")
