"""Who may talk to the coordinator: only registered, unrevoked sites with a valid certificate from our CA,
and only as themselves; and a site talks only to a coordinator whose certificate names the host it dialled.

Every refusal is checked twice: the status the caller gets, and the line the refusing side writes to its
own log. Refusals made by the coordinator's Python code (CN not registered, revoked, not a site) are logged
by the ``autodp.coordinator`` logger. Refusals made inside the TLS handshake (no client certificate, another
CA, expired) never reach Python: gRPC core writes them to the coordinator process's stderr ("Handshake
failed ... <reason>", without the peer's address), which is its log when run as a service; the subprocess
test below reads that log. A site that meets a coordinator certificate for another host logs why it
refuses to talk to it and keeps retrying (a man in the middle must not be able to make it exit).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from coordinator.demo import free_port, stop_process
from coordinator.server import start_server
from protos import federation_pb2 as pb
from protos import federation_pb2_grpc as pb_grpc
from protos.config import TLSFiles
from protos.serde import to_pb
from protos.tls import init_ca, issue_certificate, issue_site, load_certificate, load_private_key
from protos.views import Hello, SizeBucket
from tests.e2e.conftest import Federation

COORD_LOGGER = "autodp.coordinator"


def stub(address: str, creds: grpc.ChannelCredentials) -> pb_grpc.FederationStub:
    channel = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    return pb_grpc.FederationStub(channel)


def creds_for(certs: Path, prefix: str, ca: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or certs / "ca.crt").read_bytes(),
        private_key=(certs / f"{prefix}.key").read_bytes(),
        certificate_chain=(certs / f"{prefix}.crt").read_bytes())


def site_creds(certs: Path, site: str, ca: Path | None = None) -> grpc.ChannelCredentials:
    return creds_for(certs, f"site-{site}", ca)


def hello(site: str) -> pb.HelloRequest:
    return to_pb(Hello(site_id=site, software_version="0.1.0", size_bucket=SizeBucket.UNDER_1K))  # type: ignore[return-value]


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[attr-defined,no-any-return]


# ------------------------------------------------------------------------------ certificates for the cases


def issue_expired(certs: Path, site: str) -> str:
    """A client certificate for ``site`` from the federation CA that expired yesterday."""
    now = dt.datetime.now(dt.UTC)
    prefix = f"expired-{site}"
    issue_certificate(certs, site, server=False, client=True, prefix=prefix,
                      not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    return prefix


def issue_without_cn(certs: Path) -> str:
    """A client certificate from the federation CA with no subject at all (built with cryptography directly:
    the product's issuer always writes a CN)."""
    ca_cert, ca_key = load_certificate(certs / "ca.crt"), load_private_key(certs / "ca.key")
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("nobody.example")]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (certs / "nocn.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (certs / "nocn.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return "nocn"


# ------------------------------------------------------------------------------ in-process coordinator


def test_registered_site_is_accepted(federation: Federation, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", COORD_LOGGER)
    reply = stub(federation.address, site_creds(federation.certs, "hospital-a")).Hello(hello("hospital-a"), timeout=5)
    assert reply.accepted
    assert federation.server.store.get_site("hospital-a") is not None
    assert "hello from hospital-a" in caplog.text


def test_no_client_certificate_is_refused(federation: Federation) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(federation.certs / "ca.crt").read_bytes())
    assert code_of(lambda: stub(federation.address, creds).Hello(hello("hospital-a"), timeout=5)) == \
        grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(federation: Federation, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    init_ca(other)
    issue_site(other, "hospital-a")  # same name, wrong CA
    creds = site_creds(other, "hospital-a", ca=federation.certs / "ca.crt")
    assert code_of(lambda: stub(federation.address, creds).Hello(hello("hospital-a"), timeout=5)) == \
        grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_is_refused(federation: Federation) -> None:
    creds = creds_for(federation.certs, issue_expired(federation.certs, "hospital-a"))
    assert code_of(lambda: stub(federation.address, creds).Hello(hello("hospital-a"), timeout=5)) == \
        grpc.StatusCode.UNAVAILABLE
    assert federation.server.store.get_site("hospital-a") is None


@pytest.mark.parametrize(("site", "why"), [("hospital-x", "site 'hospital-x' is not registered"),
                                           ("hospital-revoked", "site 'hospital-revoked' is revoked")])
def test_unregistered_or_revoked_cn_is_refused(federation: Federation, caplog: pytest.LogCaptureFixture,
                                               site: str, why: str) -> None:
    caplog.set_level("INFO", COORD_LOGGER)
    s = stub(federation.address, site_creds(federation.certs, site))
    assert code_of(lambda: s.Hello(hello(site), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert federation.server.store.get_site(site) is None
    assert f"refused HelloRequest: {why}" in caplog.text


@pytest.mark.parametrize("case", ["coordinator-cert", "case-variant", "no-cn"])
def test_valid_certificate_with_a_wrong_cn_is_refused(federation: Federation, caplog: pytest.LogCaptureFixture,
                                                      case: str) -> None:
    """Signed by our CA and in date, but its CN is not a registered site id: the coordinator's own (client
    capable) certificate, a CN differing only in case, no CN at all."""
    caplog.set_level("INFO", COORD_LOGGER)
    certs = federation.certs
    if case == "coordinator-cert":
        prefix, why = "coordinator", "site 'coordinator' is not registered"
    elif case == "case-variant":
        issue_certificate(certs, "Hospital-A", server=False, client=True, prefix="site-Hospital-A")
        prefix, why = "site-Hospital-A", "site 'Hospital-A' is not registered"
    else:
        prefix, why = issue_without_cn(certs), "no client certificate common name"
    s = stub(federation.address, creds_for(certs, prefix))
    assert code_of(lambda: s.Hello(hello("hospital-a"), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert federation.server.store.get_site("hospital-a") is None
    assert f"refused HelloRequest: {why}" in caplog.text


def test_a_site_cannot_speak_for_another(federation: Federation, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", COORD_LOGGER)
    s = stub(federation.address, site_creds(federation.certs, "hospital-a"))
    assert code_of(lambda: s.Hello(hello("hospital-b"), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert federation.server.store.get_site("hospital-b") is None
    assert "HelloRequest from hospital-a names another site id" in caplog.text


def test_malformed_hello_is_invalid_argument(federation: Federation) -> None:
    s = stub(federation.address, site_creds(federation.certs, "hospital-a"))
    bad = pb.HelloRequest(site_id="hospital-a", software_version="not an identifier!", protocol_version=1,
                          size_bucket=pb.SIZE_BUCKET_UNDER_1K)
    assert code_of(lambda: s.Hello(bad, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------------------ the site refuses a wrong host


def test_site_refuses_a_coordinator_certificate_for_another_host(federation: Federation, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The coordinator's certificate names localhost and 127.0.0.1; a site told to expect another name (as
    when a man in the middle answers with a certificate for its own host) refuses the connection, says why
    in its log, sends nothing, and keeps retrying rather than exiting."""
    from site_agent.agent import SiteAgent
    from site_agent.config import load_config
    from tests.e2e.test_network_faults import write_site_config

    caplog.set_level("INFO", "autodp")
    cfg_path = write_site_config(tmp_path / "site", federation.certs, "hospital-a", federation.address,
                                 tls_server_name="coordinator.evil.example", backoff_max_s=0.5)
    agent = SiteAgent(load_config(cfg_path), threading.Event())
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while caplog.text.count("retrying in") < 2:
            assert time.monotonic() < deadline, caplog.text[-2000:]
            assert thread.is_alive(), "the site gave up instead of retrying"
            time.sleep(0.1)
    finally:
        agent.stop.set()
        thread.join(10)
        agent.close()
    assert "TLS: the coordinator's certificate does not match 'coordinator.evil.example'" in caplog.text
    assert federation.server.store.get_site("hospital-a") is None
    assert federation.server.audit.entries == 1  # its genesis entry only: no message got through


@pytest.mark.parametrize(("case", "why"), [("other-ca", "unable to get local issuer certificate"),
                                           ("expired", "certificate has expired")])
def test_site_refuses_a_coordinator_certificate_it_cannot_trust(federation: Federation, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture, case: str,
                                                                why: str) -> None:
    """A coordinator (or an impostor) presenting a certificate from another CA, or our CA's but expired: the
    site's client refuses the handshake and logs why; the call fails as 'unavailable' (retried later)."""
    from protos.audit import AuditLog, load_signing_key
    from site_agent.client import CoordinatorClient, CoordinatorUnavailable
    from site_agent.config import load_config
    from tests.e2e.test_network_faults import write_site_config

    caplog.set_level("INFO", "autodp.site")
    certs = federation.certs
    if case == "other-ca":
        where = tmp_path / "other-ca"
        init_ca(where)
        issue_certificate(where, "coordinator", hosts=["localhost"], server=True, client=True, prefix="impostor")
    else:
        where, now = certs, dt.datetime.now(dt.UTC)
        issue_certificate(certs, "coordinator", hosts=["localhost"], server=True, client=True, prefix="impostor",
                          not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    impostor = start_server(federation.config.model_copy(update={
        "state_dir": tmp_path / "impostor", "tls": TLSFiles(cert=where / "impostor.crt", key=where / "impostor.key",
                                                            ca=certs / "ca.crt")}))
    try:
        cfg = load_config(write_site_config(tmp_path / "site", certs, "hospital-a", f"127.0.0.1:{impostor.port}"))
        cfg.state_dir.mkdir(parents=True)
        with AuditLog.open(cfg.state_dir / "audit.log", load_signing_key(cfg.audit_key), "site", "hospital-a") as audit:
            client = CoordinatorClient(cfg, audit)
            with pytest.raises(CoordinatorUnavailable, match=f"certificate was refused \\({why}\\)"):
                client.hello(Hello(site_id="hospital-a", software_version="0.1.0"))
            client.close()
        assert impostor.store.get_site("hospital-a") is None
    finally:
        impostor.stop(grace=0.2)
    assert f"TLS: the coordinator's certificate was refused ({why}); not talking to it" in caplog.text


# ------------------------------------------------------------------------------ a coordinator process's own log


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        assert proc.poll() is None, f"coordinator exited: {content[-2000:]}"
        assert time.monotonic() < deadline, f"{text!r} not in the coordinator log: {content[-2000:]}"
        time.sleep(0.1)


def test_every_refusal_is_in_the_coordinator_process_log(federation: Federation, tmp_path: Path) -> None:
    """The coordinator run as a hospital runs it (the CLI, its stderr as its log, gRPC's default logging):
    each refused client leaves a line naming the reason. Handshake refusals are gRPC core's lines and do not
    name the peer; setting GRPC_VERBOSITY=ERROR hides them."""
    certs = federation.certs
    port = free_port()
    cfg = federation.config.model_dump(mode="json")
    cfg.update(listen=f"127.0.0.1:{port}", state_dir=str(tmp_path / "coord-state"), search=None)
    (tmp_path / "coordinator.yaml").write_text(yaml.safe_dump(cfg))
    log_path = tmp_path / "coordinator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    with log_path.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "protos.cli", "coordinator", "serve", "--config",
                                 str(tmp_path / "coordinator.yaml")], stdout=out, stderr=subprocess.STDOUT, env=env)
    other = tmp_path / "other-ca"
    init_ca(other)
    issue_site(other, "hospital-a")
    ca = (certs / "ca.crt").read_bytes()
    cases: list[tuple[grpc.ChannelCredentials, str, str, grpc.StatusCode]] = [
        (grpc.ssl_channel_credentials(root_certificates=ca), "hospital-a",
         "Handshake failed with error SSL_ERROR_SSL: error:100000c0:SSL routines:OPENSSL_internal:"
         "PEER_DID_NOT_RETURN_A_CERTIFICATE", grpc.StatusCode.UNAVAILABLE),
        (site_creds(other, "hospital-a", ca=certs / "ca.crt"), "hospital-a",
         "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate", grpc.StatusCode.UNAVAILABLE),
        (creds_for(certs, issue_expired(certs, "hospital-a")), "hospital-a",
         "CERTIFICATE_VERIFY_FAILED: certificate has expired", grpc.StatusCode.UNAVAILABLE),
        (creds_for(certs, "coordinator"), "hospital-a", "refused HelloRequest: site 'coordinator' is not registered",
         grpc.StatusCode.PERMISSION_DENIED),
        (site_creds(certs, "hospital-x"), "hospital-x", "refused HelloRequest: site 'hospital-x' is not registered",
         grpc.StatusCode.PERMISSION_DENIED),
        (site_creds(certs, "hospital-revoked"), "hospital-revoked",
         "refused HelloRequest: site 'hospital-revoked' is revoked", grpc.StatusCode.PERMISSION_DENIED),
    ]
    try:
        _wait_for(log_path, f"coordinator listening on port {port}", proc)
        for creds, site, line, code in cases:
            before = log_path.read_text(errors="replace").count(line)
            assert code_of(lambda c=creds, s=site: stub(f"127.0.0.1:{port}", c).Hello(hello(s), timeout=5)) == code
            deadline = time.monotonic() + 10
            while log_path.read_text(errors="replace").count(line) <= before:
                assert time.monotonic() < deadline, f"no log line for {line!r}"
                time.sleep(0.05)
        # and a registered site still gets in afterwards
        assert stub(f"127.0.0.1:{port}", site_creds(certs, "hospital-a")).Hello(hello("hospital-a"), timeout=5).accepted
        _wait_for(log_path, "hello from hospital-a", proc)
    finally:
        assert stop_process(proc) == 0
