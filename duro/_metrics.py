"""Prometheus metrics: the naming convention and the exposition server.

Metric names are ``duro_<subsystem>_<name>_<unit>``, as :func:`metric_name` builds them:
``subsystem`` is the component (``node``, ``storage``, ``runtime``, ``placement``, ``edge``,
``client``), ``name`` says what is measured, and ``unit`` is a base unit in the plural
(``seconds``, ``bytes``) or ``total`` for counters (prometheus-client adds ``_total`` to counters
itself, so pass the name without it when declaring a ``Counter``). Examples::

    duro_storage_commit_seconds          histogram of group-commit latency
    duro_runtime_active_objects          gauge (a count has no unit)
    duro_node_calls_total                counter

Labels stay low-cardinality (binding, kind, outcome): never an object id.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

__all__ = ["metric_name", "start_metrics_server", "stop_metrics_server"]

_servers: dict[int, tuple[WSGIServer, threading.Thread]] = {}
_lock = threading.Lock()


def metric_name(subsystem: str, name: str, unit: str = "") -> str:
    """``duro_<subsystem>_<name>_<unit>`` (``unit`` may be empty for unitless gauges)."""
    return "_".join(p for p in ("duro", subsystem, name, unit) if p)


def start_metrics_server(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve ``/metrics`` over HTTP on a daemon thread; return the port (a free one if ``port=0``).

    Stop it with :func:`stop_metrics_server` (the port is the handle).
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    actual = int(server.server_address[1])
    with _lock:
        _servers[actual] = (server, thread)
    return actual


def stop_metrics_server(port: int, timeout: float = 5.0) -> None:
    """Stop the server started on ``port``; idempotent (an unknown port is ignored)."""
    with _lock:
        entry = _servers.pop(port, None)
    if entry is None:
        return
    server, thread = entry
    server.shutdown()
    server.server_close()
    thread.join(timeout)
