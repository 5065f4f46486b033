"""The Gateway and the edge's default route as a hostile client sees them (docs/security.md):
tokens (UNAUTHENTICATED, PERMISSION_DENIED, reload), what duro.toml exposes (not_found, 404),
the callable-method rule through the Gateway and through a real node call, malformed requests
(INVALID_ARGUMENT, invalid_argument), and a bounded fuzz run after which the edge still serves.

The app is tests/edge/exposed: THING (open on both entry points), READONLY (the same class, only
``get`` on the Gateway) and HIDDEN (open to nothing)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from grpc import aio

from duro._codec import encode
from duro._namespace import Call, CallKind
from duro._pb import gateway_pb2
from duro.client import connect
from duro.edge.tokens import dev_token, new_token, token_entry
from duro.errors import MethodNotFoundError
from tests.edge.conftest import start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(180)]

APP = Path(__file__).parent / "exposed"
LIMITED = new_token()  # THING's get/echo/fetch only
INVOKE, FETCH = "/duro.v1.Gateway/Invoke", "/duro.v1.Gateway/Fetch"

#: Refused on Thing, each for its own reason (tests/test_methods.py has the same list).
REFUSED = ["static", "klass", "prop", "LIMIT", "Nested", "value", "ctx", "env", "mro",
           "__init_subclass__", "__init__", "__class__", "__reduce_ex__", "_private", "_load",
           "fetch", "alarm", "web_socket_message", "nope"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway-security")
    # The cluster's own token file (LocalCluster keeps it), plus a limited token.
    _, _, tokens_file = dev_token(root / "gateway")
    with open(tokens_file, "a") as f:
        f.write(token_entry("limited", LIMITED, bindings=["THING"],
                            methods=["get", "echo", "fetch"]))
    c = await start_cluster(root, app=APP, regions=("us-east",), replicas=1,
                            edge_args=("--no-access-log",))
    yield c
    await stop_cluster(c)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def channel(cluster):
    async with aio.insecure_channel(cluster.edges[0].ready["grpc"]) as ch:
        yield ch


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def raw(channel, path: str, data: bytes, metadata=()) -> bytes:
    """One RPC with the request as raw bytes (what a hostile client can send)."""
    call = channel.unary_unary(path)  # no serializers: bytes in, bytes out
    return await call(data, metadata=metadata, timeout=30)


async def invoke(channel, token: str, **kw) -> dict:
    data = await raw(channel, INVOKE, gateway_pb2.InvokeRequest(**kw).SerializeToString(),
                     bearer(token))
    r = gateway_pb2.InvokeResponse.FromString(data)
    if r.HasField("error"):
        return {"error": r.error.code, "message": r.error.message}
    return {"result": json.loads(r.result_json)}


async def fetch(channel, token: str, **kw) -> dict:
    data = await raw(channel, FETCH, gateway_pb2.FetchRequest(**kw).SerializeToString(),
                     bearer(token))
    r = gateway_pb2.FetchResponse.FromString(data)
    if r.HasField("error"):
        return {"error": r.error.code, "message": r.error.message}
    return {"status": r.status, "body": json.loads(r.body)}


async def status_of(coro) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as ei:
        await coro
    return ei.value.code()


# -- credentials ------------------------------------------------------------------------------

async def test_no_or_unknown_token_is_unauthenticated(cluster, channel):
    good = gateway_pb2.InvokeRequest(binding="THING", name="a", method="get").SerializeToString()
    for metadata in ((), bearer(new_token()), (("authorization", "Basic dXNlcjpwdw=="),),
                     (("authorization", "Bearer"),), bearer(cluster.gateway_token + "x")):
        for path in (INVOKE, FETCH):
            code = await status_of(raw(channel, path, good, metadata))
            assert code == grpc.StatusCode.UNAUTHENTICATED, (metadata, path)
    # Credentials come first: garbage from a stranger is not even parsed.
    code = await status_of(raw(channel, INVOKE, b"\xff\xfe garbage"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # The dev token duro dev made works.
    assert await invoke(channel, cluster.gateway_token, binding="THING", name="a",
                        method="get") == {"result": 0}


async def test_token_limits_are_permission_denied(cluster, channel):
    assert await invoke(channel, LIMITED, binding="THING", name="lim", method="get") == {
        "result": 0}
    assert (await fetch(channel, LIMITED, binding="THING", name="lim", url="/f"))["status"] == 200
    for binding, method in (("THING", "add"), ("READONLY", "get"), ("HIDDEN", "get"),
                            ("NOPE", "get"), ("THING", "static")):
        req = gateway_pb2.InvokeRequest(binding=binding, name="lim", method=method)
        code = await status_of(raw(channel, INVOKE, req.SerializeToString(), bearer(LIMITED)))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (binding, method)
    req = gateway_pb2.FetchRequest(binding="HIDDEN", name="lim", url="/")
    code = await status_of(raw(channel, FETCH, req.SerializeToString(), bearer(LIMITED)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # Nothing ran: the object was never changed by the refused add.
    assert await invoke(channel, LIMITED, binding="THING", name="lim", method="get") == {
        "result": 0}


async def test_tokens_file_is_reloaded(cluster, channel):
    """Rotation without a restart: a token added to the file works within seconds; one removed
    from it is refused."""
    added = new_token()
    path = cluster.gateway_tokens_file
    before = path.read_text()
    path.write_text(before + token_entry("added", added))
    deadline = time.monotonic() + 15
    while True:
        try:
            assert await invoke(channel, added, binding="THING", name="r", method="get") == {
                "result": 0}
            break
        except aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            assert time.monotonic() < deadline, "the added token was never accepted"
            await asyncio.sleep(0.2)
    path.write_text(before)  # revoke it
    deadline = time.monotonic() + 15
    while True:
        try:
            await invoke(channel, added, binding="THING", name="r", method="get")
        except aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() < deadline, "the removed token is still accepted"
        await asyncio.sleep(0.2)
    assert await invoke(channel, cluster.gateway_token, binding="THING", name="r",
                        method="get") == {"result": 0}


# -- what duro.toml exposes -------------------------------------------------------------------

async def test_gateway_reaches_only_what_is_exposed(cluster, channel):
    token = cluster.gateway_token
    hidden = await invoke(channel, token, binding="HIDDEN", name="x", method="get")
    unknown = await invoke(channel, token, binding="NOPE", name="x", method="get")
    assert hidden["error"] == unknown["error"] == "not_found"
    # The same answer, but for the name asked: the hidden binding is not listed.
    assert hidden["message"].replace("HIDDEN", "?") == unknown["message"].replace("NOPE", "?")
    assert "HIDDEN" not in unknown["message"]
    assert (await fetch(channel, token, binding="HIDDEN", name="x", url="/"))["error"] == (
        "not_found")
    # READONLY: the same class as THING, only get.
    assert await invoke(channel, token, binding="THING", name="ro", method="add",
                        args_json="[3]") == {"result": 3}
    assert await invoke(channel, token, binding="READONLY", name="ro", method="get") == {
        "result": 3}
    for method in ("add", "echo", "inherited"):
        r = await invoke(channel, token, binding="READONLY", name="ro", method=method)
        assert r["error"] == "method_not_found", method
    assert (await fetch(channel, token, binding="READONLY", name="ro", url="/"))["error"] == (
        "not_found")
    assert await invoke(channel, token, binding="thing", name="ro", method="get") == {
        "result": 3}  # binding names are case-insensitive, as before


async def test_default_route_reaches_only_what_is_exposed(cluster):
    url = cluster.edge_url(0)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/thing/web/x") as r:
            assert r.status == 200 and (await r.json())["path"] == "/thing/web/x"
        answers = []
        for binding in ("hidden", "readonly", "nope"):
            async with http.get(f"{url}/{binding}/web/x") as r:
                body = await r.json()
                assert r.status == 404 and body["error"]["code"] == "not_found", binding
                answers.append(body["error"]["message"].replace(binding, "?"))
                assert "hidden" not in body["error"]["message"].lower().replace(
                    f"'{binding}'", "")
        assert len(set(answers)) == 1  # a hidden binding looks exactly like a missing one


# -- the callable-method rule -----------------------------------------------------------------

async def test_gateway_calls_only_what_the_user_wrote(cluster, channel):
    token = cluster.gateway_token
    for method in REFUSED:
        r = await invoke(channel, token, binding="THING", name="rule", method=method)
        assert r["error"] == "method_not_found", (method, r)
    for method, want in (("inherited", "from Base"), ("mixed", "from Mixin"),
                         ("overridden", "Thing"), ("shadowed", "class method")):
        assert await invoke(channel, token, binding="THING", name="rule", method=method) == {
            "result": want}


async def test_node_calls_only_what_the_user_wrote(cluster):
    """Through a real node: the client's router sends the calls, the node refuses them (calls
    built by hand skip the stub's own check of the name, as another client's could)."""
    async with connect(etcd=cluster.etcd.endpoint, app=cluster.app, region="us-east") as c:
        ns = c.namespace("THING")
        stub = ns.get_by_name("node-rule")
        assert await stub.inherited() == "from Base"
        assert await stub.mixed() == "from Mixin"
        assert await stub.shadowed() == "class method"
        for method in REFUSED:
            with pytest.raises(MethodNotFoundError):
                await stub.call(method)
            call = Call(binding="THING", object_id=stub.id.raw, kind=CallKind.RPC,
                        method=method, payload=encode([[], {}]), caller_region="us-east")
            with pytest.raises(MethodNotFoundError):
                await c.invoker.invoke(call)
        assert await stub.get() == 0


# -- malformed requests -----------------------------------------------------------------------

async def test_bytes_that_are_not_a_request_are_invalid_argument(cluster, channel):
    token = bearer(cluster.gateway_token)
    bad_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (binding), a string that is not UTF-8
    for data in (b"\xff\xff\xff\xff", b"\x0a\x10abc", bad_utf8, b"\x08" + b"\xff" * 11):
        for path in (INVOKE, FETCH):
            code = await status_of(raw(channel, path, data, token))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (data, path)


async def test_hostile_arguments_are_invalid_argument(cluster, channel):
    token = cluster.gateway_token

    async def add(args_json: str = "", kwargs_json: str = "") -> dict:
        return await invoke(channel, token, binding="THING", name="hostile", method="add",
                            args_json=args_json, kwargs_json=kwargs_json)

    assert await add("[1]") == {"result": 1}
    deep = "[" * 100_000 + "]" * 100_000
    for args, kwargs in ((deep, ""), ("", '{"by": ' + deep + "}"), ("[NaN]", ""),
                         ("[Infinity]", ""), ("[-Infinity]", ""), ("", '{"by": NaN}'),
                         ("[1e999]", ""), ("[1,", ""), ('"x"', ""), ("", "[]"),
                         ("[" * 100_000, "")):
        r = await add(args, kwargs)
        assert r["error"] == "invalid_argument", (args[:20], kwargs[:20], r)
    # Deep but parseable JSON that msgpack cannot carry: a clear error too.
    r = await add("[" + "[" * 2000 + "]" * 2000 + "]")
    assert r["error"] in ("invalid_argument", "invalid_value"), r
    # Nothing above reached the counter: it is 1, a number, and /get is valid JSON.
    assert await invoke(channel, token, binding="THING", name="hostile", method="get") == {
        "result": 1}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.edge_url(0)}/thing/hostile/get") as r:
            assert json.loads(await r.text()) == {"value": 1, "path": "/thing/hostile/get"}
    # A keyword argument named like the stub's own parameter is the object's argument.
    assert await invoke(channel, token, binding="THING", name="hostile", method="echo",
                        kwargs_json='{"method": 1}') == {
        "result": {"args": [], "kwargs": {"method": 1}}}
    r = await fetch(channel, token, binding="THING", name="hostile", url="http://[::1/x")
    assert r["error"] == "invalid_argument", r


# -- a bounded fuzz run -----------------------------------------------------------------------

#: What a malformed request may get: a refusal, or a duro error that names the caller's mistake
#: (object_error: the object's own TypeError for arguments of the wrong type).
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}
ANSWERS = {"invalid_argument", "invalid_id", "invalid_value", "method_not_found", "not_found",
           "object_error"}


def _fuzz(address: str, token: str) -> dict[str, int]:
    """Hypothesis-driven malformed requests against the real listener (in a thread: grpc's
    blocking client, hypothesis' synchronous runner)."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    seen: dict[str, int] = {}
    budget = settings(max_examples=120, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
    json_text = (
        st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                          max_size=3),
                     max_leaves=10).map(json.dumps)  # NaN and Infinity included
        | st.text(alphabet='[]{}",:0123456789.eE+-tfnaluNIy ', max_size=40)
        | st.integers(1, 50_000).map(lambda n: "[" * n + "]" * n)
        | st.integers(1, 50_000).map(lambda n: '{"a":' * n + "1" + "}" * n)
        | st.just("")
    )
    # Mostly real names (to get past the first checks), sometimes anything.
    known_methods = st.sampled_from(REFUSED + ["add", "get", "echo", "inherited"] * 4)
    methods = st.one_of(known_methods, known_methods, known_methods, st.text(max_size=12))
    known = st.sampled_from(["THING", "THING", "THING", "thing", "READONLY", "HIDDEN", "NOPE", ""])
    bindings = st.one_of(known, known, known, st.text(max_size=8))
    names = st.sampled_from(["fz1", "fz2", ""])
    ids = st.sampled_from(["", "00" * 32, "zz", "ab" * 40])
    tokens = st.sampled_from([token, token, token, LIMITED, "", "x" * 30])

    with grpc.insecure_channel(address) as ch:
        rpcs = {INVOKE: (ch.unary_unary(INVOKE), gateway_pb2.InvokeResponse),
                FETCH: (ch.unary_unary(FETCH), gateway_pb2.FetchResponse)}

        def check(path: str, data: bytes, tok: str) -> None:
            rpc, response = rpcs[path]
            metadata = (("authorization", f"Bearer {tok}"),) if tok else ()
            try:
                out = rpc(data, metadata=metadata, timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() in REFUSALS, (exc.code(), exc.details(), data[:60])
                outcome = exc.code().name
            else:
                r = response.FromString(out)
                outcome = r.error.code if r.HasField("error") else "ok"
                assert outcome in ANSWERS | {"ok"}, (outcome, r.error.message, data[:60])
            seen[outcome] = seen.get(outcome, 0) + 1

        @budget
        @given(st.sampled_from([INVOKE, FETCH]), st.binary(max_size=300))
        def random_bytes(path: str, data: bytes) -> None:
            check(path, data, token)

        @budget
        @given(bindings, names, ids, methods, json_text, json_text, tokens)
        @example("THING", "fz1", "", "add", "[2]", "", token)  # one that must succeed
        def random_invokes(binding, name, oid, method, args, kwargs, tok) -> None:
            req = gateway_pb2.InvokeRequest(binding=binding, name=name, id=oid, method=method,
                                            args_json=args, kwargs_json=kwargs)
            check(INVOKE, req.SerializeToString(), tok)

        @budget
        @given(bindings, names, ids, st.text(max_size=30), st.text(max_size=8),
               st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3),
               st.binary(max_size=64), tokens)
        def random_fetches(binding, name, oid, url, method, headers, body, tok) -> None:
            req = gateway_pb2.FetchRequest(
                binding=binding, name=name, id=oid, url=url, method=method, body=body,
                headers=[gateway_pb2.HttpHeader(name=k, value=v) for k, v in headers])
            check(FETCH, req.SerializeToString(), tok)

        random_bytes()
        random_invokes()
        random_fetches()
    return seen


async def test_fuzzed_requests_get_refusals_and_the_edge_keeps_serving(cluster, channel):
    seen = await asyncio.to_thread(_fuzz, cluster.edges[0].ready["grpc"], cluster.gateway_token)
    # The run reached every kind of answer it is meant to provoke.
    assert {"INVALID_ARGUMENT", "UNAUTHENTICATED", "ok", "method_not_found"} <= seen.keys(), seen
    token = cluster.gateway_token
    assert await invoke(channel, token, binding="THING", name="after-fuzz", method="add") == {
        "result": 1}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.edge_url(0)}/thing/after-fuzz/get") as r:
            assert r.status == 200 and (await r.json())["value"] == 1


# -- memory: the Gateway shares the edge's budget of request bytes ------------------------------

async def test_concurrent_big_gateway_arguments_are_bounded(cluster):
    """Twelve concurrent 15 MiB arguments: each call answers, or fails RESOURCE_EXHAUSTED before
    it runs (the edge holds at most 64 MiB of request bytes, HTTP bodies and Gateway requests
    together); the edge's memory stays bounded, and once they are done a big call goes through."""
    from tests.edge.test_hostile_http import MiB, rss_mib

    pid = cluster.edges[0].proc.pid
    before = rss_mib(pid)
    big = "x" * (15 * MiB)
    options = [("grpc.max_send_message_length", 64 * MiB),
               ("grpc.max_receive_message_length", 64 * MiB)]
    async with aio.insecure_channel(cluster.edges[0].ready["grpc"], options=options) as ch:
        async def one(i: int) -> str:
            try:
                r = await invoke(ch, cluster.gateway_token, binding="THING", name=f"big{i}",
                                 method="echo", args_json=json.dumps([big]))
            except aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                assert "bytes of requests" in (exc.details() or ""), exc.details()
                return "refused"
            assert r["result"]["args"] == [big]
            return "ok"

        outcomes = await asyncio.gather(*(one(i) for i in range(12)))
        peak = rss_mib(pid)
        assert "ok" in outcomes and "refused" in outcomes, outcomes
        # Nothing is held any more: a single big call is served.
        assert await one(99) == "ok"
    assert peak - before < 900, (before, peak)
