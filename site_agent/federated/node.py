"""A site's side of Flower's deployment engine: a ``flower-supernode`` process, and a loop that feeds its
tasks to this site's own ClientApp.

Trust model. In Flower's default (``--isolation subprocess``) a SuperNode runs whatever ClientApp the
app bundle (FAB) sent by the SuperLink names, importing it with the bundle's folder first on
``sys.path``: code pushed by the coordinator would run inside the hospital. Flower's remedy, signed
bundles checked against ``--trusted-entities``, only works for apps fetched from the Flower Hub (the
SuperNode refuses any bundle without the Hub's licence stamp), so it cannot serve an offline federation.

So the SuperNode runs with ``--isolation process``: it starts no app process itself. :class:`SiteNode`
claims each task on the SuperNode's local Runtime API (bound to 127.0.0.1 and guarded by a random
SuperExec secret that only this process knows), pulls the message, and hands it to the ClientApp built
by :func:`~site_agent.federated.client_app.make_client_app` from this site's installed autodp. The bundle
is never installed, unpacked or imported; a run of any other app than ``autodp/federated-lora`` is
refused. Nothing is installed at run time (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``).

Transport. The SuperNode dials out to the SuperLink over TLS (the coordinator's certificate, checked
against the federation CA) and authenticates with the site's own key: the ECDSA key of its certificate,
written once per run in OpenSSH form into a private (0600) file. The coordinator registered the matching
public key, taken from the site's certificate, before the run.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from protos.federated import APP_ID, Failure, FederatedError
from protos.flower_procs import FlowerProcess, flower_env, free_port, wait_for_port
from protos.tls import load_private_key
from site_agent.federated.errors import FederatedSiteError, RunTimedOut, SuperNodeFailed

__all__ = ["SiteNode", "write_node_key"]

log = logging.getLogger("autodp.site.federated")
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"
_POLL_S = 0.5
# what flower-supernode 1.41 logs once per reply it forwarded (or gave up on)
_SENT_MARKERS = ("Sent successfully", "Failed to send message", "Ignoring reply message")
_AFTER_SENT_S = 8.0  # > the 3 s between the coordinator's polls for replies, with room to spare


def _private_file(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_node_key(tls_key: Path, out: Path) -> None:
    """The site's TLS key (ECDSA, a NIST curve) as the OpenSSH private key Flower's node auth reads."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = load_private_key(tls_key)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FederatedSiteError("the site's TLS key is not an ECDSA key: Flower node authentication needs one")
    _private_file(out, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()))


class SiteNode:
    """Runs the SuperNode and serves its tasks until ``done()`` or ``stop`` or the time-out."""

    def __init__(self, client_app: object, *, superlink: str, ca: Path, tls_key: Path, work_dir: Path,
                 done: Callable[[], bool]) -> None:
        self.client_app = client_app
        self.superlink, self.ca, self.tls_key, self.work_dir, self.done = superlink, ca, tls_key, work_dir, done
        self.tasks = 0

    def _start(self) -> tuple[FlowerProcess, int, bytes]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        key_path = self.work_dir / "node-auth.key"
        write_node_key(self.tls_key, key_path)
        secret = secrets.token_bytes(32)
        secret_path = self.work_dir / "superexec.secret"
        _private_file(secret_path, secret)
        port = free_port()
        args = ["--superlink", self.superlink, "--root-certificates", str(self.ca),
                "--auth-supernode-private-key", str(key_path), "--isolation", "process",
                "--host", "127.0.0.1", "--port", str(port), "--superexec-auth-secret-file", str(secret_path)]
        proc = FlowerProcess("flower-supernode", args, log_path=self.work_dir / "flower-supernode.log",
                             env=flower_env(self.work_dir / "flwr-home"), cwd=self.work_dir)
        return proc, port, secret

    def run(self, stop: threading.Event, timeout_s: float) -> int:
        """Serve tasks; returns how many. Raises SuperNodeFailed when the SuperNode does not start or dies,
        RunTimedOut when the final adapter has not arrived within ``timeout_s``."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        proc, port, secret = self._start()
        address = f"127.0.0.1:{port}"
        try:
            try:
                wait_for_port("127.0.0.1", port, 60.0, alive=self._alive(proc))
            except FederatedError as e:
                raise SuperNodeFailed(str(e)) from None
            acquire = RuntimeHttpClient.from_server_address(
                server_address=address, insecure=True, root_certificates=None,
                interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                              SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={_ACQUIRE})],
                retry_invoker=make_simple_http_retry_invoker())
            deadline = time.monotonic() + timeout_s
            log.info("SuperNode up; waiting for the coordinator's rounds (SuperLink %s)", self.superlink)
            try:
                while not stop.is_set() and not self.done():
                    self._alive(proc)()
                    if time.monotonic() > deadline:
                        raise RunTimedOut(f"no final adapter within {timeout_s:.0f} s")
                    try:
                        res = acquire.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
                    except Exception as e:  # the SuperNode restarting, a dropped local connection: retry
                        log.warning("SuperNode runtime API: %s", type(e).__name__)
                        stop.wait(_POLL_S)
                        continue
                    if res.HasField("task") and res.token:
                        self._serve(address, res.token)
                        self.tasks += 1
                    else:
                        stop.wait(_POLL_S)
            finally:
                acquire.close()
            if self.done():
                self._drain(proc, stop)
        finally:
            proc.stop()
        return self.tasks

    def _drain(self, proc: FlowerProcess, stop: threading.Event, linger_s: float = 30.0) -> None:
        """Keep the SuperNode connected until the coordinator has had our last reply (the final ack).

        The SuperNode pushes a reply to the SuperLink some time after the ClientApp handed it over, and
        says so in its log, one line per reply (Flower 1.41 offers no call to ask). The coordinator then
        fetches it on its next poll (every 3 s), and the SuperLink answers "node unavailable" instead if
        the node has left by then: so the node stays :data:`_AFTER_SENT_S` longer."""
        deadline = time.monotonic() + linger_s
        while time.monotonic() < deadline and proc.running and not stop.is_set():
            try:
                text = proc.log_path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                break
            if sum(text.count(m) for m in _SENT_MARKERS) >= self.tasks:
                stop.wait(_AFTER_SENT_S)
                return
            stop.wait(0.2)
        log.warning("the SuperNode may not have forwarded the last reply")

    @staticmethod
    def _alive(proc: FlowerProcess) -> Callable[[], None]:
        def check() -> None:
            if not proc.running:
                raise SuperNodeFailed(f"flower-supernode exited with code {proc.proc.returncode} "
                                         f"(see {proc.log_path.name})")
        return check

    def _serve(self, address: str, token: str) -> None:
        """One task: pull the message, answer it with our own ClientApp, push the reply."""
        from flwr.app import Error, Message
        from flwr.common.constant import SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        client = RuntimeHttpClient.from_server_address(
            server_address=address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=make_simple_http_retry_invoker())
        heartbeat = HeartbeatSender(_heartbeat_fn(client))
        heartbeat.start()
        context = None
        try:
            message, context, run, _fab = pull_task_input(client)  # the bundle itself is never used
            if run.fab_id != APP_ID:
                log.error("refusing a task of app %s: this site runs %s only", run.fab_id[:64], APP_ID)
                reply = Message(Error(code=Failure.REFUSED.code, reason=Failure.REFUSED.reason), reply_to=message)
            else:
                try:
                    reply = self.client_app(message=message, context=context)  # type: ignore[operator]
                except Exception as e:  # a message type our ClientApp does not serve
                    log.error("refusing a %s message (%s)", message.metadata.message_type[:32], type(e).__name__)
                    reply = Message(Error(code=Failure.REFUSED.code, reason=Failure.REFUSED.reason),
                                    reply_to=message)
            push_message(client, reply, context)
            push_task_output(client, context, SubStatus.COMPLETED, "")
        except Exception as e:
            log.error("task failed at the runtime API (%s)", type(e).__name__)
            push_task_output(client, context, SubStatus.FAILED, "task failed at the site")
        finally:
            heartbeat.stop()
            client.close()


def _heartbeat_fn(client: object) -> Callable[[], bool]:
    """Flower's own heartbeat raises SIGINT when the task is gone, which would stop this whole process."""
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    def beat() -> bool:
        try:
            client.SendTaskHeartbeat(SendTaskHeartbeatRequest())  # type: ignore[attr-defined]
        except Exception:
            return False
        return True

    return beat
