"""duro.placement: leader-elected placement service and the object directory in etcd.

Where things are: ``policy`` (the pure decision), ``directory`` (etcd transactions and the
watch-fed cache), ``election`` (leader lease), ``nodes`` (live-node view), ``service`` (logic and
the gRPC adapter), ``config`` and ``main`` (the process). See docs/cluster.md.
"""
