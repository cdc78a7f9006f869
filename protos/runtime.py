"""Process plumbing both sides share: logging set-up and turning SIGTERM/SIGINT into a stop event."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

__all__ = ["StopRequested", "install_abort_handlers", "install_stop_handlers", "setup_logging"]


class StopRequested(BaseException):  # noqa: N818 (not an error: a request; BaseException so no broad except eats it)
    """SIGTERM or SIGINT arrived while :func:`install_abort_handlers`' handlers were in place."""


def setup_logging(verbose: bool = False) -> None:
    """Log lines carry ids, counts and statuses only (never site data), on stderr."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def install_stop_handlers(stop: threading.Event) -> None:
    def _handler(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("autodp").info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def install_abort_handlers() -> None:
    """For a process's start-up (embedding the data, training the screener: minutes on a large site): SIGTERM and
    SIGINT raise :class:`StopRequested` in the main thread, so the work stops at once instead of running to its
    end while a supervisor waits (compose and systemd kill after a grace period). What start-up writes is written
    atomically, so a later start resumes from it. Replace them with :func:`install_stop_handlers` once the process
    serves: from then on a stop finishes the current answer first."""
    def _handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        logging.getLogger("autodp").info("received %s during start-up, stopping", name)
        raise StopRequested(name)

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
