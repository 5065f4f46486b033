"""The placement decision: which live node gets a new object. Pure: no I/O, no clock.

Order of preference:

1. the location hint's region, if a live node is there;
2. else the caller's region, if a live node is there;
3. else the region nearest to the hint (or, without a hint, to the caller) that has a live node,
   by :class:`RegionDistances`; unknown regions are farthest, ties broken by region name.

Within the chosen region the node with the lowest ``load / capacity`` wins; ties are broken by
node id, so the same inputs always give the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_DISTANCES",
    "DEFAULT_REGIONS",
    "Candidate",
    "NoLiveNodeError",
    "RegionDistances",
    "choose_node",
    "choose_followers",
]

DEFAULT_REGIONS = ("us-east", "eu-west", "ap-south")

UNKNOWN_DISTANCE = 1_000_000


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live node as the policy sees it."""

    node_id: str
    region: str
    zone: str = ""
    load: int = 0
    capacity: int = 1000

    @property
    def utilisation(self) -> float:
        return self.load / self.capacity if self.capacity > 0 else float("inf")


class NoLiveNodeError(LookupError):
    """No live node anywhere: nothing can be placed."""


class RegionDistances:
    """Symmetric distances between regions (rough round-trip milliseconds)."""

    def __init__(self, pairs: Mapping[tuple[str, str], int]) -> None:
        self._d: dict[tuple[str, str], int] = {}
        for (a, b), ms in pairs.items():
            self._d[(a, b)] = ms
            self._d[(b, a)] = ms

    def distance(self, a: str, b: str) -> int:
        if a == b:
            return 0
        return self._d.get((a, b), UNKNOWN_DISTANCE)

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(r for pair in self._d for r in pair)


DEFAULT_DISTANCES = RegionDistances(
    {
        ("us-east", "eu-west"): 80,
        ("us-east", "ap-south"): 200,
        ("eu-west", "ap-south"): 130,
    }
)


def _least_loaded(nodes: Iterable[Candidate]) -> Candidate:
    return min(nodes, key=lambda n: (n.utilisation, n.load, n.node_id))


def choose_node(
    live: Sequence[Candidate],
    caller_region: str = "",
    location_hint: str = "",
    distances: RegionDistances = DEFAULT_DISTANCES,
) -> str:
    """Return the id of the node that should host a new object (see the module docstring)."""
    if not live:
        raise NoLiveNodeError("no live node to place the object on")
    by_region: dict[str, list[Candidate]] = {}
    for n in live:
        by_region.setdefault(n.region, []).append(n)
    for wanted in (location_hint, caller_region):
        if wanted and wanted in by_region:
            return _least_loaded(by_region[wanted]).node_id
    origin = location_hint or caller_region
    region = min(by_region, key=lambda r: (distances.distance(origin, r) if origin else 0, r))
    return _least_loaded(by_region[region]).node_id


def choose_followers(
    primary: Candidate,
    live: Sequence[Candidate],
    n: int,
    *,
    exclude: Iterable[str] = (),
    memberships: Mapping[str, int] | None = None,
    distances: RegionDistances = DEFAULT_DISTANCES,
) -> list[str]:
    """Up to ``n`` nodes to hold copies of a group whose primary is ``primary``.

    Preference: the primary's region in another zone, then its region in its zone, then the
    nearest other regions; among equals, the node holding the fewest copies (``memberships``),
    then node id. ``exclude`` (the group's current members) is never chosen.
    """
    skip = set(exclude) | {primary.node_id}
    held = memberships or {}

    def rank(c: Candidate) -> tuple:
        if c.region == primary.region:
            tier = 0 if c.zone != primary.zone else 1
            dist = 0
        else:
            tier, dist = 2, distances.distance(primary.region, c.region)
        return (tier, dist, held.get(c.node_id, 0), c.node_id)

    return [c.node_id for c in sorted((c for c in live if c.node_id not in skip), key=rank)[:n]]
