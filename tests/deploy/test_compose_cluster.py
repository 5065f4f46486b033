"""docker-compose.yml end to end: build, ``up``, health, calls through the edges, a killed node.

What it does, on a private Compose project (its own name, volumes and free host ports, so it can
run beside a developer's cluster or another run of itself):

1. builds the duro image (with the offline images of ``deploy/build-offline.sh`` when they exist,
   else by running that script), then ``up -d`` and waits until every container is healthy;
2. calls the Counter through each region's HTTP edge (``POST /counter/<name>/increment``) and
   through the edges' gRPC ``Gateway`` with a client generated from ``proto/`` by grpc_tools
   (in a subprocess: generated modules of the same proto package must not meet duro's own),
   with the bearer token the test gives the edges as ``DURO_GATEWAY_TOKENS`` (without it:
   UNAUTHENTICATED);
3. ``docker kill``s the node that owns some objects, sees them unavailable (a retryable error),
   starts it again and sees them back with their state, then writes again;
4. brings up the ``observability`` profile's Prometheus, which scrapes every node, edge and
   placement replica and answers every query of the Grafana dashboard (Grafana itself has no
   image here: docs/observability.md);
5. ``down -v``.

Skipped, with the reason, only when no Docker engine answers; with ``DURO_REQUIRE_DOCKER=1``
(set by ``.ci/run`` after it started dockerd) that is a failure instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ("us-east", "eu-west", "ap-south")
IMAGE = "duro:local"
HEALTH_TIMEOUT = 180.0


def _run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def _docker_engine() -> str | None:
    """None if a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if proc.returncode != 0 or not proc.stdout.strip():
        return "no Docker engine reachable: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


def _compose_command() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _free_port() -> int:
    from duro._etcd import free_port  # outside the ephemeral range: see its docstring

    return free_port()


def _offline_env() -> dict[str, str]:
    path = ROOT / "deploy" / ".offline.env"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


class Cluster:
    def __init__(self, compose: list[str], project: str, env: dict[str, str],
                 services: list[str]) -> None:
        self.compose = compose
        self.project = project
        self.env = env
        self.services = services
        self.http = {r: int(env[f"DURO_HTTP_PORT_{r.upper().replace('-', '_')}"]) for r in REGIONS}
        self.grpc = {r: int(env[f"DURO_GRPC_PORT_{r.upper().replace('-', '_')}"]) for r in REGIONS}

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return _run([*self.compose, "-p", self.project, *args], env=self.env, timeout=timeout,
                    check=check).stdout

    def container(self, service: str) -> str:
        ids = self.run("ps", "-q", service).split()
        assert ids, f"no container for {service}"
        return ids[0]

    def health(self, services: list[str] | None = None) -> dict[str, str]:
        out = {}
        for service in services or self.services:
            ids = self.run("ps", "-q", service).split()
            if not ids:
                out[service] = "missing"
                continue
            state = json.loads(_run(["docker", "inspect", "--format", "{{json .State}}",
                                     ids[0]]).stdout)
            health = (state.get("Health") or {}).get("Status", "none")
            out[service] = health if state.get("Running") else state.get("Status", "?")
        return out

    def wait_healthy(self, services: list[str] | None = None,
                     timeout: float = HEALTH_TIMEOUT) -> float:
        t0 = time.monotonic()
        services = services or self.services
        while True:
            health = self.health(services)
            if all(health.get(s) == "healthy" for s in services):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"not healthy after {timeout:.0f} s: {health}\n"
                                     + self.logs())
            time.sleep(0.25)

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "40", check=False, timeout=60)[-12000:]

    # -- calls ----------------------------------------------------------------------------------
    def counter(self, region: str, name: str, method: str) -> tuple[bool, Any]:
        """(True, value) or (False, error): COUNTER ``name``.``method`` from ``region``, through
        that region's HTTP edge."""
        status, body = self.http_call(region, f"/counter/{name}/{method}",
                                      "POST" if method == "increment" else "GET")
        if status == 200:
            return True, body["value"]
        return False, body["error"] if isinstance(body, dict) and "error" in body else body

    def http_call(self, region: str, path: str, method: str = "POST") -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.http[region]}{path}"
        req = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body)
            except ValueError:
                return exc.code, body.decode(errors="replace")


@pytest.fixture(scope="module")
def cluster(timings: dict[str, Any]) -> Iterator[Cluster]:
    why = _docker_engine()
    if why is not None:
        if os.environ.get("DURO_REQUIRE_DOCKER") == "1":
            pytest.fail(f"DURO_REQUIRE_DOCKER=1 but {why}")
        pytest.skip(f"docker compose suite skipped: {why}")
    compose = _compose_command()
    if compose is None:
        pytest.fail("a Docker engine answers but neither 'docker compose' nor docker-compose "
                    "is installed")

    env = {**os.environ}
    env.update(_offline_env())
    # Build: the offline images when build-offline.sh made them (CI), else let it make them.
    t0 = time.monotonic()
    if env.get("DURO_BASE_IMAGE") and _run(["docker", "image", "inspect", env["DURO_BASE_IMAGE"]],
                                           check=False).returncode == 0:
        # One service builds the image every duro service runs.
        _run([*compose, "build", "placement-1"], env=env, timeout=900)
    else:
        _run(["bash", "deploy/build-offline.sh"], env=env, timeout=900)
        env.update(_offline_env())
    timings["image build (cached layers reused)"] = f"{time.monotonic() - t0:.1f} s"
    size = int(_run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout)
    timings["image size"] = f"{size / 1e6:.0f} MB ({IMAGE})"

    project = f"durotest{os.getpid()}"
    # The edges' Gateway token (docker-compose.yml: DURO_GATEWAY_TOKENS -> the edges' env).
    from duro.edge.tokens import new_token

    env["DURO_GATEWAY_TOKENS"] = new_token()
    for region in REGIONS:
        key = region.upper().replace("-", "_")
        env[f"DURO_HTTP_PORT_{key}"] = str(_free_port())
        env[f"DURO_GRPC_PORT_{key}"] = str(_free_port())
    env["DURO_PROMETHEUS_PORT"] = str(_free_port())  # the observability profile's
    services = ["etcd", "placement-1", "placement-2", *(f"node-{r}" for r in REGIONS),
                *(f"edge-{r}" for r in REGIONS)]
    c = Cluster(compose, project, env, services)
    try:
        t0 = time.monotonic()
        c.run("up", "-d", *services, timeout=600)
        up = time.monotonic() - t0
        c.wait_healthy()
        timings["compose up to all healthy"] = (f"{time.monotonic() - t0:.1f} s "
                                               f"({len(services)} containers; up -d returned "
                                               f"after {up:.1f} s)")
        yield c
    finally:
        c.run("--profile", "observability", "down", "-v", "--remove-orphans", "-t", "5",
              check=False, timeout=300)
        left = _run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                    check=False).stdout.split()
        assert not left, f"volumes left behind by down -v: {left}"


def test_image_is_small_and_runs_as_non_root(cluster: Cluster) -> None:
    size = int(_run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout)
    assert size < 200e6, f"image is {size / 1e6:.0f} MB"
    uid = _run(["docker", "exec", cluster.container("node-us-east"), "python", "-c",
                "import os; print(os.getuid())"]).stdout.strip()
    assert uid != "0"
    # No build tools or wheelhouse in the final image.
    out = _run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", IMAGE,
                "-c", "import importlib.util as u, os; print(u.find_spec('pip'), "
                "os.path.exists('/wheelhouse'), os.path.exists('/src'))"]).stdout.split()
    assert out == ["None", "False", "False"], out


def test_counter_via_http_edges(cluster: Cluster) -> None:
    name = f"http-{os.getpid()}"
    values = []
    for region in REGIONS:  # one object, reached through every region's edge
        status, body = cluster.http_call(region, f"/counter/{name}/increment")
        assert status == 200, body
        values.append(body["value"])
    assert values == [1, 2, 3]
    status, body = cluster.http_call("ap-south", f"/counter/{name}/get", method="GET")
    assert (status, body) == (200, {"value": 3})


GRPC_CLIENT = textwrap.dedent('''
    """A Gateway client generated from proto/duro/v1/gateway.proto (imports nothing of duro)."""
    import json, sys
    import grpc
    import gateway_pb2, gateway_pb2_grpc

    port, name, token = sys.argv[1], sys.argv[2], sys.argv[3]
    auth = [("authorization", f"Bearer {token}")]  # DURO_GATEWAY_TOKENS (docs/security.md)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        out = []
        try:  # without the token: refused
            stub.Invoke(gateway_pb2.InvokeRequest(binding="COUNTER", name=name, method="get"),
                        timeout=30)
            out.append("no token: accepted")
        except grpc.RpcError as exc:
            out.append(exc.code().name)
        for by in (2, 3):
            r = stub.Invoke(gateway_pb2.InvokeRequest(
                binding="COUNTER", name=name, method="increment", args_json=json.dumps([by])),
                timeout=30, metadata=auth)
            out.append(json.loads(r.result_json) if r.WhichOneof("outcome") == "result_json"
                       else {"error": r.error.code})
        r = stub.Invoke(gateway_pb2.InvokeRequest(binding="COUNTER", name=name, method="nope"),
                        timeout=30, metadata=auth)
        out.append(r.error.code)
        f = stub.Fetch(gateway_pb2.FetchRequest(binding="COUNTER", name=name, method="GET",
                                                url="/get"), timeout=30, metadata=auth)
        out.append([f.status, json.loads(f.body)])
    print(json.dumps(out))
''')


def test_counter_via_generated_grpc_gateway_client(cluster: Cluster, tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a test extra) generates the client")
    proto = ROOT / "proto" / "duro" / "v1" / "gateway.proto"
    shutil.copy(proto, tmp_path / "gateway.proto")
    _run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
          f"--grpc_python_out={tmp_path}", "gateway.proto"])
    (tmp_path / "client.py").write_text(GRPC_CLIENT)
    name = f"grpc-{os.getpid()}"
    token = cluster.env["DURO_GATEWAY_TOKENS"]
    proc = subprocess.run([sys.executable, str(tmp_path / "client.py"),
                           str(cluster.grpc["eu-west"]), name, token],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["UNAUTHENTICATED", 2, 5, "method_not_found",
                                       [200, {"value": 5}]]
    # The same object over HTTP, through another region's edge.
    assert cluster.http_call("us-east", f"/counter/{name}/get", "GET") == (200, {"value": 5})


def test_killed_node_fails_over_and_comes_back(cluster: Cluster, timings: dict[str, Any]) -> None:
    """Replicated by default (three copies, one per region here): a killed node's objects are
    served by another copy within seconds, with their state; when it is back it serves them
    again (docs/replication.md)."""
    # Objects created through an edge are placed in the edge's region: one per region.
    names = {r: f"kill-{r}-{os.getpid()}" for r in REGIONS}
    for region, name in names.items():
        for i in range(3):
            assert cluster.counter(region, name, "increment") == (True, i + 1)

    def where(name: str) -> dict[str, Any]:
        return json.loads(cluster.run(
            "exec", "-T", "node-us-east", "duro-entrypoint", "duro", "where", "COUNTER", name,
            "--etcd", "etcd:2379", "--cluster", "duro"))

    before = where(names["eu-west"])
    assert before["node"] == "node-eu-west", before
    assert len([m for m in before["group"]["replicas"] if m["in_sync"]]) == 3, before

    victim = cluster.container("node-eu-west")
    _run(["docker", "kill", victim])  # SIGKILL: no clean shutdown
    t0 = time.monotonic()
    deadline = t0 + 60
    while True:  # the edge's router waits through the failover
        ok, value = cluster.counter("eu-west", names["eu-west"], "get")
        if ok:
            break
        assert error_retryable(value), value
        assert time.monotonic() < deadline, (value, cluster.logs())
        time.sleep(0.25)
    timings["killed node's objects served again (failover)"] = f"{time.monotonic() - t0:.1f} s"
    assert value == 3  # every acknowledged write, from another copy
    assert where(names["eu-west"])["node"] != "node-eu-west"
    assert cluster.counter("eu-west", names["eu-west"], "increment") == (True, 4)
    for region in ("us-east", "ap-south"):
        assert cluster.counter(region, names[region], "get") == (True, 3)

    t0 = time.monotonic()
    cluster.run("start", "node-eu-west")
    cluster.wait_healthy(["node-eu-west"], timeout=60)
    deadline = t0 + 90
    while where(names["eu-west"])["node"] != "node-eu-west":  # caught up, handed back
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.5)
    timings["restarted node serving its objects again"] = f"{time.monotonic() - t0:.1f} s"
    assert cluster.counter("eu-west", names["eu-west"], "get") == (True, 4)


def error_retryable(error: Any) -> bool:
    return isinstance(error, dict) and bool(error.get("retryable"))


NO_CERT_CLIENT = textwrap.dedent('''
    """Run on the compose network: call node-us-east as a stranger would (docs/security.md)."""
    import json, socket, ssl, tempfile
    from pathlib import Path
    import grpc
    from duro._certs import ensure_ca, issue
    from duro._pb import migration_pb2, migration_pb2_grpc, node_pb2, node_pb2_grpc

    def grpc_calls(channel):
        out = {}
        with channel as ch:
            for name, call in (
                ("health", lambda: node_pb2_grpc.NodeStub(ch).Health(
                    node_pb2.HealthRequest(), timeout=10)),
                ("drain", lambda: migration_pb2_grpc.MigrationStub(ch).SetDraining(
                    migration_pb2.DrainingRequest(draining=False), timeout=10))):
                try:
                    call()
                    out[name] = "OK"
                except grpc.RpcError as exc:
                    out[name] = exc.code().name
        return out

    def handshake(port, cert):
        """TLS to node-us-east:port with this client certificate, not checking the server's
        (a stranger does not care): does the node finish the handshake and keep talking?"""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
        if port == 7100:
            ctx.set_alpn_protocols(["h2"])  # gRPC's servers close connections without it
        try:
            with socket.create_connection(("node-us-east", port), 10) as raw:
                with ctx.wrap_socket(raw) as s:
                    s.settimeout(3)
                    s.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" if port == 7100
                              else b"\\0\\0\\0\\1\\1")
                    # The server's refusal arrives here (TLS 1.3): an alert, or a close.
                    return "accepted" if s.recv(1) else "refused"
        except socket.timeout:
            return "accepted"  # still connected: it is waiting for more
        except (ssl.SSLError, OSError):
            return "refused"

    result = {"plaintext": grpc_calls(grpc.insecure_channel("node-us-east:7100"))}
    other = Path(tempfile.mkdtemp())
    ensure_ca(other)  # a CA of its own: a certificate naming the admin, signed by a stranger
    forged = issue(other, "admin")
    result["other CA"] = {"grpc": handshake(7100, forged), "replication": handshake(7101, forged)}
    admin = Path("/certs/admin.pem")
    if admin.exists():  # the cluster's admin certificate, when mounted
        from duro import tls
        cert = tls.TlsConfig(Path("/certs/ca.pem"), admin, Path("/certs/admin-key.pem"))
        result["admin"] = {**grpc_calls(tls.sync_channel("node-us-east:7100", tls=cert.load())),
                           "grpc": handshake(7100, cert)}
    print(json.dumps(result))
''')


def test_a_container_without_a_certificate_cannot_call_a_node(cluster: Cluster) -> None:
    """mTLS in compose: a container on the cluster's network, with the duro image but without
    a certificate of the cluster CA, cannot call a node (not even an object, let alone drain it);
    with the admin certificate mounted, the same script can."""
    node = cluster.container("node-us-east")
    network = _run(["docker", "inspect", "--format",
                    "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", node]
                   ).stdout.split()[0]
    base = ["docker", "run", "--rm", "--network", network, "--entrypoint", "/opt/duro/bin/python"]
    stranger = _run([*base, IMAGE, "-c", NO_CERT_CLIENT], timeout=120)
    assert json.loads(stranger.stdout) == {
        "plaintext": {"health": "UNAVAILABLE", "drain": "UNAVAILABLE"},
        "other CA": {"grpc": "refused", "replication": "refused"},
    }, stranger.stderr
    admin = _run([*base, "-v", f"{cluster.project}_duro-certs:/certs:ro", IMAGE, "-c",
                  NO_CERT_CLIENT], timeout=120)
    assert json.loads(admin.stdout)["admin"] == {"health": "OK", "drain": "OK",
                                                 "grpc": "accepted"}, admin.stderr


def _prometheus(cluster: Cluster, query: str) -> dict[str, Any]:
    url = (f"http://127.0.0.1:{cluster.env['DURO_PROMETHEUS_PORT']}/api/v1/query?"
           + urllib.parse.urlencode({"query": query}))
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # a bad query: 400 with Prometheus' reason
        return json.loads(exc.read())


def test_observability_profile_scrapes_every_process(cluster: Cluster,
                                                     timings: dict[str, Any]) -> None:
    image = cluster.env.get("DURO_PROMETHEUS_IMAGE", "duro/prometheus:local")
    if _run(["docker", "image", "inspect", image], check=False).returncode != 0:
        if os.environ.get("DURO_REQUIRE_DOCKER") == "1":
            pytest.fail(f"no Prometheus image {image}: deploy/build-offline.sh builds it from "
                        "Debian's prometheus package (apt-get install prometheus)")
        pytest.skip(f"no Prometheus image {image} (deploy/build-offline.sh makes it)")
    t0 = time.monotonic()
    cluster.run("--profile", "observability", "up", "-d", "--no-deps", "prometheus")
    cluster.wait_healthy(["prometheus"], timeout=120)
    timings["observability profile: prometheus healthy"] = f"{time.monotonic() - t0:.1f} s"
    for region in REGIONS:  # traffic, so that the per-status and per-binding series exist
        assert cluster.counter(region, f"prom-{os.getpid()}", "increment")[0]
    jobs = {"duro-nodes": 3, "duro-edges": 3, "duro-placement": 2}
    deadline = time.monotonic() + 90
    while True:  # every target scraped and up
        up = _prometheus(cluster, "up")["data"]["result"]
        seen = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in up}
        if all(sum(1 for (job, _), v in seen.items() if j == job and v == "1") == n
               for j, n in jobs.items()):
            break
        assert time.monotonic() < deadline, f"targets not all up: {seen}"
        time.sleep(1)
    timings["observability profile: every target up"] = f"{time.monotonic() - t0:.1f} s"
    deadline = time.monotonic() + 60
    while True:  # the increments above, scraped
        r = _prometheus(cluster, 'sum(duro_runtime_binding_calls_total{binding="COUNTER"})')
        if r["data"]["result"] and float(r["data"]["result"][0]["value"][1]) >= 3:
            break
        assert time.monotonic() < deadline, r
        time.sleep(1)
    # Every query of the Grafana dashboard is one this Prometheus evaluates.
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "duro.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            r = _prometheus(cluster, target["expr"].replace("$region", ".*"))
            assert r["status"] == "success", (panel["title"], target["expr"], r)
