"""Issuing the cluster's certificates (``duro certs``, ``duro dev``), with ``cryptography``.

A certificates directory holds one CA and one certificate per process, as PEM files::

    ca.pem  ca-key.pem                     the cluster CA (keep ca-key.pem off the hosts)
    node-us-east-0.pem  node-us-east-0-key.pem
    edge-edge-us-east.pem  ...-key.pem
    placement.pem  placement-key.pem
    admin.pem  admin-key.pem
    client-<name>.pem  ...-key.pem
    etcd.pem  etcd-key.pem                  etcd's server certificate

Every certificate names its holder in a SAN URI (:mod:`duro.tls` reads it back):
``duro://node/<id>``, ``duro://edge/<id>``, ``duro://placement``, ``duro://admin``,
``duro://client/<name>``, ``duro://etcd``. With ``ca_dir`` apart (``duro certs --ca-dir``) the CA's
files stay there and only ``ca.pem`` is copied here. Server roles also carry the DNS name callers check (``node.duro.internal`` ...,
:func:`duro.tls.server_name`), so an edge's certificate cannot serve as a node. Keys are ECDSA
P-256: a handshake costs a fraction of an RSA-2048 one.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from duro.tls import ROLES, TlsConfig, server_name

__all__ = ["ensure_ca", "issue", "cert_name", "CA_FILE", "CA_KEY_FILE"]

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
_SERVER_ROLES = ("node", "edge", "placement", "etcd")


def cert_name(role: str, ident: str = "") -> str:
    """File stem of a certificate: ``node-us-east-0``, ``placement``, ``client-web``."""
    return f"{role}-{ident}" if ident else role


def ensure_ca(directory: Path, *, days: int = 3650, common_name: str = "duro cluster CA") -> bool:
    """Create the CA in ``directory`` unless it is there; True if it was created."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        return False
    if cert_path.exists() or key_path.exists():
        raise FileExistsError(f"{directory}: one of {CA_FILE}, {CA_KEY_FILE} is missing; "
                              "remove the other or restore it")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def issue(
    directory: Path,
    role: str,
    ident: str = "",
    *,
    hosts: tuple[str, ...] = (),
    days: int = 825,
    overwrite: bool = False,
    ca_dir: Path | None = None,
) -> TlsConfig:
    """Issue (or keep, unless ``overwrite``) the certificate of ``role``/``ident`` signed by the CA
    in ``ca_dir`` (default: ``directory`` itself; else its ``ca.pem`` is copied to ``directory``,
    so that the CA's key stays out of the directory processes mount); ``hosts`` adds DNS names or
    IP addresses (etcd's, a public name). Returns the :class:`~duro.tls.TlsConfig` a process loads
    it with."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if role in ("node", "edge", "client") and not ident:
        raise ValueError(f"a {role} certificate needs an id (duro certs {role} <id>)")
    if role in ("placement", "admin", "etcd") and ident:
        raise ValueError(f"a {role} certificate has no id")
    if ident and ("/" in ident or not ident.strip()):
        raise ValueError(f"bad id {ident!r}: no '/' and not empty")
    stem = cert_name(role, ident)
    ca_dir = directory if ca_dir is None else ca_dir
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem = (ca_dir / CA_FILE).read_bytes()
    if ca_dir != directory and (not (directory / CA_FILE).exists()
                                or (directory / CA_FILE).read_bytes() != ca_pem):
        (directory / CA_FILE).write_bytes(ca_pem)
    config = TlsConfig(ca=directory / CA_FILE, cert=directory / f"{stem}.pem",
                       key=directory / f"{stem}-key.pem")
    if config.cert.exists() and config.key.exists() and not overwrite:
        return config
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY_FILE).read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_FILE).read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    uri = f"duro://{role}/{ident}" if ident else f"duro://{role}"
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    if role in _SERVER_ROLES:
        sans.append(x509.DNSName(server_name(role)))
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role in _SERVER_ROLES:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
            content_commitment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(config.key, key)
    config.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return config


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key readable by its owner only (created 0600, never world-readable)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
