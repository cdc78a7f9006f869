"""Certificates on disk, and a real mutual-TLS handshake on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from protos.errors import CertificateError
from protos.tls import (
    CertPaths,
    channel_credentials,
    describe_certificate,
    init_ca,
    issue_certificate,
    issue_coordinator,
    issue_site,
    peer_common_name,
    server_credentials,
)

_METHOD = "/autodp.test.Probe/WhoAmI"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertPaths]:
    good, other = tmp_path_factory.mktemp("certs"), tmp_path_factory.mktemp("other-ca")
    init_ca(good)
    init_ca(other, name="someone-else")
    now = dt.datetime.now(dt.UTC)
    return {
        "coordinator": issue_coordinator(good),
        "site": issue_site(good, "hospital-a"),
        "foreign": issue_site(other, "hospital-a"),
        "expired": issue_certificate(
            good, "hospital-old", server=False, client=True, prefix="site-hospital-old",
            not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1),
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def port(pki: dict[str, CertPaths]) -> Iterator[int]:
    def who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
        return (peer_common_name(context) or "<none>").encode()

    handler = grpc.method_handlers_generic_handler(
        "autodp.test.Probe", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    c = pki["coordinator"]
    bound = server.add_secure_port("127.0.0.1:0", server_credentials(c.cert, c.key, c.ca))
    server.start()
    yield bound
    server.stop(None)


def _call(port: int, creds: grpc.ChannelCredentials, target_name: str | None = None) -> bytes:
    options = [("grpc.ssl_target_name_override", target_name)] if target_name else []
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        reply: bytes = channel.unary_unary(_METHOD)(b"", timeout=5)
        return reply


# ---------------------------------------------------------------------------------------- files


def test_files_and_modes(pki: dict[str, CertPaths]) -> None:
    for paths in (pki["coordinator"], pki["site"]):
        for secret in (paths.key, paths.audit_key):
            assert _mode(secret) == 0o600, secret
        assert paths.cert.exists() and paths.audit_pub.exists() and paths.ca.exists()
    ca_dir = pki["site"].ca.parent
    assert _mode(ca_dir / "ca.key") == 0o600
    assert pki["site"].cert.name == "site-hospital-a.crt"
    assert pki["site"].audit_key.name == "site-hospital-a.audit.key"


def test_audit_keypair_is_ed25519_and_matches(pki: dict[str, CertPaths]) -> None:
    paths = pki["site"]
    key = serialization.load_pem_private_key(paths.audit_key.read_bytes(), password=None)
    pub = serialization.load_pem_public_key(paths.audit_pub.read_bytes())
    assert isinstance(key, ed25519.Ed25519PrivateKey) and isinstance(pub, ed25519.Ed25519PublicKey)
    pub.verify(key.sign(b"chain head"), b"chain head")


def test_coordinator_sans_and_usages(pki: dict[str, CertPaths]) -> None:
    info = describe_certificate(pki["coordinator"].cert)
    assert info["subject_cn"] == "coordinator" and info["issuer_cn"] == "autodp-federation"
    assert info["sans"] == ["DNS:localhost", "IP:127.0.0.1"]
    assert info["server_auth"] and info["client_auth"] and not info["is_ca"] and not info["expired"]
    cert = x509.load_pem_x509_certificate(pki["coordinator"].cert.read_bytes())
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in ips.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_site_cert_is_client_only(pki: dict[str, CertPaths]) -> None:
    info = describe_certificate(pki["site"].cert)
    assert info["subject_cn"] == "hospital-a" and info["sans"] == []
    assert info["client_auth"] and not info["server_auth"]
    assert describe_certificate(pki["expired"].cert)["expired"]


def test_ca_extensions(pki: dict[str, CertPaths]) -> None:
    ca = x509.load_pem_x509_certificate(pki["site"].ca.read_bytes())
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    ca.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


def test_refuses_overwrite_unless_forced(tmp_path: Path) -> None:
    init_ca(tmp_path)
    with pytest.raises(CertificateError, match="already exists"):
        init_ca(tmp_path)
    first = issue_site(tmp_path, "site-1")
    old_key = first.key.read_bytes()
    with pytest.raises(CertificateError, match="already exists"):
        issue_site(tmp_path, "site-1")
    assert first.key.read_bytes() == old_key
    again = issue_site(tmp_path, "site-1", force=True)
    assert again.key.read_bytes() != old_key and _mode(again.key) == 0o600


@pytest.mark.parametrize("bad", ["", "bad/id", "../escape", "-leading", "x" * 65, "spa ce"])
def test_bad_site_id_refused(tmp_path: Path, bad: str) -> None:
    init_ca(tmp_path)
    with pytest.raises(CertificateError, match="site id"):
        issue_site(tmp_path, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


def test_one_line_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="run `autodp certs init`"):
        issue_site(tmp_path, "site-1")
    with pytest.raises(CertificateError, match="not found: .*nope.crt"):
        describe_certificate(tmp_path / "nope.crt")
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(CertificateError, match="not a PEM certificate: .*junk.crt"):
        describe_certificate(tmp_path / "junk.crt")
    with pytest.raises(CertificateError, match="not a host name"):
        issue_coordinator(tmp_path, hosts=["bad host"])


def test_mismatched_key_refused(pki: dict[str, CertPaths]) -> None:
    c, s = pki["coordinator"], pki["site"]
    with pytest.raises(CertificateError, match="does not match"):
        server_credentials(c.cert, s.key, c.ca)
    with pytest.raises(CertificateError, match="does not match"):
        channel_credentials(s.ca, s.cert, c.key)


# ---------------------------------------------------------------------------------------- mTLS


def test_site_from_same_ca_is_accepted_and_named(pki: dict[str, CertPaths], port: int) -> None:
    s = pki["site"]
    assert _call(port, channel_credentials(s.ca, s.cert, s.key)) == b"hospital-a"


def test_client_without_certificate_fails(pki: dict[str, CertPaths], port: int) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki["site"].ca.read_bytes())
    with pytest.raises(grpc.RpcError) as e:
        _call(port, creds)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE


def test_client_from_other_ca_fails(pki: dict[str, CertPaths], port: int) -> None:
    f = pki["foreign"]
    # Trusts the right server CA, but presents a certificate the server's CA never signed.
    with pytest.raises(grpc.RpcError) as e:
        _call(port, channel_credentials(pki["site"].ca, f.cert, f.key))
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE


def test_expired_client_fails(pki: dict[str, CertPaths], port: int) -> None:
    x = pki["expired"]
    with pytest.raises(grpc.RpcError) as e:
        _call(port, channel_credentials(x.ca, x.cert, x.key))
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE


def test_wrong_server_name_fails(pki: dict[str, CertPaths], port: int) -> None:
    s = pki["site"]
    with pytest.raises(grpc.RpcError) as e:
        _call(port, channel_credentials(s.ca, s.cert, s.key), target_name="wrong.example")
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
