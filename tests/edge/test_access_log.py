"""The edge's access log (edge/access_log.py): one line per request, batched off the request
path, following the log level; through a real edge and through the logger class itself."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from duro._log import configure_logging, set_process_context
from duro.edge import access_log
from duro.edge.access_log import BufferedAccessLogger
from tests.edge.conftest import EXAMPLES, start_cluster, stop_cluster


@pytest.fixture
def captured():
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    access_log.flush()
    configure_logging("WARNING")


def _one(stream: io.StringIO, path: str = "/counter/a/get?x=1") -> str:
    logger = BufferedAccessLogger(logging.getLogger(access_log.LOGGER_NAME), "")
    assert logger.enabled
    request = make_mocked_request("GET", path)
    logger.log(request, web.Response(body=b"hello"), 0.0012)
    assert stream.getvalue() == ""  # batched: nothing written on the request's path
    # (body_length is what was sent: 0 for this response, which was never sent)
    access_log.flush()
    return stream.getvalue()


async def test_a_line_per_request_with_the_process_context(captured) -> None:
    set_process_context(node_id="n1", region="us-east")
    line = _one(captured)
    assert line.endswith('"GET /counter/a/get?x=1 HTTP/1.1" 200 0 0.001200 node_id=n1 '
                         'region=us-east\n'), line
    assert " INFO duro.edge.access " in line and line.count("\n") == 1


async def test_json_lines_when_the_process_logs_json() -> None:
    stream = io.StringIO()
    configure_logging("INFO", json=True, stream=stream)
    try:
        doc = json.loads(_one(stream, "/chat/r/messages"))
    finally:
        configure_logging("WARNING")
    assert doc["logger"] == "duro.edge.access" and doc["status"] == 200
    assert doc["request"] == "GET /chat/r/messages HTTP/1.1" and doc["bytes"] == 0


async def test_written_in_one_batch_and_at_the_size_bound(captured) -> None:
    logger = BufferedAccessLogger(logging.getLogger(access_log.LOGGER_NAME), "")
    request = make_mocked_request("GET", "/x/" + "a" * 200)
    response = web.Response()
    n = access_log.FLUSH_BYTES // 250 + 10  # past the bound: written without a flush call
    for _ in range(n):
        logger.log(request, response, 0.0)
    written = captured.getvalue().count("\n")
    assert 0 < written < n
    await asyncio.sleep(access_log.FLUSH_SECONDS * 2)  # the rest: written by the timer
    assert captured.getvalue().count("\n") == n


def test_follows_the_log_level() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", stream=stream)
    logger = BufferedAccessLogger(logging.getLogger(access_log.LOGGER_NAME), "")
    assert not logger.enabled  # aiohttp does not call log() then


@pytest.mark.cluster
@pytest.mark.timeout(120)
async def test_a_real_edge_at_warning_writes_no_access_lines(tmp_path) -> None:
    cluster = await start_cluster(tmp_path, app=EXAMPLES, regions=("us-east",), replicas=1,
                                  edge_args=("--log-level", "WARNING"))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(f"{cluster.edge_url(0)}/counter/quiet/increment") as r:
                    assert r.status == 200
        await asyncio.sleep(access_log.FLUSH_SECONDS * 2)
    finally:
        await stop_cluster(cluster)  # the edge flushes its buffer when it stops
    text = cluster.edges[0].log_path.read_text()
    assert "duro.edge.access" not in text
