"""The placement leader's record in etcd: its key (the election writes it, routers read it)."""

from __future__ import annotations

__all__ = ["leader_key"]


def leader_key(cluster: str) -> str:
    return f"/duro/{cluster}/placement/leader"
