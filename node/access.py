"""Who may call what on a host node's gRPC port, by the role in the caller's certificate.

Enforced by :func:`duro.tls.authorizer` before a handler runs (PERMISSION_DENIED otherwise), only
when the node runs with TLS (docs/security.md). A method not listed here is refused to everyone,
so that a new service is closed until someone decides who may call it.

==========================================  ===============================================
calls to objects (``Node``)                 every member and caller: node, edge, client, admin, placement
an edge's socket stream (``NodeSockets``)   edges, only as the edge id in their certificate; nodes,
                                            only as their co-located edge ``node:<id>``
                                            (checked by the handler: node/socket_server.py)
directory lookups (``Directory.Resolve``)   every router: node, edge, client, admin, placement
directory writes (``Switch/Forget/Import``) node, placement, admin
migration (``Migration.*``, ``SetDraining``) node, placement (the rebalancer), admin (duro migrate/drain)
replication (``Replication.*``)             node, placement (fences, handovers), admin
inspection (``NodeInspect.*``, read-only)   node, placement, admin, and edges (the console on an
                                            edge's admin listener reads through it: docs/console.md)
==========================================  ===============================================
"""

from __future__ import annotations

__all__ = ["NODE_RULES", "MEMBERS", "CALLERS"]

MEMBERS = ("node", "placement", "admin")  # the cluster's own processes and its operators
CALLERS = ("node", "edge", "client", "admin", "placement")  # anyone who may call an object

NODE_RULES: dict[str, tuple[str, ...]] = {
    "/duro.v1.Node/": CALLERS,
    "/duro.v1.NodeSockets/": ("edge", "node"),
    "/duro.v1.Directory/Resolve": CALLERS,
    "/duro.v1.Directory/": MEMBERS,
    "/duro.v1.Migration/": MEMBERS,
    "/duro.v1.Replication/": MEMBERS,
    "/duro.v1.NodeInspect/": (*MEMBERS, "edge"),
}
