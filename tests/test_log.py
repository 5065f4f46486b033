"""duro._log (structured logging) and duro._metrics (naming, exposition server)."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from duro import _log
from duro._log import ContextAdapter, StructuredFormatter, configure_logging
from duro._metrics import metric_name, start_metrics_server, stop_metrics_server


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_fixed_logger_names() -> None:
    assert _log.NODE == "duro.node"
    assert _log.RUNTIME == "duro.node.runtime"
    assert _log.PLACEMENT == "duro.placement"
    assert _log.EDGE == "duro.edge"
    assert _log.CLIENT == "duro.client"
    assert _log.runtime_logger is logging.getLogger("duro.node.runtime")
    assert _log.runtime_logger.parent is _log.node_logger


def test_adapter_carries_context_and_merges_extra(caplog: pytest.LogCaptureFixture) -> None:
    log = ContextAdapter(_log.node_logger, node_id="n1")
    obj = log.bind(object_id="ab" * 32, binding="COUNTER")
    assert log.context == {"node_id": "n1"}
    assert obj.context == {"node_id": "n1", "object_id": "ab" * 32, "binding": "COUNTER"}
    with caplog.at_level(logging.INFO, logger="duro"):
        obj.info("activated in %.1f ms", 1.25, extra={"binding": "OTHER", "attempt": 2})
    (record,) = caplog.records
    assert record.getMessage() == "activated in 1.2 ms"
    assert record.node_id == "n1"  # type: ignore[attr-defined]
    assert record.binding == "OTHER"  # type: ignore[attr-defined]  # the call wins
    assert record.attempt == 2  # type: ignore[attr-defined]
    # An adapter built from an adapter keeps the outer context.
    nested = ContextAdapter(obj, {"binding": "B"})
    assert nested.logger is _log.node_logger
    assert nested.context["node_id"] == "n1" and nested.context["binding"] == "B"


def test_args_are_lazy() -> None:
    class Boom:
        def __str__(self) -> str:
            raise AssertionError("formatted although the level is disabled")

    logger = logging.getLogger("duro.client.lazytest")
    logger.setLevel(logging.WARNING)
    try:
        ContextAdapter(logger, node_id="n").debug("value %s", Boom())
    finally:
        logger.setLevel(logging.NOTSET)


def record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("duro.node", logging.INFO, __file__, 1, msg, args, None)
    rec.created = 0.0
    rec.msecs = 5
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_key_value_format() -> None:
    fmt = StructuredFormatter(json=False)
    line = fmt.format(
        record(object_id=b"\x01\x02", node_id="n1", binding="COUNTER", note="two words", empty="")
    )
    assert line == (
        '1970-01-01T00:00:00.005Z INFO duro.node hello world '
        'node_id=n1 object_id=0102 binding=COUNTER note="two words" empty=""'
    )


def test_json_format_and_exceptions() -> None:
    fmt = StructuredFormatter(json=True)
    doc = json.loads(fmt.format(record(node_id="n1", object_id=b"\xff", other=object.__new__(object))))
    assert doc["ts"] == "1970-01-01T00:00:00.005Z"
    assert doc["level"] == "INFO" and doc["logger"] == "duro.node" and doc["msg"] == "hello world"
    assert doc["node_id"] == "n1" and doc["object_id"] == "ff"
    assert doc["other"].startswith("<object object")
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        import sys

        rec = record(node_id="n1")
        rec.exc_info = sys.exc_info()
    doc = json.loads(fmt.format(rec))
    assert "RuntimeError: bad" in doc["exc"]
    text = StructuredFormatter().format(rec)
    assert text.splitlines()[0].endswith("node_id=n1") and "RuntimeError: bad" in text


def test_configure_logging_is_idempotent(restore_root: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("debug", json=False, stream=first)
    configure_logging(logging.INFO, json=True, stream=second)
    ours = [h for h in logging.getLogger().handlers if isinstance(h, _log._DuroHandler)]
    assert len(ours) == 1
    ContextAdapter(_log.placement_logger, node_id="p1").info("leader %s", "yes")
    _log.placement_logger.debug("hidden")
    assert first.getvalue() == ""
    (line,) = second.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["msg"] == "leader yes" and doc["node_id"] == "p1" and doc["logger"] == "duro.placement"
    assert logging.getLogger().level == logging.INFO
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")


# -- metrics ---------------------------------------------------------------------------------------


def test_metric_name() -> None:
    assert metric_name("storage", "commit", "seconds") == "duro_storage_commit_seconds"
    assert metric_name("runtime", "active_objects") == "duro_runtime_active_objects"


def test_metrics_server_free_port_and_stop() -> None:
    registry = CollectorRegistry()
    Counter(metric_name("node", "calls"), "calls served", registry=registry).inc(3)
    port = start_metrics_server("127.0.0.1", 0, registry=registry)
    assert port > 0
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "duro_node_calls_total 3.0" in body
    finally:
        stop_metrics_server(port)
    stop_metrics_server(port)  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_process_context_stamps_every_record_and_object_context_wins() -> None:
    import io
    import logging

    from duro._log import configure_logging, set_process_context

    buf = io.StringIO()
    handler = configure_logging("INFO", stream=buf)
    try:
        set_process_context(node_id="n1", region="eu-west")
        logging.getLogger("duro.node.runtime").info(
            "object reset: %s", "boom", extra={"object_id": "ab" * 4, "binding": "COUNTER"})
        logging.getLogger("duro.node").info("plain", extra={"node_id": "override"})
        lines = buf.getvalue().splitlines()
        assert "object reset: boom" in lines[0]
        assert "node_id=n1" in lines[0] and "object_id=abababab" in lines[0]
        assert "binding=COUNTER" in lines[0] and "region=eu-west" in lines[0]
        assert "node_id=override" in lines[1]
    finally:
        logging.getLogger().removeHandler(handler)
