"""The gRPC Gateway from a client generated from proto/ in a separate process, with nothing of
duro importable: only grpcio/protobuf from site-packages and the generated code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]

CLIENT = textwrap.dedent('''
    import json, sys
    import grpc
    try:  # "duro" here is only the generated duro.v1 package; the product is not importable
        import duro.errors  # noqa: F401
        raise SystemExit("duro (the product) must not be importable here")
    except ImportError:
        pass
    from duro.v1 import gateway_pb2, gateway_pb2_grpc  # generated into the temp dir

    out = {}
    token = [("authorization", "Bearer " + sys.argv[2])]  # docs/security.md
    with grpc.insecure_channel(sys.argv[1]) as ch:
        gw = gateway_pb2_grpc.GatewayStub(ch)
        try:
            gw.Invoke(gateway_pb2.InvokeRequest(binding="COUNTER", name="gw", method="get"),
                      timeout=30)
        except grpc.RpcError as exc:
            out["no_token"] = exc.code().name
        def invoke(**kw):
            r = gw.Invoke(gateway_pb2.InvokeRequest(**kw), timeout=30, metadata=token)
            if r.HasField("error"):
                e = r.error
                return {"error": [e.code, e.retryable, e.overloaded, e.remote_type, e.message]}
            return {"result": json.loads(r.result_json)}
        out["inc1"] = invoke(binding="COUNTER", name="gw", method="increment")
        out["inc5"] = invoke(binding="COUNTER", name="gw", method="increment", args_json="[4]")
        out["kw"] = invoke(binding="COUNTER", name="gw", method="increment",
                           kwargs_json='{"by": 2}')
        out["echo"] = invoke(binding="COUNTER", name="gw", method="echo",
                             args_json='[{"a": [1, 2.5, null, true, "x"]}]')
        out["raised"] = invoke(binding="COUNTER", name="gw", method="fail")
        out["nomethod"] = invoke(binding="COUNTER", name="gw", method="nope")
        out["private"] = invoke(binding="COUNTER", name="gw", method="_load")
        out["badjson"] = invoke(binding="COUNTER", name="gw", method="increment", args_json="[1,")
        out["badid"] = invoke(binding="COUNTER", id="zz", method="get")
        out["nobinding"] = invoke(binding="NOPE", name="x", method="get")
        out["room"] = invoke(binding="ROOM", name="x", method="stats")  # not exposed
        out["mro"] = invoke(binding="COUNTER", name="gw", method="mro")
        out["both"] = invoke(binding="COUNTER", name="x", id="ab" * 32, method="get")
        r = gw.Fetch(gateway_pb2.FetchRequest(binding="COUNTER", name="gw", url="/some/path"),
                     metadata=token)
        out["fetch"] = [r.status, json.loads(r.body), r.HasField("error")]
        r = gw.Fetch(gateway_pb2.FetchRequest(
            binding="COUNTER", name="gw", method="POST", url="/p", body=b'{"k": 1}',
            headers=[gateway_pb2.HttpHeader(name="Content-Type", value="application/json")]),
            metadata=token)
        out["post"] = [r.status, json.loads(r.body)]
        r = gw.Fetch(gateway_pb2.FetchRequest(binding="COUNTER", id="00" * 31, url="/"),
                     metadata=token)
        out["fetch_badid"] = [r.error.code, r.status]
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", "duro/v1/gateway.proto"])
    assert rc == 0
    for d in (out / "duro", out / "duro" / "v1"):
        (d / "__init__.py").touch()
    return out


async def test_generated_client_invoke_and_fetch(room_cluster, generated, tmp_path):
    address = room_cluster.edges[0].ready["grpc"]
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    site = sysconfig.get_paths()["purelib"]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{generated}{os.pathsep}{site}",
           "PYTHONNOUSERSITE": "1"}
    # -S: no site.py, so no .pth file (e.g. an editable duro install) can add duro to the path;
    # -I would drop PYTHONPATH, so isolate by hand: cwd is a temp dir, not the repository.
    proc = subprocess.run(
        [sys.executable, "-S", str(script), address, room_cluster.gateway_token], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["no_token"] == "UNAUTHENTICATED"
    assert out["inc1"] == {"result": 1}
    assert out["inc5"] == {"result": 5}
    assert out["kw"] == {"result": 7}
    assert out["echo"] == {"result": {"a": [1, 2.5, None, True, "x"]}}
    code, retryable, overloaded, remote_type, message = out["raised"]["error"]
    assert (code, retryable, overloaded, remote_type) == ("object_error", False, False, "KeyError")
    assert "boom" in message
    assert out["nomethod"]["error"][0] == "method_not_found"
    assert out["private"]["error"][0] == "method_not_found"
    assert out["badjson"]["error"][0] == "invalid_argument"
    assert "args_json" in out["badjson"]["error"][4]
    assert out["badid"]["error"][0] == "invalid_id"
    assert out["nobinding"]["error"][0] == "not_found"
    assert out["room"]["error"][0] == "not_found"  # not exposed: as if it did not exist
    assert out["mro"]["error"][0] == "method_not_found"
    assert out["both"]["error"][0] == "invalid_argument"
    assert out["fetch"] == [200, {"value": 7, "path": "/some/path"}, False]
    assert out["post"] == [200, {"got": {"k": 1}, "path": "/p"}]
    assert out["fetch_badid"] == ["invalid_id", 0]
