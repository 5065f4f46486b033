"""Simulated inter-region latency (``duro dev --simulate-latency``, test fixtures).

With ``DURO_SIMULATE_LATENCY`` set, every cross-region hop a :class:`~duro.client.router.Router`
makes (client→node, edge→node, node→node) waits the one-way delay before the call is sent and again
before its reply is handed back. ``1`` selects the default matrix; a JSON object
``{"us-east|eu-west": 40, ...}`` (milliseconds, one way, symmetric) sets another. Same-region hops
and unknown regions cost nothing. Migration transfers between nodes are not delayed.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

__all__ = ["LatencyMatrix", "DEFAULT_MS", "ENV"]

ENV = "DURO_SIMULATE_LATENCY"
DEFAULT_MS = {
    "us-east|eu-west": 40.0,
    "us-east|ap-south": 90.0,
    "eu-west|ap-south": 90.0,
}


class LatencyMatrix:
    def __init__(self, one_way_ms: Mapping[str, float]) -> None:
        self._s: dict[tuple[str, str], float] = {}
        for pair, ms in one_way_ms.items():
            a, _, b = pair.partition("|")
            if not a or not b or float(ms) < 0:
                raise ValueError(f"bad latency entry {pair!r}: {ms!r}")
            self._s[(a, b)] = self._s[(b, a)] = float(ms) / 1000.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LatencyMatrix | None:
        value = (os.environ if env is None else env).get(ENV, "").strip()
        if value in ("", "0", "false", "off"):
            return None
        if value in ("1", "true", "on", "default"):
            return cls(DEFAULT_MS)
        try:
            return cls(json.loads(value))
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{ENV} must be 1 or a JSON object of 'a|b': ms; {exc}") from None

    def one_way(self, a: str, b: str) -> float:
        """Seconds from region ``a`` to ``b`` (0 within a region or for unknown regions)."""
        return 0.0 if a == b else self._s.get((a, b), 0.0)
