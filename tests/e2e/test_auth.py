"""Who may talk to the coordinator: only registered, unrevoked sites with a certificate from our CA, and
only as themselves."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from protos import federation_pb2 as pb
from protos import federation_pb2_grpc as pb_grpc
from protos.serde import to_pb
from protos.tls import init_ca, issue_site
from protos.views import Hello, SizeBucket
from tests.e2e.conftest import Federation


def stub(fed: Federation, creds: grpc.ChannelCredentials) -> pb_grpc.FederationStub:
    channel = grpc.secure_channel(fed.address, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    return pb_grpc.FederationStub(channel)


def site_creds(certs: Path, site: str, ca: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or certs / "ca.crt").read_bytes(),
        private_key=(certs / f"site-{site}.key").read_bytes(),
        certificate_chain=(certs / f"site-{site}.crt").read_bytes())


def hello(site: str) -> pb.HelloRequest:
    return to_pb(Hello(site_id=site, software_version="0.1.0", size_bucket=SizeBucket.UNDER_1K))  # type: ignore[return-value]


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[attr-defined,no-any-return]


def test_registered_site_is_accepted(federation: Federation) -> None:
    reply = stub(federation, site_creds(federation.certs, "hospital-a")).Hello(hello("hospital-a"), timeout=5)
    assert reply.accepted
    assert federation.server.store.get_site("hospital-a") is not None


def test_no_client_certificate_is_refused(federation: Federation) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(federation.certs / "ca.crt").read_bytes())
    assert code_of(lambda: stub(federation, creds).Hello(hello("hospital-a"), timeout=5)) == \
        grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(federation: Federation, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    init_ca(other)
    issue_site(other, "hospital-a")  # same name, wrong CA
    creds = site_creds(other, "hospital-a", ca=federation.certs / "ca.crt")
    assert code_of(lambda: stub(federation, creds).Hello(hello("hospital-a"), timeout=5)) == \
        grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("site", ["hospital-x", "hospital-revoked"])
def test_unregistered_or_revoked_cn_is_refused(federation: Federation, site: str) -> None:
    s = stub(federation, site_creds(federation.certs, site))
    assert code_of(lambda: s.Hello(hello(site), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert federation.server.store.get_site(site) is None


def test_a_site_cannot_speak_for_another(federation: Federation) -> None:
    s = stub(federation, site_creds(federation.certs, "hospital-a"))
    assert code_of(lambda: s.Hello(hello("hospital-b"), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert federation.server.store.get_site("hospital-b") is None


def test_malformed_hello_is_invalid_argument(federation: Federation) -> None:
    s = stub(federation, site_creds(federation.certs, "hospital-a"))
    bad = pb.HelloRequest(site_id="hospital-a", software_version="not an identifier!", protocol_version=1,
                          size_bucket=pb.SIZE_BUCKET_UNDER_1K)
    assert code_of(lambda: s.Hello(bad, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
