"""Starting and stopping Flower's deployment-engine processes (flower-superlink at the coordinator,
flower-supernode at a site) for federated training; shared because both sides need the same care.

- The Flower commands are taken from this Python's own environment (the ``bin`` folder beside
  ``sys.executable``), never from whatever ``PATH`` holds.
- Every Flower process gets an environment that keeps it offline and inert: runtime dependency
  installation off (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``), telemetry off, no update check,
  ``FLWR_HOME`` in our own state folder, Hugging Face offline.
- A process runs in its own session with its output in a log file; :meth:`FlowerProcess.stop` ends it
  (SIGTERM, then SIGKILL after a grace period). Flower's helper processes watch their parent's pid and
  exit with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from protos.federated import FederatedError

__all__ = ["FlowerProcess", "flower_command", "flower_env", "free_port", "split_address", "wait_for_port"]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of a Flower process: ours, offline, with nothing installed at run time."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    })
    # Flower starts its helpers (flower-superexec, flwr-serverapp) by name: ours must come first.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def flower_command(name: str) -> str:
    """Absolute path of a Flower command installed beside this Python."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise FederatedError(f"the Flower command '{name}' is not installed in this environment (flwr missing?)")
    return str(path)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FederatedError(f"'{address}' is not a host:port address")
    return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the usual small race is accepted for local helpers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class FlowerProcess:
    """One Flower process we started: its command, log file and lifetime."""

    def __init__(self, name: str, args: Sequence[str], *, log_path: Path, env: dict[str, str],
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            try:
                self.proc = subprocess.Popen([flower_command(name), *args], stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
            except OSError as e:
                raise FederatedError(f"cannot start {name}: {e.strerror}") from None

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def check_running(self) -> None:
        if not self.running:
            raise FederatedError(f"{self.name} exited with code {self.proc.returncode} (see {self.log_path})")

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group we started, SIGKILL it after ``grace_s``."""
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)  # its own session: the group id is its pid
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> FlowerProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def wait_for_port(host: str, port: int, timeout_s: float, alive: Callable[[], None] | None = None) -> None:
    """Block until something accepts TCP connections on ``host:port``; ``alive`` raises when the process
    that should open it has died. Raises FederatedError on time-out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise FederatedError(f"nothing answered on {host}:{port} within {timeout_s:.0f} s")
