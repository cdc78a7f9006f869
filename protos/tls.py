"""The federation's certificates and the gRPC mutual-TLS helpers.

One private CA (``ca.crt``/``ca.key``) signs a server+client certificate for the coordinator and a
client certificate per site whose CN is the site id; the coordinator maps a peer's CN to a registered
site. TLS keys are ECDSA P-256 (supported by every gRPC/BoringSSL build); each issued identity also
gets an Ed25519 keypair that signs its audit log.

Layout of a certificate folder (``autodp certs ...`` writes it)::

    ca.crt  ca.key                                        the CA (ca.key: keep offline)
    coordinator.crt  coordinator.key  coordinator.audit.key  coordinator.audit.pub
    site-<id>.crt    site-<id>.key    site-<id>.audit.key    site-<id>.audit.pub

Private keys are created with mode 0600 at ``open`` time (never widened then narrowed) and an existing
file is never overwritten unless ``force``. Every failure is a one-line :class:`CertificateError`
naming the file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protos.errors import CertificateError
from protos.views import IDENT_PATTERN

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CertPaths",
    "CertificateInfo",
    "channel_credentials",
    "describe_certificate",
    "init_ca",
    "issue_certificate",
    "issue_coordinator",
    "issue_site",
    "load_certificate",
    "load_private_key",
    "peer_common_name",
    "server_credentials",
    "site_prefix",
    "write_ed25519_keypair",
]

CA_CERT, CA_KEY = "ca.crt", "ca.key"
# Tolerates a few minutes of clock skew between the issuer and the peers.
_BACKDATE = dt.timedelta(minutes=5)
_MAX_DAYS = 36_500  # 100 years: past any sensible validity, well inside the dates X.509 can hold
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}")
_TlsKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertPaths:
    """Where one issued identity lives: its certificate, TLS key, the CA, and its audit keypair."""

    cert: Path
    key: Path
    ca: Path
    audit_key: Path
    audit_pub: Path

    @property
    def secrets(self) -> tuple[Path, ...]:
        return (self.key, self.audit_key)


class CertificateInfo(TypedDict):
    path: str
    subject_cn: str | None
    issuer_cn: str | None
    sans: list[str]
    not_before: str
    not_after: str
    expired: bool
    is_ca: bool
    server_auth: bool
    client_auth: bool
    sha256: str


# ---------------------------------------------------------------------------------------- files


def _write_new(path: Path, data: bytes, *, secret: bool, force: bool) -> None:
    if path.exists() or path.is_symlink():
        if not force:
            raise CertificateError(f"{path} already exists (use --force to replace it)")
        # Unlink first so the new file is created with our mode, not the old file's.
        path.unlink()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    except OSError as e:
        raise CertificateError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    # Checked before anything is generated, so a refusal leaves no half-written identity behind.
    if force:
        return
    for p in paths:
        if p.exists():
            raise CertificateError(f"{p} already exists (use --force to replace it)")


def _prepare_dir(cert_dir: Path) -> Path:
    try:
        cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise CertificateError(f"cannot create folder {cert_dir}: {e.strerror}") from None
    return cert_dir


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{what} not found: {path}") from None
    except OSError as e:
        raise CertificateError(f"cannot read {what} {path}: {e.strerror}") from None


def load_certificate(path: Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"not a PEM certificate: {path}") from None


def load_private_key(path: Path) -> PrivateKeyTypes:
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        raise CertificateError(f"not an unencrypted PEM private key: {path}") from None


def _pem_key(key: _TlsKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _check_pair(cert: x509.Certificate, key: object, cert_path: Path, key_path: Path) -> None:
    pub = getattr(key, "public_key", None)
    if pub is None or pub() != cert.public_key():
        raise CertificateError(f"private key {key_path} does not match certificate {cert_path}")


def write_ed25519_keypair(private_path: Path, public_path: Path, *, force: bool = False) -> None:
    """Write a fresh Ed25519 audit-signing keypair (PKCS8 PEM, 0600; SubjectPublicKeyInfo PEM)."""
    _refuse_existing([private_path, public_path], force)
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, _pem_key(key), secret=True, force=force)
    _write_new(public_path, pub, secret=False, force=force)


# ---------------------------------------------------------------------------------------- issuing


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # A CA only signs certificates and CRLs; an ECDSA leaf only signs handshakes.
    no = False
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=no,
        key_encipherment=no,
        data_encipherment=no,
        key_agreement=no,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=no,
        decipher_only=no,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(cert_dir: Path, name: str = "autodp-federation", days: int = 3650, force: bool = False) -> Path:
    """Create the federation CA in ``cert_dir``; returns the path of ``ca.crt``."""
    if not 1 <= days <= _MAX_DAYS:
        raise CertificateError(f"--days must be between 1 and {_MAX_DAYS}")
    if not name.strip():
        raise CertificateError("the CA name must not be empty")
    cert_dir = Path(cert_dir)
    crt_path, key_path = cert_dir / CA_CERT, cert_dir / CA_KEY
    if not force and (crt_path.exists() or key_path.exists()):
        raise CertificateError(
            f"a CA already exists in {cert_dir}"
            " (--force replaces it and invalidates every certificate it issued)"
        )
    _prepare_dir(cert_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now() - _BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        # path_length=0: this CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(key_path, _pem_key(key), secret=True, force=force)
    _write_new(crt_path, cert.public_bytes(serialization.Encoding.PEM), secret=False, force=force)
    return crt_path


def _load_ca(cert_dir: Path) -> tuple[x509.Certificate, _TlsKey]:
    crt_path, key_path = cert_dir / CA_CERT, cert_dir / CA_KEY
    if not crt_path.exists():
        raise CertificateError(f"CA certificate not found: {crt_path} (run `autodp certs init` first)")
    cert, key = load_certificate(crt_path), load_private_key(key_path)
    _check_pair(cert, key, crt_path, key_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"CA key {key_path} is not an ECDSA key")
    if cert.not_valid_after_utc <= _now():
        raise CertificateError(f"CA certificate {crt_path} has expired")
    return cert, key


def _san(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _HOSTNAME.fullmatch(host) or len(host) > 253:
            raise CertificateError(f"not a host name or IP address: {host[:80]!r}")
        names.append(x509.DNSName(host.lower()))
    return names


def issue_certificate(
    cert_dir: Path,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    server: bool,
    client: bool,
    days: int = 825,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    prefix: str,
    force: bool = False,
) -> CertPaths:
    """Issue ``<prefix>.crt``/``.key`` signed by the CA in ``cert_dir``, plus ``<prefix>.audit.key/.pub``.

    ``hosts`` become SANs (IP addresses as IP SANs, the rest as DNS names). The validity ends at the
    CA's own expiry at the latest. ``not_before``/``not_after`` (timezone-aware) override ``days``;
    tests use them to make expired certificates.
    """
    if not (server or client):
        raise CertificateError("a certificate must be for a server, a client or both")
    if not common_name or len(common_name) > 64:
        raise CertificateError("the common name must be 1 to 64 characters")
    if not 1 <= days <= _MAX_DAYS:
        raise CertificateError(f"--days must be between 1 and {_MAX_DAYS}")
    cert_dir = Path(cert_dir)
    paths = CertPaths(
        cert=cert_dir / f"{prefix}.crt",
        key=cert_dir / f"{prefix}.key",
        ca=cert_dir / CA_CERT,
        audit_key=cert_dir / f"{prefix}.audit.key",
        audit_pub=cert_dir / f"{prefix}.audit.pub",
    )
    sans = _san(hosts)
    ca_cert, ca_key = _load_ca(cert_dir)
    _refuse_existing([paths.cert, paths.key, paths.audit_key, paths.audit_pub], force)
    if any(t is not None and t.tzinfo is None for t in (not_before, not_after)):
        raise CertificateError("not_before/not_after must be timezone-aware")
    start = not_before if not_before is not None else _now() - _BACKDATE
    end = not_after if not_after is not None else start + dt.timedelta(days=days)
    end = min(end, ca_cert.not_valid_after_utc)
    if end <= start:
        raise CertificateError("the certificate would end before it starts")

    key = ec.generate_private_key(ec.SECP256R1())
    ekus = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    ekus += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_new(paths.key, _pem_key(key), secret=True, force=force)
    _write_new(paths.cert, cert.public_bytes(serialization.Encoding.PEM), secret=False, force=force)
    write_ed25519_keypair(paths.audit_key, paths.audit_pub, force=force)
    return paths


def issue_coordinator(
    cert_dir: Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    common_name: str = "coordinator",
    days: int = 825,
    *,
    force: bool = False,
) -> CertPaths:
    """The coordinator's certificate: server (sites dial it) and client; files ``coordinator.*``."""
    if not hosts:
        raise CertificateError("the coordinator certificate needs at least one host name or IP address")
    return issue_certificate(
        cert_dir,
        common_name,
        hosts=hosts,
        server=True,
        client=True,
        days=days,
        prefix="coordinator",
        force=force,
    )


def site_prefix(site_id: str) -> str:
    """File prefix of a site's identity (``site-<id>``); validates the id."""
    if not re.fullmatch(IDENT_PATTERN, site_id):
        raise CertificateError(
            f"site id {site_id[:80]!r} is not an identifier: 1-64 of letters, digits, '_', '.', ':', '-',"
            " starting with a letter or digit"
        )
    return f"site-{site_id}"


def issue_site(cert_dir: Path, site_id: str, days: int = 825, *, force: bool = False) -> CertPaths:
    """A site's client certificate with CN = ``site_id``; files ``site-<id>.*``."""
    prefix = site_prefix(site_id)
    return issue_certificate(
        cert_dir, site_id, server=False, client=True, days=days, prefix=prefix, force=force
    )


# ---------------------------------------------------------------------------------------- gRPC


def _load_pair(cert: Path, key: Path, ca: Path) -> tuple[bytes, bytes, bytes]:
    # Checked here so a wrong file gives a one-line error naming it, not an opaque handshake failure.
    crt_obj, key_obj = load_certificate(cert), load_private_key(key)
    _check_pair(crt_obj, key_obj, cert, key)
    load_certificate(ca)
    return _read(cert, "certificate"), _read(key, "private key"), _read(ca, "CA certificate")


def server_credentials(cert: Path, key: Path, ca: Path) -> grpc.ServerCredentials:
    """Server side of mutual TLS: a client must present a certificate signed by ``ca``."""
    crt, k, ca_pem = _load_pair(cert, key, ca)
    return grpc.ssl_server_credentials([(k, crt)], root_certificates=ca_pem, require_client_auth=True)


def channel_credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: trusts only ``ca`` and presents ``cert``."""
    crt, k, ca_pem = _load_pair(cert, key, ca)
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=k, certificate_chain=crt)


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The CN of the verified client certificate, or None (no TLS, or no client certificate)."""
    values = context.auth_context().get("x509_common_name") or []
    if len(values) != 1 or not values[0]:  # gRPC reports a certificate without a CN as one empty CN
        return None
    raw: bytes = values[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def describe_certificate(path: Path) -> CertificateInfo:
    """What a certificate says, for ``autodp certs show`` and for logs (no secret material)."""
    cert = load_certificate(path)

    def cn(name: x509.Name) -> str | None:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else None

    def ext(cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
        try:
            return cert.extensions.get_extension_for_class(cls).value
        except x509.ExtensionNotFound:
            return None

    san, bc, eku = ext(x509.SubjectAlternativeName), ext(x509.BasicConstraints), ext(x509.ExtendedKeyUsage)
    sans: list[str] = []
    if isinstance(san, x509.SubjectAlternativeName):
        sans = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        sans += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    usages = list(eku) if isinstance(eku, x509.ExtendedKeyUsage) else []
    return CertificateInfo(
        path=str(path),
        subject_cn=cn(cert.subject),
        issuer_cn=cn(cert.issuer),
        sans=sans,
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        expired=cert.not_valid_after_utc <= _now(),
        is_ca=isinstance(bc, x509.BasicConstraints) and bc.ca,
        server_auth=ExtendedKeyUsageOID.SERVER_AUTH in usages,
        client_auth=ExtendedKeyUsageOID.CLIENT_AUTH in usages,
        sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    )
