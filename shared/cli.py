"""What both command lines share: the ``--config`` option and stopping on SIGTERM/SIGINT.

Commands stay in each half's CLI; this module holds only the pieces they would otherwise copy.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click

logger = logging.getLogger(__name__)

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="config.yml to read (default: ./config.yml if present). Environment variables win.",
)


@contextmanager
def stop_on_signals(stop: threading.Event, what: str) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT set ``stop`` (logged with ``what`` happens next) instead
    of killing the process; the previous handlers come back on exit.

    Signal handlers can only be set from the main thread (Python's ``signal`` docs): elsewhere,
    as under a test runner's thread, nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s received; %s", signal.Signals(signum).name, what)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
