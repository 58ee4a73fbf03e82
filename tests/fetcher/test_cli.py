"""The ``ctx-fetcher`` command line: help, configuration errors, ``feeds``, ``run``."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.fetcher.helpers import invoke, spool_files
from tests.standins.ctx import CTXStandIn


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--help"], id="main"),
        pytest.param(["once", "--help"], id="once"),
        pytest.param(["run", "--help"], id="run"),
        pytest.param(["feeds", "--help"], id="feeds"),
        pytest.param(["state", "--help"], id="state"),
        pytest.param(["health", "--help"], id="health"),
        pytest.param(["reset", "--help"], id="reset"),
    ],
)
def test_help_everywhere(args: list[str], tmp_path: Path) -> None:
    result = invoke(args, {})

    assert result.exit_code == 0
    assert "Usage: ctx-fetcher" in result.output
    if args != ["--help"]:
        assert "--config FILE" in result.output
    assert "--max-passes" not in result.output


def test_version() -> None:
    result = invoke(["--version"], {})

    assert result.exit_code == 0
    assert re.fullmatch(r"ctx-fetcher, version \d+\.\d+\.\d+\S*\n", result.output)


def test_config_errors_name_each_variable_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "CYBERTHREATEXCHANGE_API_KEY": "",
        "CYBERTHREATEXCHANGE_FEED_IDS": "not-a-uuid",
        "CYBERTHREATEXCHANGE_INTERVAL_HOURS": "0",
        "CYBERTHREATEXCHANGE_BASE_URL": "ftp://example.com",
        "SPOOL_DIR": str(tmp_path / "spool"),
    }

    result = invoke(["once"], env)

    assert result.exit_code != 0
    for variable in (
        "CYBERTHREATEXCHANGE_API_KEY",
        "CYBERTHREATEXCHANGE_FEED_IDS",
        "CYBERTHREATEXCHANGE_INTERVAL_HOURS",
        "CYBERTHREATEXCHANGE_BASE_URL",
    ):
        assert variable in result.output
    assert list(tmp_path.iterdir()) == []


def test_config_file_is_read(
    standin: CTXStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spool = tmp_path / "elsewhere"
    config = tmp_path / "fetcher.yml"
    config.write_text(
        "cyberthreatexchange:\n"
        f"  base_url: {standin.base_url}\n"
        f"  feed_ids: {standin.active_feed_ids[0]}\n"
        "spool:\n"
        f"  dir: {spool}\n",
        encoding="utf-8",
    )

    result = invoke(
        ["once", "--config", str(config)], {"CYBERTHREATEXCHANGE_API_KEY": standin.api_key}
    )

    assert result.exit_code == 0, result.output
    assert spool_files(spool)


def test_feeds_lists_subscriptions_and_configured_ones(
    standin: CTXStandIn, env: dict[str, str]
) -> None:
    active, other = standin.active_feed_ids
    inactive = standin.inactive_feed_ids[0]
    unknown = str(uuid.uuid4())
    env["CYBERTHREATEXCHANGE_FEED_IDS"] = f"{active},{unknown}"

    result = invoke(["feeds"], env)

    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()}
    assert rows["FEED"] == ["FEED", "ID", "NAME", "STATUS", "CONFIGURED"]
    assert rows[active][-2:] == ["active", "yes"]
    assert rows[other][-2:] == ["active", "no"]
    assert rows[inactive][-2:] == ["inactive", "no"]
    assert rows[unknown][-3:] == ["not", "subscribed", "yes"]


def test_run_survives_a_failed_pass(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    standin.inject("status", path_contains="/subscriptions/", status=401)

    result = invoke(["run", "--max-passes", "2", "--interval-seconds", "0"], env)

    assert result.exit_code == 0, result.output
    assert "pass finished with 2 failed feed(s)" in result.output
    assert "stopped after 2 pass(es)" in result.output
    assert len(standin.queries("/subscriptions/")) == 2
    assert spool_files(spool_dir)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
)
def test_run_stops_cleanly_on_signal(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, signum: signal.Signals
) -> None:
    def send_when_running() -> None:
        # A listing request means the handlers are installed and the first feed is under way.
        deadline = time.monotonic() + 20
        while not standin.queries("/objects/") and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signum)

    sender = threading.Thread(target=send_when_running)
    sender.start()
    result = invoke(["run", "--interval-seconds", "3600"], env)
    sender.join()

    assert result.exit_code == 0, result.output
    assert "stopped after 1 pass(es)" in result.output
    # The feed under way when the signal came is finished, not cut short.
    first = standin.active_feed_ids[0]
    written = [p for p in spool_files(spool_dir) if first in p.parts]
    assert len([p for p in written if "_report--" in p.name]) == len(
        standin.feeds[first].report_ids
    )


def test_off_a_terminal_only_log_lines_and_summaries(
    standin: CTXStandIn, env: dict[str, str]
) -> None:
    result = invoke(["once"], {**env, "CONNECTOR_LOG_LEVEL": "info"})

    assert result.exit_code == 0
    # No progress display: no carriage return, no terminal control sequence.
    assert "\r" not in result.output
    assert "\x1b" not in result.output
    log_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) \S+ ")
    assert all(log_line.match(line) for line in result.stderr.splitlines())
    for feed_id in standin.active_feed_ids:
        assert re.search(
            rf"^{feed_id}: records listed \d+ .*, reports written 8, unchanged 0",
            result.stdout,
            re.M,
        )
