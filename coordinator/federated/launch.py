"""Run one federated LoRA training on Flower's deployment engine, from the coordinator's machine.

1. Read each site's public key from its certificate (issued by the federation CA, CN = site id).
2. Start ``flower-superlink`` with the coordinator's TLS certificate, SuperNode authentication on, and
   ``--isolation process``: the SuperLink starts no app process of its own.
3. Register each site's key on the SuperLink (Control API); only those SuperNodes may connect.
4. Start a run of the app ``autodp/federated-lora``. Its bundle is a ``pyproject.toml`` and nothing else;
   nobody installs or imports it.
5. Claim the run's ServerApp task on the SuperLink's Runtime API (guarded by a random SuperExec secret
   that only this process knows) and serve it in this process with the ServerApp of this installed
   autodp (:func:`~coordinator.federated.server_app.make_server_app`).
6. Stop the SuperLink.

The SuperLink of Flower 1.41 serves its Control, Fleet and Runtime APIs on one TLS port, and without
Flower's enterprise account plug-in the Control API has no authentication: whoever reaches the port can
start or stop runs there. With process isolation on both sides nothing would execute such a run's code,
but it could disturb a training run; keep the port reachable from the sites' addresses only.

Every Flower process gets ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` and no network beyond the
SuperLink (see :mod:`protos.flower_procs`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.config import CoordinatorConfig
from coordinator.federated.errors import FederatedRunError
from protos.audit import AuditLog, load_signing_key
from protos.errors import CertificateError
from protos.federated import (
    APP_ID,
    APP_NAME,
    APP_PUBLISHER,
    APP_VERSION,
    CLIENTAPP_REF,
    SERVERAPP_REF,
    RoundSettings,
)
from protos.flower_procs import FlowerProcess, flower_env, split_address, wait_for_port
from protos.tls import load_certificate, site_prefix

__all__ = ["AUDIT_LOG_NAME", "LaunchOptions", "app_bundle", "site_public_keys", "train_federated"]

log = logging.getLogger("autodp.coordinator.federated")
AUDIT_LOG_NAME = "federated-audit.log"
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"


@dataclass(frozen=True)
class LaunchOptions:
    listen: str = "127.0.0.1:9093"  # the SuperLink's address; sites dial it, so the certificate must name it
    output: Path | None = None  # default: <state_dir>/federated/adapter
    site_certs: Mapping[str, Path] | None = None  # default: <CA folder>/site-<id>.crt
    round_timeout_s: float = 3600.0
    connect_timeout_s: float = 600.0


def app_bundle() -> bytes:
    """The Flower app bundle (FAB): a ``pyproject.toml`` naming the two apps, no code."""
    from flwr.cli.build import build_fab_from_files

    pyproject = f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{APP_NAME}"
version = "{APP_VERSION}"
description = "autodp federated LoRA training; both apps come from the autodp installed on each side"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "{APP_PUBLISHER}"

[tool.flwr.app.components]
serverapp = "{SERVERAPP_REF}"
clientapp = "{CLIENTAPP_REF}"

[tool.flwr.app.config]
"""
    fab, _meta = build_fab_from_files({"pyproject.toml": pyproject.encode()})
    return fab


def site_public_keys(cfg: CoordinatorConfig, overrides: Mapping[str, Path] | None = None) -> dict[str, bytes]:
    """site id -> its public key in the form Flower registers, from certificates the federation CA signed."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    ca = load_certificate(cfg.tls.ca)
    sites = [s for s in cfg.sites if s not in cfg.revoked_sites]
    unknown = sorted(set(overrides or {}) - set(sites))
    if unknown:
        raise FederatedRunError(f"--site-cert for sites that are not registered (or revoked): {', '.join(unknown)}")
    keys = {}
    for site in sites:
        path = (overrides or {}).get(site) or cfg.tls.ca.parent / f"{site_prefix(site)}.crt"
        cert = load_certificate(path)
        try:
            cert.verify_directly_issued_by(ca)
        except Exception as e:  # InvalidSignature, or ValueError/TypeError for a key of another kind
            raise CertificateError(f"{path.name} is not signed by the federation CA ({type(e).__name__})") from None
        cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cn != [site]:
            raise CertificateError(f"{path.name} is not the certificate of site {site}")
        if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
            raise CertificateError(f"{path.name} has expired")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CertificateError(f"{path.name} does not hold an ECDSA key (Flower node authentication needs one)")
        keys[site] = public_key_to_bytes(key)
    if not keys:
        raise FederatedRunError("no registered site to train with")
    return keys


def _control_client(address: str, ca: bytes) -> Any:
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    return ControlHttpClient.from_server_address(
        server_address=address, insecure=False, root_certificates=ca,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")])


def _register(control: Any, keys: Mapping[str, bytes], deadline: float) -> dict[int, str]:
    from flwr.proto.control_pb2 import RegisterNodeRequest

    nodes: dict[int, str] = {}
    for site, key in keys.items():
        while True:
            try:
                res = control.RegisterNode(RegisterNodeRequest(public_key=key, name=site))
                break
            except Exception as e:  # the HTTP API can lag the open port by a moment
                if time.monotonic() > deadline:
                    raise FederatedRunError(f"cannot register site {site} on the SuperLink ({type(e).__name__})") \
                        from None
                time.sleep(0.5)
        if not res.node_id:
            raise FederatedRunError(f"the SuperLink refused to register site {site}")
        nodes[int(res.node_id)] = site
    return nodes


def _acquire(address: str, ca: bytes, secret: bytes, run_id: int, deadline: float,
             alive: Callable[[], None]) -> str:
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    client = RuntimeHttpClient.from_server_address(
        server_address=address, insecure=False, root_certificates=ca,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                      SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={_ACQUIRE})],
        retry_invoker=make_simple_http_retry_invoker())
    try:
        while time.monotonic() < deadline:
            alive()
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP]))
            if res.HasField("task") and res.token:
                if res.task.run_id != run_id:
                    raise FederatedRunError(f"the SuperLink offered a task of run {res.task.run_id}, not ours")
                return str(res.token)
            time.sleep(0.3)
    finally:
        client.close()
    raise FederatedRunError("the SuperLink did not hand out the run's ServerApp task")


def _serve(address: str, ca: bytes, token: str, run_id: int, serve: Callable[[Any, Any], None]) -> None:
    """Serve the claimed ServerApp task in this process, as flwr-serverapp would, minus the bundle."""
    from flwr.common.constant import SubStatus
    from flwr.common.serde import context_from_proto, context_to_proto, run_from_proto
    from flwr.proto.runtime_pb2 import PullTaskInputRequest, PushTaskOutputRequest
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.grid import HttpGrid

    grid = HttpGrid(runtime_api_address=address, insecure=False, root_certificates=ca, token=token)
    runtime = grid._runtime_client

    def beat() -> bool:
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

        try:
            runtime.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except Exception:
            return False
        return True

    heartbeat = HeartbeatSender(beat)
    heartbeat.start()
    context = None
    status, details = SubStatus.FAILED, "the coordinator's ServerApp failed"
    try:
        res = runtime.PullTaskInput(PullTaskInputRequest())
        if res.run.run_id != run_id or res.run.fab_id != APP_ID:
            raise FederatedRunError("the claimed task is not this run of autodp/federated-lora")
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, \
            res.context.node_id
        context = context_from_proto(res.context)
        grid.set_run(run_from_proto(res.run))
        serve(grid, context)
        status, details = SubStatus.COMPLETED, ""
    finally:
        heartbeat.stop()
        try:
            runtime.PushTaskOutput(PushTaskOutputRequest(context=context_to_proto(context) if context else None,
                                                         sub_status=status, details=details))
        except Exception as e:
            log.warning("could not report the task's end to the SuperLink (%s)", type(e).__name__)
        grid.close()


def train_federated(cfg: CoordinatorConfig, search_id: str, rounds: int, settings: RoundSettings, opts: LaunchOptions,
                    say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole training; returns the run summary (also written to the output folder)."""
    from flwr.common.serde import fab_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    from coordinator.federated.server_app import TrainingJob, TrainingResult, make_server_app

    say = say or (lambda _m: None)
    keys = site_public_keys(cfg, opts.site_certs)
    host, port = split_address(opts.listen)
    work = cfg.state_dir / "federated"
    work.mkdir(parents=True, exist_ok=True)
    ca = cfg.tls.ca.read_bytes()
    secret = secrets.token_bytes(32)
    secret_path = work / "superexec.secret"
    secret_path.unlink(missing_ok=True)
    with os.fdopen(os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(secret)
    args = ["--ssl-certfile", str(cfg.tls.cert), "--ssl-keyfile", str(cfg.tls.key),
            "--ssl-ca-certfile", str(cfg.tls.ca),
            "--enable-supernode-auth", "--isolation", "process", "--superexec-auth-secret-file", str(secret_path),
            "--host", host, "--port", str(port)]  # state in memory: a fresh federation, only this run's keys
    address = f"127.0.0.1:{port}" if host in ("0.0.0.0", "::") else f"{host}:{port}"
    with AuditLog.open(cfg.state_dir / AUDIT_LOG_NAME, load_signing_key(cfg.audit_key), "coordinator",
                       cfg.party) as audit, \
            FlowerProcess("flower-superlink", args, log_path=work / "flower-superlink.log",
                          env=flower_env(work / "flwr-home"), cwd=work) as superlink:
        wait_for_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1", port, 60.0, superlink.check_running)
        control = _control_client(address, ca)
        try:
            nodes = _register(control, keys, time.monotonic() + 60.0)
            say(f"SuperLink on {opts.listen}; registered sites: {', '.join(sorted(nodes.values()))}")
            fab = app_bundle()
            res = control.StartRun(StartRunRequest(fab=fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {}))))
            if not res.HasField("run_id"):
                raise FederatedRunError("the SuperLink did not start the run")
            run_id = int(res.run_id)
        finally:
            control.close()
        say(f"run {run_id} started: {rounds} rounds, waiting for the sites")
        job = TrainingJob(search_id=search_id, rounds=rounds, settings=settings, nodes=nodes,
                          output=opts.output or work / "adapter", round_timeout_s=opts.round_timeout_s,
                          connect_timeout_s=opts.connect_timeout_s)
        result = TrainingResult()
        server_app = make_server_app(job, audit, result)
        token = _acquire(address, ca, secret, run_id, time.monotonic() + 60.0, superlink.check_running)
        _serve(address, ca, token, run_id, lambda grid, context: server_app(grid=grid, context=context))
    return result.summary
