"""The live console (docs/console.md): a cluster snapshot from etcd and the nodes, object
inspection, a feed of changes pushed to browsers, and the web page served on the edge's admin
listener.

``snapshot`` and ``objects`` return plain dicts (JSON-ready) and need no web server: ``duro top``
or any tool can use them.
"""

from __future__ import annotations

from duro.console.objects import inspect_object
from duro.console.snapshot import NodeSampler, cluster_snapshot, rates

__all__ = ["NodeSampler", "cluster_snapshot", "inspect_object", "rates"]
