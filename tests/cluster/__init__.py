"""Reusable cluster fixtures: real etcd (and, later, placement and node processes)."""
