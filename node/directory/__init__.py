"""The object directory's partitions held by this node's replica groups (docs/directory.md)."""
