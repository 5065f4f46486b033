"""The cluster's topology as recorded in etcd, shared by every process that reads it.

Who is where: the nodes (``nodes``), the replica groups (``groups``), the directory's partitions
and entries (``partitions``, ``directory_entry``), the replication settings
(``replication_settings``), the placement leader's key (``leader``), the pure policy that places
an object on a node (``placement_policy``); and how they are read and watched (``etcdkv``,
``watch``).

It sits below every process package: ``duro.client``, ``duro.node``, ``duro.placement`` and
``duro.edge`` import it, and it imports none of them (tests/test_layers.py).
"""
