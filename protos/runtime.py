"""Process plumbing both sides share: logging set-up and turning SIGTERM/SIGINT into a stop event."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

__all__ = ["install_stop_handlers", "setup_logging"]


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
