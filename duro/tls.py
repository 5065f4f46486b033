"""Mutual TLS for every internal connection: one place for credentials, identities and checks.

A process of the cluster holds one certificate signed by the cluster CA (``duro certs``,
:mod:`duro._certs`); the certificate names the process in a SAN URI, which the receiving side
reads back as an :class:`Identity`::

    duro://node/<node id>     a host node          duro://placement   a placement replica
    duro://edge/<edge id>     an edge              duro://admin       an operator (duro drain ...)
    duro://client/<name>      an application's client (duro.client.connect)
    duro://etcd               etcd's server certificate

A process says which certificate it holds once, at start (:func:`configure`, from its config's
``tls_ca``/``tls_cert``/``tls_key``); a client process that never calls it takes
``DURO_TLS_CA``/``DURO_TLS_CERT``/``DURO_TLS_KEY`` from its environment, as Docker's client takes
``DOCKER_CERT_PATH``. No certificate at all means plaintext everywhere (``--insecure``).

Every gRPC server of the cluster adds its port with :func:`add_port` (TLS 1.2+, client certificate
required and checked against the CA, so plaintext and foreign-CA callers fail the handshake) and
its per-method rules with :func:`authorizer` (which identities may call what: PERMISSION_DENIED
otherwise). Every channel comes from :func:`channel`, which also checks the *server's* role
through the DNS name its certificate carries (``node.duro.internal``: an edge's certificate cannot
pose as a node). The replication stream, plain TCP, uses :func:`server_ssl_context` /
:func:`client_ssl_context` and :func:`ssl_peer_identity`. See docs/security.md.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import os
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

__all__ = [
    "ROLES", "Identity", "TlsConfig", "TlsMaterial", "TlsSettingsError", "add_port", "authorizer",
    "channel", "check_plaintext", "client_ssl_context", "configure", "configured",
    "etcd_client_args", "reset",
    "from_settings", "peer_identity", "server_name", "server_ssl_context",
    "ssl_peer_identity", "sync_channel",
]

ROLES = ("node", "edge", "placement", "admin", "client", "etcd")
_SCHEME = "duro://"
_DOMAIN = "duro.internal"
ENV_PREFIX = "DURO_TLS_"


class TlsSettingsError(ValueError):
    """TLS settings that cannot work (a missing file, half the settings, a foreign identity)."""


def server_name(role: str) -> str:
    """The DNS name every certificate of a serving ``role`` carries and callers check."""
    return f"{role}.{_DOMAIN}"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who holds a certificate: a role of :data:`ROLES` and, for nodes, edges and clients, an id."""

    role: str
    id: str = ""

    @property
    def uri(self) -> str:
        return f"{_SCHEME}{self.role}/{self.id}" if self.id else f"{_SCHEME}{self.role}"

    @classmethod
    def parse(cls, uri: str) -> Identity | None:
        if not uri.startswith(_SCHEME):
            return None
        role, _, ident = uri[len(_SCHEME):].partition("/")
        return cls(role, ident) if role in ROLES else None

    def __str__(self) -> str:
        return self.uri

    def may_act_as(self, role: str, ident: str) -> bool:
        """True if this certificate's holder may act as ``role``/``ident``: its own id, or an
        instance of it (``<id>.<instance>``: the pods of one Kubernetes Deployment share a
        certificate, each with its own instance suffix; docs/security.md)."""
        return self.role == role and (ident == self.id or ident.startswith(self.id + "."))


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Where a process's CA, certificate and key are (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def load(self) -> TlsMaterial:
        return _load(self.ca, self.cert, self.key)

    def env(self) -> dict[str, str]:
        """The ``DURO_TLS_*`` variables that make a client process use this certificate."""
        return {f"{ENV_PREFIX}CA": str(self.ca), f"{ENV_PREFIX}CERT": str(self.cert),
                f"{ENV_PREFIX}KEY": str(self.key)}


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """A loaded :class:`TlsConfig`: the PEM bytes and the identity the certificate names."""

    config: TlsConfig
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    identity: Identity


def from_settings(ca: Path | str | None, cert: Path | str | None,
                  key: Path | str | None) -> TlsConfig | None:
    """A :class:`TlsConfig` from three settings, all given or none (None: plaintext)."""
    given = {"tls_ca": ca, "tls_cert": cert, "tls_key": key}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise TlsSettingsError(f"TLS needs tls_ca, tls_cert and tls_key together; missing "
                               f"{', '.join(missing)}")
    return TlsConfig(Path(str(ca)), Path(str(cert)), Path(str(key)))


def check_plaintext(listen: Iterable[str], insecure: bool, what: str) -> None:
    """Refuse to serve plaintext beyond loopback unless ``insecure`` says so: a process that
    listens where others can reach it holds a certificate, or is told it may not."""
    if insecure:
        return
    for address in listen:
        if not address:
            continue
        host = address.rpartition(":")[0].strip("[]")
        if host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        raise TlsSettingsError(
            f"{what} would listen on {address} without TLS: give tls_ca, tls_cert and tls_key "
            f"(duro certs; docs/security.md), or --insecure to allow plaintext")


@functools.lru_cache(maxsize=16)
def _load(ca: Path, cert: Path, key: Path) -> TlsMaterial:
    pems = []
    for what, path in (("CA", ca), ("certificate", cert), ("key", key)):
        try:
            pems.append(Path(path).read_bytes())
        except OSError as exc:
            raise TlsSettingsError(f"cannot read the TLS {what} file {path}: {exc}") from None
    try:
        identity = _identity_of_pem(pems[1], pems[0])
    except ValueError as exc:
        raise TlsSettingsError(f"{cert}: {exc}") from None
    if identity is None:
        raise TlsSettingsError(f"{cert}: the certificate names no duro identity (a SAN URI "
                               f"duro://<role>/<id>; make it with `duro certs`)")
    try:  # a key that does not match its certificate fails here, not at the first handshake
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cadata=pems[0].decode())
    except (ssl.SSLError, ValueError) as exc:
        raise TlsSettingsError(f"TLS files {ca}, {cert}, {key} do not fit together: "
                               f"{exc}") from None
    return TlsMaterial(TlsConfig(ca, cert, key), pems[0], pems[1], pems[2], identity)


def _identity_of_pem(pem: bytes, ca_pem: bytes) -> Identity | None:
    """The identity a certificate names; ValueError if it is not a certificate or not issued by
    (one of) the CA certificate(s) in ``ca_pem``."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    cert = x509.load_pem_x509_certificate(pem)
    for ca in x509.load_pem_x509_certificates(ca_pem):
        try:
            cert.verify_directly_issued_by(ca)
            break
        except (ValueError, TypeError, InvalidSignature):
            continue
    else:
        raise ValueError("the certificate is not issued by the CA in tls_ca")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        ident = Identity.parse(uri)
        if ident is not None:
            return ident
    return None


# -- the process's certificate --------------------------------------------------------------------

_UNSET: Any = object()
_process: TlsMaterial | None | Any = _UNSET


def configure(config: TlsConfig | None, *, expect: Identity | None = None) -> TlsMaterial | None:
    """Set this process's certificate (None: plaintext). ``expect`` refuses a certificate that
    names another identity (a node started with another node's certificate)."""
    global _process
    material = config.load() if config is not None else None
    if material is not None and expect is not None and material.identity != expect:
        if not material.identity.may_act_as(expect.role, expect.id):
            raise TlsSettingsError(f"{config.cert if config else ''}: the certificate is "
                                   f"{material.identity}, this process is {expect}")
    _process = material
    return material


def reset() -> None:
    """Forget what :func:`configure` set: the next :func:`configured` reads the environment
    again (tests that run several roles in one process, one after another)."""
    global _process
    _process = _UNSET


def configured(env: Mapping[str, str] | None = None) -> TlsMaterial | None:
    """This process's certificate: what :func:`configure` set, else ``DURO_TLS_*`` from the
    environment (read once), else None (plaintext)."""
    global _process
    if _process is _UNSET:
        env = os.environ if env is None else env
        _process = None
        config = from_settings(env.get(f"{ENV_PREFIX}CA"), env.get(f"{ENV_PREFIX}CERT"),
                               env.get(f"{ENV_PREFIX}KEY"))
        _process = config.load() if config is not None else None
    return _process


def _material(tls: TlsMaterial | None | Any) -> TlsMaterial | None:
    return configured() if tls is _UNSET else tls


# -- gRPC -----------------------------------------------------------------------------------------

def channel(address: str, *, role: str = "node", options: Sequence[tuple[str, Any]] = (),
            tls: TlsMaterial | None | Any = _UNSET) -> aio.Channel:
    """A grpc.aio channel to a server of ``role``: mTLS with this process's certificate (the
    server must hold a certificate of that role), or plaintext when TLS is off."""
    material = _material(tls)
    if material is None:
        return aio.insecure_channel(address, options=list(options))
    return aio.secure_channel(address, _channel_credentials(material),
                              options=[*options, *_name_override(role)])


def sync_channel(address: str, *, role: str = "node", options: Sequence[tuple[str, Any]] = (),
                 tls: TlsMaterial | None | Any = _UNSET) -> grpc.Channel:
    """The blocking form of :func:`channel` (tools and tests)."""
    material = _material(tls)
    if material is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, _channel_credentials(material),
                               options=[*options, *_name_override(role)])


def _name_override(role: str) -> list[tuple[str, str]]:
    return [("grpc.ssl_target_name_override", server_name(role)),
            ("grpc.default_authority", server_name(role))]


@functools.lru_cache(maxsize=16)
def _channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=material.ca_pem,
                                        private_key=material.key_pem,
                                        certificate_chain=material.cert_pem)


def add_port(server: aio.Server, address: str, *,
             tls: TlsMaterial | None | Any = _UNSET) -> int:
    """Bind ``server`` to ``address``: TLS requiring a client certificate of the cluster CA, or
    plaintext when TLS is off. Returns the bound port (0 when binding failed, as gRPC does)."""
    material = _material(tls)
    if material is None:
        return server.add_insecure_port(address)
    creds = grpc.ssl_server_credentials(
        [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem,
        require_client_auth=True)
    return server.add_secure_port(address, creds)


def peer_identity(context: aio.ServicerContext | grpc.ServicerContext) -> Identity | None:
    """The identity in the caller's certificate, or None (plaintext, or a certificate without
    one)."""
    auth = context.auth_context()
    for value in auth.get("x509_subject_alternative_name", ()):
        ident = Identity.parse(value.decode(errors="replace"))
        if ident is not None:
            return ident
    return None


Rule = frozenset[str]


def authorizer(rules: Mapping[str, Iterable[str]], *, default: Iterable[str] = (),
               tls: TlsMaterial | None | Any = _UNSET) -> list[aio.ServerInterceptor]:
    """The interceptors of a server whose methods are allowed per role.

    ``rules`` maps a full method name (``/duro.v1.Migration/Move``) or a service prefix
    (``/duro.v1.Migration/``) to the roles that may call it; the longest match wins and other
    methods take ``default``. A caller whose role is not allowed gets PERMISSION_DENIED before the
    handler runs. Empty (no checks) when TLS is off: then there are no identities to check.
    """
    if _material(tls) is None:
        return []
    table = {prefix: frozenset(roles) for prefix, roles in rules.items()}
    return [_Authorizer(table, frozenset(default))]


class _Authorizer(aio.ServerInterceptor):
    def __init__(self, rules: dict[str, Rule], default: Rule) -> None:
        self._rules = sorted(rules.items(), key=lambda kv: -len(kv[0]))
        self._default = default
        self._cache: dict[str, Rule] = {}

    def _allowed(self, method: str) -> Rule:
        found = self._cache.get(method)
        if found is None:
            found = next((roles for prefix, roles in self._rules if method.startswith(prefix)),
                         self._default)
            self._cache[method] = found
        return found

    async def intercept_service(self, continuation: Callable[..., Any],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return _guarded(handler, self._allowed(details.method), details.method)


def _denied(context: Any, roles: Rule, method: str) -> str | None:
    ident = peer_identity(context)
    if ident is not None and ident.role in roles:
        return None
    who = ident.uri if ident is not None else "a caller without a duro identity"
    return f"{who} may not call {method} (allowed: {', '.join(sorted(roles)) or 'nobody'})"


def _guarded(handler: grpc.RpcMethodHandler, roles: Rule, method: str) -> grpc.RpcMethodHandler:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            break
    else:  # pragma: no cover - gRPC always sets one
        return handler
    if inspect.isasyncgenfunction(behavior):
        async def gen(request: Any, context: Any) -> Any:
            why = _denied(context, roles, method)
            if why is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
            async for item in behavior(request, context):
                yield item
        wrapped: Any = gen
    else:
        async def call(request: Any, context: Any) -> Any:
            why = _denied(context, roles, method)
            if why is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
            return await behavior(request, context)
        wrapped = call
    return handler._replace(**{kind: wrapped})  # type: ignore[attr-defined]


# -- the replication stream (plain TCP + ssl) ----------------------------------------------------

def server_ssl_context(tls: TlsMaterial | None | Any = _UNSET) -> ssl.SSLContext | None:
    """An SSLContext for a TCP listener that requires a client certificate of the cluster CA."""
    material = _material(tls)
    return None if material is None else _ssl_context(material, server=True)


def client_ssl_context(tls: TlsMaterial | None | Any = _UNSET) -> ssl.SSLContext | None:
    """An SSLContext for dialing a TCP listener of the cluster (pass ``server_hostname=``
    :func:`server_name` of the role dialed)."""
    material = _material(tls)
    return None if material is None else _ssl_context(material, server=False)


@functools.lru_cache(maxsize=16)
def _ssl_context(material: TlsMaterial, *, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(material.config.cert), str(material.config.key))
    ctx.load_verify_locations(cadata=material.ca_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED  # (a client context checks the host name as well)
    return ctx


def ssl_peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Identity | None:
    """The identity in the certificate of a TLS peer (None without TLS or identity)."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI":
            ident = Identity.parse(value)
            if ident is not None:
                return ident
    return None


# -- etcd ----------------------------------------------------------------------------------------

def etcd_client_args(tls: TlsMaterial | None | Any = _UNSET) -> dict[str, Any]:
    """Keyword arguments of ``etcd3aio.Etcd3Client`` for this process's certificate: etcd is
    dialed with mTLS (``--client-cert-auth`` on etcd's side), and its certificate must carry the
    DNS name ``etcd.duro.internal`` (``duro certs --etcd-host ...`` puts it there) whatever the
    endpoints are (containers dial etcd by address: deploy/docker/entrypoint.py resolves its
    name); nothing when TLS is off."""
    material = _material(tls)
    if material is None:
        return {}
    return {"ca_cert": material.ca_pem, "cert_key": material.key_pem,
            "cert_chain": material.cert_pem, "tls_server_name": server_name("etcd")}
