"""The edge's Prometheus metrics (``duro_edge_*``): connections, frames, bytes, upstream latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from duro._metrics import metric_name

__all__ = ["EdgeMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _n(name: str, unit: str = "") -> str:
    return metric_name("edge", name, unit)


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.http_requests = Counter(_n("http_requests"), "HTTP requests answered",
                                     ["status"], registry=r)
        self.upstream_seconds = Histogram(
            _n("upstream_latency", "seconds"), "time from request to the object's answer",
            ["kind"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ws_open = Gauge(_n("websocket_connections"), "client WebSockets open now",
                             registry=r)
        self.ws_accepted = Counter(_n("websocket_accepted"), "client WebSockets accepted",
                                   registry=r)
        self.ws_closed = Counter(_n("websocket_closed"), "client WebSockets closed, by close code",
                                 ["code"], registry=r)
        self.frames_in = Counter(_n("websocket_frames_in"), "messages from clients", registry=r)
        self.frames_out = Counter(_n("websocket_frames_out"), "messages to clients", registry=r)
        self.bytes_in = Counter(_n("websocket_in", "bytes"), "message bytes from clients",
                                registry=r)
        self.bytes_out = Counter(_n("websocket_out", "bytes"), "message bytes to clients",
                                 registry=r)
        self.auto_responses = Counter(_n("websocket_auto_responses"),
                                      "messages answered at the edge by an auto-response pair",
                                      registry=r)
        self.slow_closed = Counter(_n("websocket_slow_client_closed"),
                                   "clients closed with 1008 for not reading", registry=r)
        self.upstream_batches = Counter(_n("socket_stream_batches"),
                                        "messages written on edge-node socket streams", registry=r)
        self.http_connections = Gauge(_n("http_connections"),
                                      "client connections open now (HTTP and WebSocket)",
                                      registry=r)
        self.http_requests_in_flight = Gauge(_n("http_requests_in_flight"),
                                             "HTTP requests being handled now", registry=r)
        self.http_body_bytes_in_flight = Gauge(_n("http_body_in_flight", "bytes"),
                                               "request body bytes held now", registry=r)
        self.socket_inflight_bytes = Gauge(_n("websocket_in_flight", "bytes"),
                                           "client message bytes in flight to objects now",
                                           registry=r)
        self.refused = Counter(_n("refused"), "clients refused by a limit (docs/security.md), "
                               "by reason", ["reason"], registry=r)
        self.gateway_calls = Counter(_n("gateway_calls"), "gRPC Gateway calls", ["rpc", "outcome"],
                                     registry=r)
