"""The placement decision, as a pure function: no etcd, no clock."""

from __future__ import annotations

import pytest

from duro.topology.placement_policy import (
    DEFAULT_DISTANCES,
    Candidate,
    NoLiveNodeError,
    Placer,
    RegionDistances,
    choose_node,
)

pytestmark = pytest.mark.timeout(10)

US1 = Candidate("us1", "us-east", "a", load=10, capacity=100)
US2 = Candidate("us2", "us-east", "b", load=5, capacity=100)
EU1 = Candidate("eu1", "eu-west", "a", load=50, capacity=100)
AP1 = Candidate("ap1", "ap-south", "a", load=0, capacity=100)
ALL = [US1, US2, EU1, AP1]


def test_caller_region_least_loaded() -> None:
    assert choose_node(ALL, caller_region="us-east") == "us2"
    assert choose_node(ALL, caller_region="eu-west") == "eu1"


def test_hint_beats_caller_region() -> None:
    assert choose_node(ALL, caller_region="us-east", location_hint="ap-south") == "ap1"


def test_hint_region_without_nodes_falls_back_to_caller_region() -> None:
    assert choose_node([US1, EU1], caller_region="eu-west", location_hint="ap-south") == "eu1"


def test_nearest_region_when_caller_region_is_empty() -> None:
    # From ap-south, eu-west (130) is nearer than us-east (200).
    assert choose_node([US1, EU1], caller_region="ap-south") == "eu1"
    # From eu-west, us-east (80) is nearer than ap-south (130).
    assert choose_node([US1, AP1], caller_region="eu-west") == "us1"


def test_unknown_or_missing_region_is_deterministic() -> None:
    assert choose_node([EU1, AP1], caller_region="mars") == "ap1"  # unknown: by region name
    assert choose_node([EU1, AP1]) == "ap1"


def test_load_is_relative_to_capacity() -> None:
    big = Candidate("big", "us-east", load=50, capacity=1000)
    small = Candidate("small", "us-east", load=10, capacity=100)
    assert choose_node([small, big], caller_region="us-east") == "big"


def test_ties_broken_by_node_id_whatever_the_order() -> None:
    a = Candidate("a", "us-east", load=1, capacity=10)
    b = Candidate("b", "us-east", load=1, capacity=10)
    assert choose_node([b, a], caller_region="us-east") == "a"
    assert choose_node([a, b], caller_region="us-east") == "a"


def test_zero_capacity_is_last_resort() -> None:
    z = Candidate("z", "us-east", load=0, capacity=0)
    assert choose_node([z, US1], caller_region="us-east") == "us1"
    assert choose_node([z], caller_region="us-east") == "z"


def test_no_live_node() -> None:
    with pytest.raises(NoLiveNodeError):
        choose_node([], caller_region="us-east")


def test_distance_table_is_symmetric_and_custom() -> None:
    assert DEFAULT_DISTANCES.distance("eu-west", "us-east") == DEFAULT_DISTANCES.distance(
        "us-east", "eu-west"
    )
    d = RegionDistances({("x", "y"): 5, ("x", "z"): 1})
    nodes = [Candidate("y1", "y"), Candidate("z1", "z")]
    assert choose_node(nodes, caller_region="x", distances=d) == "z1"


def test_placer_spreads_a_burst_and_agrees_with_choose_node() -> None:
    a = Candidate("a", "us-east", load=0, capacity=100)
    b = Candidate("b", "us-east", load=5, capacity=100)
    placer = Placer([a, b, EU1])
    picks = [placer.choose("us-east") for _ in range(15)]
    # a takes the first five (it is five behind), then they alternate: 10 and 5 after 15.
    assert picks[:5] == ["a"] * 5
    assert picks.count("a") == 10 and picks.count("b") == 5
    assert placer.choose("eu-west") == "eu1"
    assert placer.choose("mars") == "eu1"  # unknown: nearest by name, as choose_node
    for region in ("us-east", "eu-west", "ap-south", "mars", ""):
        assert Placer(ALL).choose(region) == choose_node(ALL, caller_region=region)
    with pytest.raises(NoLiveNodeError):
        Placer([])
