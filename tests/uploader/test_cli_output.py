"""What ``ctx-uploader`` prints: help and version, one log line per imported file, the pending
summary of ``once``, and its live progress on a terminal (none off a terminal)."""

from __future__ import annotations

import io
import json
import re
from importlib.metadata import version

import pytest
from click.testing import CliRunner
from rich.console import Console

from tests.standins.opencti import OpenCTIStandIn
from tests.uploader.conftest import (
    FEED_A,
    FEED_B,
    FEED_C,
    FakeImporter,
    SpoolFiles,
    invoke,
    transient_then_ok,
)
from uploader.commands.cli import main

pytest_plugins = ["tests.standins.fixtures"]


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([], id="group"),
        pytest.param(["once"], id="once"),
        pytest.param(["health"], id="health"),
        pytest.param(["status"], id="status"),
    ],
)
def test_dash_h_is_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "-h"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ctx-uploader, version {version('ctx-opencti-spool')}"


def test_once_summarises_pending_files_per_feed(env: dict[str, str], files: SpoolFiles) -> None:
    paths = {
        feed: [files.add(feed) for _ in range(count)]
        for feed, count in ((FEED_A, 4), (FEED_B, 2), (FEED_C, 1))
    }
    oldest = min((p for ps in paths.values() for p in ps), key=lambda p: p.name)

    result = invoke(
        ["once", "--max-wait", "0.5"], env, FakeImporter(behaviour=transient_then_ok(10**6))
    )

    assert result.exit_code == 3
    lines = result.stdout.splitlines()
    assert lines[0] == "done 0, failed 0, pending 7, left 0, reclaimed 0"
    assert lines[1] == (
        f"pending per feed: {FEED_A} 4, {FEED_B} 2, {FEED_C} 1; oldest incoming/{files.rel(oldest)}"
    )
    assert len(lines) == 2


def test_per_file_lines_are_debug_only(
    env: dict[str, str], files: SpoolFiles, opencti_standin: OpenCTIStandIn
) -> None:
    pytest.importorskip("pycti")
    pycti_env = {
        **env,
        "OPENCTI_URL": opencti_standin.url,
        "OPENCTI_TOKEN": opencti_standin.token,
        "CONNECTOR_LOG_LEVEL": "info",
    }
    for feed in (FEED_A, FEED_B):
        files.add(feed)

    quiet = invoke(["once"], pycti_env)

    assert quiet.exit_code == 0, quiet.output
    assert " imported " not in quiet.stderr
    assert "bundle pushed" not in quiet.stderr

    added = [files.add(feed) for feed in (FEED_A, FEED_B) for _ in range(2)]
    result = invoke(["once"], {**pycti_env, "CONNECTOR_LOG_LEVEL": "debug"})

    assert result.exit_code == 0, result.output
    imported = [
        line
        for line in result.stderr.splitlines()
        if " DEBUG uploader.importing.process imported " in line
    ]
    assert len(imported) == len(added)
    works = {w.id for w in opencti_standin.works.values()}
    for path in added:
        (line,) = [x for x in imported if f"file={files.rel(path)}" in x]
        feed = files.rel(path).split("/")[0]
        assert f"feed={feed}" in line
        work = re.search(r"work_id=(\S+)", line)
        assert work is not None and work[1] in works
        assert "objects=2" in line


def test_once_shows_progress_on_a_terminal_and_logs_above_it(
    env: dict[str, str], files: SpoolFiles
) -> None:
    for feed in (FEED_A, FEED_B, FEED_C):
        files.add(feed)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system=None)

    result = invoke(["once"], env, FakeImporter(), console=console)

    assert result.exit_code == 0, result.output
    shown = screen.getvalue()
    assert "files/s" in shown and "done 3, failed 0, pending 0" in shown
    # The log lines went through the display's console, whole lines above it.
    assert "started (once)" in shown
    assert "files/s" not in result.stderr and "started (once)" not in result.stderr
    assert result.stdout.startswith("done 3, failed 0, pending 0")


def test_once_off_a_terminal_prints_log_lines_only(env: dict[str, str], files: SpoolFiles) -> None:
    files.add(FEED_A)
    result = invoke(["once"], env, FakeImporter())
    assert result.exit_code == 0
    assert "files/s" not in result.output
    assert "started (once)" in result.stderr


def test_the_imported_line_is_debug_and_in_json_carries_feed_file_work_and_objects(
    env: dict[str, str], files: SpoolFiles
) -> None:
    added = [files.add(FEED_A), files.add(FEED_B)]
    quiet = invoke(["once"], {**env, "OPENCTI_JSON_LOGGING": "true"}, FakeImporter())
    assert quiet.exit_code == 0, quiet.output
    # At info, a file imported is no line of its own.
    assert not [line for line in quiet.stderr.splitlines() if '"imported ' in line]
    added = [files.add(FEED_A), files.add(FEED_B)]
    result = invoke(
        ["once"],
        {**env, "OPENCTI_JSON_LOGGING": "true", "CONNECTOR_LOG_LEVEL": "debug"},
        FakeImporter(),
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    imported = [r for r in records if r["message"].startswith("imported ")]
    assert sorted(r["file"] for r in imported) == sorted(files.rel(p) for p in added)
    for record in imported:
        assert record["level"] == "DEBUG"
        assert record["feed"] == record["file"].split("/")[0]
        assert record["work_id"].startswith("work-")
        assert record["objects"] == 2
