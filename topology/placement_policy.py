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
    "Placer",
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


def choose_node(
    live: Sequence[Candidate],
    caller_region: str = "",
    location_hint: str = "",
    distances: RegionDistances = DEFAULT_DISTANCES,
) -> str:
    """Return the id of the node that should host a new object (see the module docstring)."""
    return Placer(live, distances).choose(caller_region, location_hint)


class Placer:
    """:func:`choose_node` for many new objects in a row (a partition placing a batch): the
    candidates are grouped by region once, and every choice counts one more object on the node
    it chose, so a burst spreads over a region's nodes."""

    __slots__ = ("_by_region", "_load", "_capacity", "_distances", "_nearest")

    def __init__(self, live: Sequence[Candidate],
                 distances: RegionDistances = DEFAULT_DISTANCES) -> None:
        if not live:
            raise NoLiveNodeError("no live node to place the object on")
        self._by_region: dict[str, list[str]] = {}
        self._load: dict[str, int] = {}
        self._capacity: dict[str, int] = {}
        for n in live:
            self._by_region.setdefault(n.region, []).append(n.node_id)
            self._load[n.node_id] = n.load
            self._capacity[n.node_id] = n.capacity
        self._distances = distances
        self._nearest: dict[str, str] = {}

    def _region(self, caller_region: str, location_hint: str) -> str:
        for wanted in (location_hint, caller_region):
            if wanted and wanted in self._by_region:
                return wanted
        origin = location_hint or caller_region
        region = self._nearest.get(origin)
        if region is None:
            d = self._distances
            region = self._nearest[origin] = min(
                self._by_region, key=lambda r: (d.distance(origin, r) if origin else 0, r))
        return region

    def choose(self, caller_region: str = "", location_hint: str = "") -> str:
        load, capacity = self._load, self._capacity

        def rank(node: str) -> tuple[float, int, str]:
            c = capacity[node]
            return (load[node] / c if c > 0 else float("inf"), load[node], node)

        node = min(self._by_region[self._region(caller_region, location_hint)], key=rank)
        load[node] += 1
        return node


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
