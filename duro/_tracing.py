"""Tracing: OpenTelemetry spans from the edge to the node to the storage commit, off by default.

Every duro process calls :func:`configure` once at start (node, edge, placement). It reads
``DURO_TRACING`` (docs/observability.md)::

    off | "" (default)   no tracing: :data:`tracer` stays None and nothing of OpenTelemetry is
                         even imported
    otlp                 OTLP over gRPC to OTEL_EXPORTER_OTLP_ENDPOINT (the SDK reads the
                         standard OTEL_EXPORTER_OTLP_* variables), batched
    console              each span as JSON on stderr as it ends
    jsonl:PATH           each span as one JSON line appended to PATH as it ends (many processes
                         may share one file: each line is one ``write(2)`` with O_APPEND)

The hot paths test one thing, ``_tracing.tracer is None``, and do nothing else while tracing is
off: no span objects, no context look-ups, no extra wire bytes. The trace context travels inside
each ``duro.v1.Call`` (``trace_context``, W3C ``traceparent``/``tracestate``), not in per-RPC
metadata, because the edge-to-node hot path is one long-lived stream carrying batches of calls;
unary RPCs (the Gateway) take it from their gRPC metadata.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping, MutableMapping, Sequence

from duro.errors import InvalidArgumentError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["tracer", "configure", "shutdown", "inject", "extract", "span", "ENV", "parse_setting"]

log = logging.getLogger("duro.tracing")

ENV = "DURO_TRACING"

# None while tracing is off: the one thing the hot paths check.
tracer: Tracer | None = None
_provider: TracerProvider | None = None


def parse_setting(value: str) -> tuple[str, str]:
    """``DURO_TRACING``'s value as (exporter, argument); InvalidArgumentError when it is bad."""
    value = value.strip()
    if value.lower() in ("", "off", "0", "false", "no"):
        return "off", ""
    if value.lower() in ("otlp", "console"):
        return value.lower(), ""
    if value.startswith("jsonl:"):
        path = value[len("jsonl:"):]
        if not path:
            raise InvalidArgumentError(f"{ENV}=jsonl:PATH needs a file path")
        return "jsonl", path
    raise InvalidArgumentError(
        f"{ENV}={value!r} is not understood: use off, otlp, console or jsonl:PATH")


def configure(service: str, *, instance: str = "",
              environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on for this process as ``DURO_TRACING`` says; return whether it is on.

    ``service`` names the role (``duro-node``, ``duro-edge``, ``duro-placement``) unless
    OTEL_SERVICE_NAME is set; ``instance`` (node or edge id) becomes ``service.instance.id``.
    """
    global tracer, _provider
    environ = os.environ if environ is None else environ
    kind, arg = parse_setting(environ.get(ENV, ""))
    if kind == "off":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attrs = {"service.name": environ.get("OTEL_SERVICE_NAME") or service}
    if instance:
        attrs["service.instance.id"] = instance
    provider = TracerProvider(resource=Resource.create(attrs))
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(_JsonLinesExporter(arg)))
    _provider = provider
    tracer = provider.get_tracer("duro")
    log.info("tracing on: %s%s", kind, f" ({arg})" if arg else "")
    return True


def shutdown() -> None:
    """Flush and stop the exporter (process exit); tracing is off afterwards."""
    global tracer, _provider
    provider, _provider, tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current span's W3C context into ``carrier`` (a protobuf map, a dict)."""
    from opentelemetry import propagate

    propagate.inject(carrier)


def extract(carrier: Mapping[str, str] | Sequence[tuple[str, Any]] | None) -> Context:
    """The context a caller sent (HTTP headers, gRPC metadata pairs, a Call's trace_context)."""
    from opentelemetry import propagate

    if carrier is None:
        carrier = {}
    elif not isinstance(carrier, Mapping):
        carrier = {str(k).lower(): v for k, v in carrier if isinstance(v, str)}
    return propagate.extract(carrier)


@contextmanager
def span(name: str, *, kind: str = "internal", parent: Context | None = None,
         attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A span made current for the block (only call it when :data:`tracer` is set).

    ``kind``: internal, server, client. An exception leaving the block is recorded on it.
    """
    from opentelemetry.trace import SpanKind

    assert tracer is not None, "tracing is off"
    with tracer.start_as_current_span(
        name, context=parent, kind=getattr(SpanKind, kind.upper()),
        attributes=dict(attributes or {}),
    ) as s:
        yield s


class _JsonLinesExporter:
    """A span exporter writing one JSON object per span and line (``DURO_TRACING=jsonl:PATH``):
    a collector-free way to look at traces, and how the tests collect spans of many processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        data = "".join(json.dumps(_span_dict(s), separators=(",", ":")) + "\n" for s in spans)
        try:
            os.write(self._fd, data.encode())
        except OSError as exc:
            log.warning("cannot write spans to %s: %s", self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def _span_dict(s: ReadableSpan) -> dict[str, Any]:
    ctx = s.get_span_context()
    parent = s.parent
    return {
        "name": s.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx else "",
        "span_id": f"{ctx.span_id:016x}" if ctx else "",
        "parent_id": f"{parent.span_id:016x}" if parent else "",
        "kind": s.kind.name.lower(),
        "service": s.resource.attributes.get("service.name", ""),
        "instance": s.resource.attributes.get("service.instance.id", ""),
        "start_ns": s.start_time,
        "end_ns": s.end_time,
        "status": s.status.status_code.name.lower(),
        "attributes": {k: v if isinstance(v, (str, int, float, bool)) else list(v)
                       for k, v in (s.attributes or {}).items()},
        "links": [f"{link.context.trace_id:032x}/{link.context.span_id:016x}"
                  for link in s.links],
    }
