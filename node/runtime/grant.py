"""What the cluster grants a node to run one object with (``Ownership.acquire``)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Grant"]


class Grant(NamedTuple):
    """The object's directory epoch, its replica group and that group's epoch (primary term).

    An activation keeps the grant it was created with; every commit checks it is still current
    (``Ownership.still_owner``), and a call under a different grant replaces the activation.
    Zeros: a node without a cluster (and the Testbed), which owns every object, in group 0.
    """

    epoch: int = 0
    gid: int = 0
    group_epoch: int = 0
