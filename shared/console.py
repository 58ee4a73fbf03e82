"""A live display on the terminal and the log lines beside it (``rich``), for both CLIs.

``rich.progress.Progress`` redraws its lines in place; a log record written to the same terminal
by a plain ``StreamHandler`` would land in the middle of them. While a display is live the root
logger's records go through ``rich.logging.RichHandler`` on the same console instead, which prints
them above the live lines (rich's Live display docs: "print or log ... above the live display").
Off a terminal there is no display and nothing but log lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from shared.logsetup import records_through

if TYPE_CHECKING:
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.progress import Progress

#: Variables with which rich may take a stream that is not a tty for a terminal (rich/console.py,
#: ``Console.is_terminal``).
_FORCING = ("FORCE_COLOR", "TTY_COMPATIBLE")


def terminal_console() -> Console | None:
    """The console of a live display: stderr, where the log lines go, if it is a terminal."""
    stream = sys.stderr
    tty = stream is not None and stream.isatty()
    if not tty and not any(name in os.environ for name in _FORCING):
        # Off a terminal (services, cron, Docker) rich is not even imported: it is a tenth of
        # a short command's start-up.
        return None
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else None


def log_handler(console: Console) -> RichHandler:
    """A handler printing records above ``console``'s live display (use with
    :func:`shared.logsetup.records_through`, which gives it the configured formatter)."""
    from rich.highlighter import NullHighlighter
    from rich.logging import RichHandler

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


def live_progress(console: Console) -> Progress:
    """Both CLIs' live display: a spinner, the task's label and its ``detail`` field (one line
    whatever the terminal's width: cut with an ellipsis, never wrapped), and the time elapsed.
    Transient: the summary lines printed at the end replace it."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Column

    return Progress(
        SpinnerColumn(finished_text="done"),
        TextColumn("{task.description}"),
        TextColumn("{task.fields[detail]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@contextlib.contextmanager
def showing(progress: Progress) -> Iterator[None]:
    """Show ``progress`` and print log records above it while inside."""
    with records_through(log_handler(progress.console)), progress:
        yield
