"""The progress display on a real terminal: ``ctx-fetcher once`` runs in a pseudo-terminal and its
output is replayed in a terminal emulator (pyte), so the test sees the screen a user would see."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import pytest
from rich.console import Console

from fetcher.commands.progress import PassProgress
from fetcher.files.assemble import Counts
from fetcher.passes.result import FeedResult
from shared.logsetup import configure_logging
from tests.standins.ctx import CTXStandIn

COLUMNS, ROWS = 400, 30
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+ ")


def _run_on_a_terminal(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, bytes]:
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    proc = subprocess.Popen(argv, stdin=secondary, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed (the process ended)
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=10), b"".join(chunks)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)


def _screen_lines(output: bytes) -> list[str]:
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=100_000)
    pyte.ByteStream(screen).feed(output)
    scrolled = [
        "".join(line[x].data for x in range(COLUMNS)).rstrip() for line in screen.history.top
    ]
    return [line for line in scrolled + [row.rstrip() for row in screen.display] if line]


@pytest.mark.timeout(120)
def test_on_a_terminal_progress_and_log_lines_never_share_a_line(
    env: dict[str, str], spool_dir: Path
) -> None:
    # Slow answers keep the display live long enough to be redrawn while log lines are printed.
    with CTXStandIn(feeds=2, reports=30, orphans=20, seed=3) as slow:
        # Answers that are retried print warnings (urllib3's) while the display is live.
        slow.inject("drop", path_contains="/objects/", times=2)
        slow.inject("latency", path_contains="/objects/", delay=0.15, times=40)
        environ = {
            **os.environ,
            **env,
            "CYBERTHREATEXCHANGE_BASE_URL": slow.base_url,
            "CYBERTHREATEXCHANGE_API_KEY": slow.api_key,
            "CYBERTHREATEXCHANGE_FEED_IDS": ",".join(slow.active_feed_ids),
            "CYBERTHREATEXCHANGE_CONCURRENCY": "1",
            "CONNECTOR_LOG_LEVEL": "info",
            "TERM": "xterm-256color",
            "COLUMNS": str(COLUMNS),
            "LINES": str(ROWS),
        }
        environ.pop("NO_COLOR", None)
        ctx_fetcher = str(Path(sys.executable).parent / "ctx-fetcher")

        code, output = _run_on_a_terminal([ctx_fetcher, "once"], environ, timeout=90)

        assert code == 0, output.decode(errors="replace")[-2000:]
        feeds = slow.active_feed_ids
    # The display was live: its per-feed counts were drawn (and redrawn) on the terminal.
    assert output.count(b"objects files") >= 2
    lines = _screen_lines(output)
    summaries = [line for line in lines if re.match(rf"^({'|'.join(feeds)}): records listed", line)]
    logs = [line for line in lines if LOG_LINE.match(line)]
    assert len(summaries) == 2
    assert sum("Retrying" in line for line in logs) >= 1
    # Every line left on the screen is a whole log line or a summary: no log line starts in the
    # middle of a progress line, and the display left nothing behind when it ended.
    assert [line for line in lines if line not in summaries and line not in logs] == []
    assert not any("objects files" in line for line in logs)


def test_log_records_shown_above_the_display_are_still_masked() -> None:
    secret = "ctx-secret-key-0123456789"
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200)
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        configure_logging("info", secrets=[secret], stream=io.StringIO())
        display = PassProgress(console)
        with display.live() as update:
            update(FeedResult("0b2d4e5f-1a2b-4c3d-8e9f-0a1b2c3d4e5f", records_listed=3))
            logging.getLogger("fetcher.test").info("request with key %s failed", secret)
        after = list(root.handlers)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])

    text = buffer.getvalue()
    assert "request with key *** failed" in text
    assert secret not in text
    # The handlers configured before the display are back once it ended.
    assert len(after) == 1
    assert not isinstance(after[0], type(display)) and after[0].formatter is not None


def test_the_progress_line_fits_an_80_column_terminal() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80, color_system=None)
    display = PassProgress(console)
    result = FeedResult(
        "18252016-06d1-5dc0-aa1b-917b2ea17a2f",
        records_listed=123456,
        counts=Counts(reports_written=4321, objects_files_written=12, reports_waiting=3),
    )

    with display.live() as progress:
        progress(result)
        console.print(display._progress)  # the line as the live display draws it

    # Control sequences (erase line, cursor moves) take no column.
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    drawn = [line for line in plain.splitlines() if "records" in line]
    assert drawn and all(len(line) <= 80 for line in drawn)
    assert "18252016…" in drawn[-1] and "123456 records" in drawn[-1]
