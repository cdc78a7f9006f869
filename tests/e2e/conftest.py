"""A real federation on 127.0.0.1: fresh CA and certificates, a coordinator server with mTLS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.config import CoordinatorConfig
from coordinator.server import CoordinatorServer, start_server
from protos.config import TLSFiles
from protos.tls import init_ca, issue_coordinator, issue_site


@dataclass
class Federation:
    certs: Path
    server: CoordinatorServer
    config: CoordinatorConfig

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    certs = tmp_path / "certs"
    init_ca(certs)
    issue_coordinator(certs)
    for site in ("hospital-a", "hospital-b", "hospital-x", "hospital-revoked"):
        issue_site(certs, site)
    cfg = CoordinatorConfig(
        listen="127.0.0.1:0", state_dir=tmp_path / "coordinator-state",
        tls=TLSFiles(cert=certs / "coordinator.crt", key=certs / "coordinator.key", ca=certs / "ca.crt"),
        audit_key=certs / "coordinator.audit.key", sites=["hospital-a", "hospital-b", "hospital-revoked"],
        revoked_sites=["hospital-revoked"], poll_wait_ms=300)
    server = start_server(cfg)
    try:
        yield Federation(certs, server, cfg)
    finally:
        server.stop(grace=0.5)
