"""duro.tls and duro certs without a cluster: identities, settings, certificates that do not fit,
and the per-method rules through a real in-process gRPC server on a TLS port."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import grpc
import pytest
from grpc import aio

from duro import tls
from duro._certs import ensure_ca, issue
from duro._pb import node_pb2, node_pb2_grpc
from duro.cli import main as cli_main
from duro.node.config import NodeConfig
from duro.placement.config import PlacementConfig

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    ensure_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_identity_round_trip() -> None:
    for uri, ident in [("duro://node/us-east-0", tls.Identity("node", "us-east-0")),
                       ("duro://placement", tls.Identity("placement")),
                       ("duro://client/web", tls.Identity("client", "web"))]:
        assert tls.Identity.parse(uri) == ident and ident.uri == uri
    assert tls.Identity.parse("spiffe://x/y") is None
    assert tls.Identity.parse("duro://root/x") is None  # not a role


def test_an_edge_certificate_covers_its_instances_only() -> None:
    edge = tls.Identity("edge", "duro-edge")
    assert edge.may_act_as("edge", "duro-edge")
    assert edge.may_act_as("edge", "duro-edge.pod-7f9c")  # a Deployment's pod
    assert not edge.may_act_as("edge", "duro-edge-us")  # another edge, not an instance
    assert not edge.may_act_as("edge", "other")
    assert not edge.may_act_as("node", "duro-edge")


def test_certificates_name_their_holder(ca: Path) -> None:
    for role, ident in [("node", "n1"), ("edge", "e1"), ("placement", ""), ("admin", ""),
                        ("client", "web"), ("etcd", "")]:
        assert issue(ca, role, ident).load().identity == tls.Identity(role, ident)
    with pytest.raises(ValueError, match="needs an id"):
        issue(ca, "node")
    with pytest.raises(ValueError, match="unknown role"):
        issue(ca, "root")
    with pytest.raises(ValueError, match="no '/'"):
        issue(ca, "node", "a/b")


def test_private_keys_are_not_world_readable(ca: Path) -> None:
    c = issue(ca, "node", "n1")
    assert (c.key.stat().st_mode & 0o077) == 0
    assert ((ca / "ca-key.pem").stat().st_mode & 0o077) == 0


def test_settings_all_or_none(tmp_path: Path) -> None:
    assert tls.from_settings(None, "", None) is None
    with pytest.raises(tls.TlsSettingsError, match="missing tls_key"):
        tls.from_settings(tmp_path / "ca.pem", tmp_path / "c.pem", None)


def test_files_that_do_not_fit_are_refused_at_start(ca: Path, tmp_path: Path) -> None:
    a, b = issue(ca, "node", "a"), issue(ca, "node", "b")
    with pytest.raises(tls.TlsSettingsError, match="cannot read"):
        tls.TlsConfig(ca / "ca.pem", tmp_path / "missing.pem", a.key).load()
    with pytest.raises(tls.TlsSettingsError, match="do not fit"):
        tls.TlsConfig(a.ca, a.cert, b.key).load()  # another certificate's key
    with pytest.raises(tls.TlsSettingsError, match="this process is duro://node/b"):
        tls.configure(a, expect=tls.Identity("node", "b"))
    ensure_ca(tmp_path / "other")
    with pytest.raises(tls.TlsSettingsError, match="not issued by the CA"):
        tls.TlsConfig(tmp_path / "other" / "ca.pem", a.cert, a.key).load()
    with pytest.raises(tls.TlsSettingsError):
        tls.TlsConfig(a.ca, a.key, a.key).load()  # a key where the certificate should be


def test_plaintext_only_on_loopback_unless_insecure() -> None:
    NodeConfig(listen="127.0.0.1:0")
    NodeConfig(listen="localhost:7100")
    with pytest.raises(tls.TlsSettingsError, match="without TLS"):
        NodeConfig(listen="0.0.0.0:7100")
    with pytest.raises(tls.TlsSettingsError, match="without TLS"):
        NodeConfig(listen="127.0.0.1:0", replication_listen="0.0.0.0:7101")
    NodeConfig(listen="0.0.0.0:7100", insecure=True)
    with pytest.raises(ValueError, match="without TLS"):
        PlacementConfig.load(["--listen", "0.0.0.0:7000"], env={})
    assert PlacementConfig.load(["--listen", "0.0.0.0:7000", "--insecure"], env={}).insecure


def test_duro_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "certs"
    assert cli_main(["certs", "--dir", str(d), "--node", "n1", "--edge", "e1", "--placement",
                     "--admin", "--client", "web", "--etcd-host", "etcd"]) == 0
    for stem in ("ca", "node-n1", "edge-e1", "placement", "admin", "client-web", "etcd"):
        assert (d / f"{stem}.pem").exists()
    first = (d / "node-n1.pem").read_bytes()
    assert cli_main(["certs", "--dir", str(d), "--node", "n1"]) == 0  # kept
    assert (d / "node-n1.pem").read_bytes() == first
    assert cli_main(["certs", "--dir", str(d), "--node", "n1", "--force"]) == 0  # re-issued
    assert (d / "node-n1.pem").read_bytes() != first
    assert "created the cluster CA" in capsys.readouterr().out


class _Health(node_pb2_grpc.NodeServicer):
    async def Health(self, request, context):  # noqa: N802, ANN001
        return node_pb2.HealthResponse(node_id=str(tls.peer_identity(context)))


async def test_rules_by_role_on_a_real_tls_port(ca: Path, tmp_path: Path) -> None:
    """The authorizer lets an allowed role through and answers PERMISSION_DENIED to another
    role; a plaintext caller, a caller of another CA and a server of the wrong role never get
    past the handshake."""
    node = issue(ca, "node", "n1").load()
    server = aio.server(interceptors=tls.authorizer({"/duro.v1.Node/": ("edge",)}, tls=node))
    node_pb2_grpc.add_NodeServicer_to_server(_Health(), server)
    port = tls.add_port(server, "127.0.0.1:0", tls=node)
    await server.start()
    address = f"127.0.0.1:{port}"
    ensure_ca(tmp_path / "other")
    # A certificate of another CA, held by a caller that trusts ours: the server refuses it.
    foreign = dataclasses.replace(issue(tmp_path / "other", "edge", "e1").load(),
                                  ca_pem=node.ca_pem)

    async def health(**kw):  # noqa: ANN003, ANN202
        async with tls.channel(address, **kw) as ch:
            return await node_pb2_grpc.NodeStub(ch).Health(node_pb2.HealthRequest(), timeout=5)

    try:
        assert (await health(tls=issue(ca, "edge", "e1").load())).node_id == "duro://edge/e1"
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await health(tls=issue(ca, "client", "web").load())
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "duro://client/web may not call /duro.v1.Node/Health" in denied.value.details()
        for kw in ({"tls": None}, {"tls": foreign},
                   {"tls": issue(ca, "edge", "e1").load(), "role": "placement"}):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health(**kw)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, kw
    finally:
        await server.stop(0)


async def test_ssl_contexts_check_both_sides(ca: Path, tmp_path: Path) -> None:
    """The replication stream's contexts: the server requires a client certificate of the CA and
    sees its identity; a client without one is refused in the handshake."""
    node = issue(ca, "node", "n1").load()
    seen: list[tls.Identity | None] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(tls.ssl_peer_identity(writer.get_extra_info("ssl_object")))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=tls.server_ssl_context(node))
    port = srv.sockets[0].getsockname()[1]
    try:
        peer = issue(ca, "node", "n2").load()
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls.client_ssl_context(peer),
                                             server_hostname=tls.server_name("node"))
        assert await r.read() == b"ok"
        w.close()
        assert seen == [tls.Identity("node", "n2")]
        bare = ssl.create_default_context(cafile=str(node.config.ca))  # no client certificate
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=bare,
                                                 server_hostname=tls.server_name("node"))
            await r.readexactly(2)
    finally:
        srv.close()
        await srv.wait_closed()
