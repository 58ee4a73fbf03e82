"""A live display on the terminal and the log lines beside it (``rich``), for both CLIs.

``rich.progress.Progress`` redraws its lines in place; a log record written to the same terminal
by a plain ``StreamHandler`` would land in the middle of them. While a display is live the root
logger's records go through ``rich.logging.RichHandler`` on the same console instead, which prints
them above the live lines (rich's Live display docs: "print or log ... above the live display").
Off a terminal there is no display and nothing but log lines.
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler


def terminal_console() -> Console | None:
    """The console of a live display: stderr, where the log lines go, if it is a terminal."""
    console = Console(stderr=True)
    return console if console.is_terminal else None


def log_handler(console: Console) -> RichHandler:
    """A handler printing records above ``console``'s live display (use with
    :func:`shared.logsetup.records_through`, which gives it the configured formatter)."""
    # rich_tracebacks stays off: rich's tracebacks can show local variables, keys included;
    # the configured formatter (with its secret masking) formats every record, tracebacks too.
    return RichHandler(
        level=logging.NOTSET,
        console=console,
        show_time=False,
        show_level=False,
        show_path=False,
        markup=False,
        rich_tracebacks=False,
        highlighter=NullHighlighter(),
    )
