"""``ctx-fetcher state`` and ``health``, the schedule settings, and a state file of an older fetcher."""

from __future__ import annotations

import io
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fetcher.commands.lock import StateLock
from fetcher.commands.status import FeedState, render_table
from fetcher.ctx.record_time import earlier
from fetcher.passes.feed import DEFAULT_OVERLAP
from fetcher.state.gaps import GapCounts
from fetcher.state.pass_log import PassRecord
from fetcher.state.schema import SCHEMA_VERSION
from tests.fetcher.helpers import cursors, invoke, spool_files
from tests.standins.ctx import CTXStandIn

DB = Path(".fetcher") / "fetcher.sqlite3"


def _state(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    result = invoke(["state", "--json"], env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    return {feed["feed_id"]: feed for feed in document["feeds"]}


def _files_of(spool_dir: Path, feed_id: str) -> int:
    return sum(1 for p in spool_files(spool_dir) if feed_id in p.parts)


def test_state_shows_what_each_pass_did(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed, other = standin.active_feed_ids
    standin.inject("status", path_contains=f"{feed}/objects/", status=503, times=100)
    assert invoke(["once"], env).exit_code == 1
    standin.faults.clear()
    first = _state(env)

    assert first[feed]["last_pass"]["result"] == "failed"
    assert first[feed]["last_error"].startswith("CTX answered 503")
    assert first[feed]["cursor"] is None
    assert first[feed]["last_success_at"] is None
    assert first[other]["last_pass"]["result"] == "ok"
    assert first[other]["last_pass"]["files_written"] == _files_of(spool_dir, other) > 0
    assert first[other]["cursor"] == cursors(spool_dir)[(other, "listing")]
    assert first[other]["last_error"] is None

    assert invoke(["once"], env).exit_code == 0
    second = _state(env)

    written = _files_of(spool_dir, feed)
    assert second[feed]["last_pass"]["result"] == "ok"
    assert second[feed]["last_pass"]["files_written"] == second[feed]["files_written_total"]
    assert second[feed]["files_written_total"] == written > 0
    assert second[feed]["last_pass"]["records_listed"] > 0
    # The last error stays visible after the feed recovered, with its time.
    assert second[feed]["last_error"] == first[feed]["last_error"]
    assert second[feed]["last_error_at"] < second[feed]["last_pass"]["started_at"]
    assert second[other]["last_pass"]["files_written"] == 0
    assert second[other]["files_written_total"] == _files_of(spool_dir, other)
    for entry in second.values():
        assert entry["running_since"] is None
        assert entry["last_pass"]["started_at"] <= entry["last_pass"]["ended_at"]

    table = invoke(["state"], env)
    assert table.exit_code == 0
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
    assert rows[feed].split()[1] == second[feed]["cursor"]
    assert rows[feed].split()[7:9] == ["ok", f"{written}/{written}"]
    assert "CTX answered 503" in rows[feed]


def test_state_marks_a_pass_that_did_not_finish(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    assert invoke(["once"], env).exit_code == 0
    # What a fetcher killed mid-feed leaves: a start later than the last finished pass's.
    with sqlite3.connect(spool_dir / DB) as db:
        db.execute(
            "UPDATE passes SET started_at = ? WHERE feed_id = ?",
            ("2999-01-01T00:00:00.000000Z", feed),
        )

    state = _state(env)

    assert state[feed]["running_since"] == "2999-01-01T00:00:00.000000Z"
    assert state[feed]["last_pass"]["result"] == "ok"
    assert "not finished" in invoke(["state"], env).stdout


def test_state_counts_reports_waiting_and_written_incomplete(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed, other = standin.active_feed_ids
    assert invoke(["once"], env).exit_code == 0
    first, second, third = standin.report_ids(feed)[:3]
    # What fetcher.state.gaps records: two reports wait (one lacks two objects), one went out without.
    rows = [
        (first, "indicator--1", 0),
        (first, "indicator--2", 0),
        (second, "indicator--3", 0),
        (third, "indicator--4", 1),
    ]
    with sqlite3.connect(spool_dir / DB) as db:
        db.executemany(
            "INSERT INTO report_gaps (feed_id, report_id, member_id, since, written) "
            "VALUES (?, ?, ?, '2026-01-01T00:00:00.000000Z', ?)",
            [(feed, *row) for row in rows],
        )

    state = _state(env)

    assert (state[feed]["reports_waiting"], state[feed]["reports_incomplete"]) == (2, 1)
    assert (state[other]["reports_waiting"], state[other]["reports_incomplete"]) == (0, 0)
    table = invoke(["state"], env)
    assert "REPORTS WAITING/INCOMPLETE" in table.stdout
    rows_by_feed = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert rows_by_feed[feed][9] == "2/1"
    assert rows_by_feed[other][9] == "0/0"

    # A state file of schema 1 has no report_gaps table: read as none, not as an error.
    with sqlite3.connect(spool_dir / DB) as db:
        db.executescript("DROP TABLE report_gaps; PRAGMA user_version = 1;")
    state = _state(env)
    assert (state[feed]["reports_waiting"], state[feed]["reports_incomplete"]) == (0, 0)
    assert invoke(["state"], env).exit_code == 0


def _set_ended(spool_dir: Path, ago: timedelta) -> None:
    when = (datetime.now(UTC) - ago).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with sqlite3.connect(spool_dir / DB) as db:
        db.execute("UPDATE passes SET last_ended_at = ?", (when,))


def test_health_flips_on_a_failed_pass_and_back(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    standin.inject("status", path_contains=f"{feed}/objects/", status=503, times=100)
    assert invoke(["once"], env).exit_code == 1
    standin.faults.clear()

    sick = invoke(["health"], env)

    assert sick.exit_code == 1
    assert len(sick.output.strip().splitlines()) == 1
    assert f"unhealthy: feed {feed}: the last pass failed at" in sick.output
    assert "CTX answered 503" in sick.output

    assert invoke(["once"], env).exit_code == 0
    well = invoke(["health"], env)

    assert well.exit_code == 0, well.output
    assert well.output.startswith("healthy")


def test_health_flips_on_a_stale_pass_against_either_interval_setting(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    assert invoke(["health"], env).exit_code == 0

    # Default interval: one hour. A pass ended 2 h 10 min ago is more than twice that.
    _set_ended(spool_dir, timedelta(hours=2, minutes=10))
    stale = invoke(["health"], env)

    assert stale.exit_code == 1
    assert "the last pass ended 2 h ago" in stale.output
    assert "(and 1 more)" in stale.output
    assert invoke(["health"], {**env, "CYBERTHREATEXCHANGE_INTERVAL_HOURS": "2"}).exit_code == 0
    assert invoke(["health"], {**env, "CONNECTOR_DURATION_PERIOD": "PT1H"}).exit_code == 1
    assert invoke(["health"], {**env, "CONNECTOR_DURATION_PERIOD": "P1D"}).exit_code == 0
    # Both set: CONNECTOR_DURATION_PERIOD wins.
    both = {**env, "CONNECTOR_DURATION_PERIOD": "PT30M", "CYBERTHREATEXCHANGE_INTERVAL_HOURS": "24"}
    assert invoke(["health"], both).exit_code == 1


def test_health_needs_a_finished_pass_of_every_configured_feed(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    added = str(uuid.uuid4())

    result = invoke(
        ["health"],
        {**env, "CYBERTHREATEXCHANGE_FEED_IDS": f"{env['CYBERTHREATEXCHANGE_FEED_IDS']},{added}"},
    )

    assert result.exit_code == 1
    assert f"feed {added}: no pass has finished yet" in result.output


def test_health_and_state_take_no_lock_and_ask_nothing_of_ctx(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    asked = len(standin.requests)
    # No CTX settings at all: health needs only the spool, the feeds and the schedule.
    bare = {
        k: v
        for k, v in env.items()
        if not k.startswith("CYBERTHREATEXCHANGE_") or k.endswith("FEED_IDS")
    }
    before = _dump(spool_dir)

    with StateLock(spool_dir / ".fetcher"):
        assert invoke(["health"], bare).exit_code == 0
        assert invoke(["state", "--json"], bare).exit_code == 0
        # ... while `once` is refused by the same lock.
        busy = invoke(["once"], env)
        assert busy.exit_code == 1
        assert "is using the state" in busy.output

    assert len(standin.requests) == asked
    assert _dump(spool_dir) == before


def _dump(spool_dir: Path) -> tuple[list[str], list[str]]:
    """The state's content and its files (SQLite's own -wal/-shm aside: readers of WAL use them)."""
    with sqlite3.connect(spool_dir / DB) as db:
        content = list(db.iterdump())
    names = sorted(
        p.name for p in (spool_dir / ".fetcher").iterdir() if not p.name.endswith(("-wal", "-shm"))
    )
    return content, names


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param("missing", id="missing"),
        pytest.param("empty", id="empty-dir"),
        pytest.param("other", id="some-other-dir"),
        pytest.param("receiving", id="spool-without-fetcher-state"),
    ],
)
@pytest.mark.parametrize("command", [["state"], ["state", "--json"], ["health"]])
def test_read_only_commands_refuse_a_directory_that_is_not_a_spool(
    env: dict[str, str], tmp_path: Path, layout: str, command: list[str]
) -> None:
    wrong = tmp_path / "not-the-spool"
    if layout != "missing":
        wrong.mkdir()
    if layout == "other":
        (wrong / "notes.txt").write_text("hello", encoding="utf-8")
    if layout == "receiving":
        (wrong / "incoming").mkdir()

    result = invoke(command, {**env, "SPOOL_DIR": str(wrong)})

    assert result.exit_code == 1
    assert str(wrong) in result.output
    expected = {
        "missing": "does not exist",
        "empty": "is not a spool",
        "other": "is not a spool",
        "receiving": "no fetcher state at",
    }[layout]
    assert expected in result.output
    # Refused without creating anything there.
    assert not (wrong / ".fetcher").exists()


def test_once_accepts_a_new_empty_spool_directory(
    standin: CTXStandIn, env: dict[str, str], tmp_path: Path
) -> None:
    new = tmp_path / "new-spool"
    new.mkdir()

    result = invoke(["once"], {**env, "SPOOL_DIR": str(new)})

    assert result.exit_code == 0, result.output
    assert spool_files(new)
    assert invoke(["health"], {**env, "SPOOL_DIR": str(new)}).exit_code == 0


_SCHEMA_0 = """
CREATE TABLE cursors (feed_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (feed_id, name));
CREATE TABLE reports (feed_id TEXT NOT NULL, report_id TEXT NOT NULL, sha256 TEXT NOT NULL,
    path TEXT NOT NULL, PRIMARY KEY (feed_id, report_id));
CREATE TABLE transfers (path TEXT NOT NULL PRIMARY KEY, sha256 TEXT NOT NULL,
    marked_at TEXT NOT NULL);
"""


def test_a_state_file_of_the_previous_schema_keeps_working(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    old_cursor = "2024-01-03T00:00:00.000000Z"
    (spool_dir / DB).parent.mkdir(parents=True)
    (spool_dir / "incoming").mkdir()
    with sqlite3.connect(spool_dir / DB) as db:
        db.executescript(_SCHEMA_0)
        db.execute("INSERT INTO cursors VALUES (?, 'listing', ?)", (feed, old_cursor))

    # Read-only commands read it as it is: a cursor, no pass yet.
    state = _state(env)
    assert state[feed]["cursor"] == old_cursor
    assert state[feed]["last_pass"] is None
    assert (state[feed]["reports_waiting"], state[feed]["reports_incomplete"]) == (0, 0)
    assert "no pass has finished yet" in invoke(["health"], env).output
    with sqlite3.connect(spool_dir / DB) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0

    result = invoke(["once"], env)

    assert result.exit_code == 0, result.output
    first = standin.queries(f"{feed}/objects/")[0]
    # From the old cursor, less the overlap every pass reads again.
    assert first.query.get("added_after") == earlier(old_cursor, DEFAULT_OVERLAP)
    with sqlite3.connect(spool_dir / DB) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert invoke(["health"], env).exit_code == 0


def test_a_state_file_of_a_newer_fetcher_is_left_alone(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    (spool_dir / DB).parent.mkdir(parents=True)
    with sqlite3.connect(spool_dir / DB) as db:
        db.executescript(_SCHEMA_0)
        db.execute("PRAGMA user_version = 99")

    result = invoke(["once"], env)

    assert result.exit_code == 1
    assert "written by a newer ctx-fetcher" in result.output
    assert spool_files(spool_dir) == []


def test_a_failed_feed_error_is_reported_once(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    standin.inject("status", path_contains=f"{feed}/objects/", status=503, times=100)

    result = invoke(["once"], env)

    assert result.exit_code == 1
    assert result.output.count("CTX answered 503") == 1
    assert f"feed {feed} failed: CTX answered 503" in result.output
    assert f"{feed}: FAILED" in result.stdout
    assert f"1 of 2 feed(s) failed: {feed}" in result.output


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("PT6H", 21600, id="PT6H"),
        pytest.param("P1D", 86400, id="P1D"),
        pytest.param("pt90m", 5400, id="lower-case"),
        pytest.param("P1DT2H30M", 95400, id="mixed"),
        pytest.param("PT1.5H", 5400, id="fraction"),
    ],
)
def test_duration_period_sets_the_schedule(
    standin: CTXStandIn, env: dict[str, str], value: str, seconds: int
) -> None:
    result = invoke(["run", "--max-passes", "1"], {**env, "CONNECTOR_DURATION_PERIOD": value})

    assert result.exit_code == 0, result.output
    assert f"a pass every {seconds} s (CONNECTOR_DURATION_PERIOD)" in result.output
    assert f"writing to the spool {Path(env['SPOOL_DIR']).absolute()}" in result.output
    assert "both set" not in result.output


def test_interval_hours_stays_the_default_and_loses_to_duration_period(
    standin: CTXStandIn, env: dict[str, str]
) -> None:
    alone = invoke(["run", "--max-passes", "1"], {**env, "CYBERTHREATEXCHANGE_INTERVAL_HOURS": "3"})
    both = invoke(
        ["run", "--max-passes", "1"],
        {**env, "CYBERTHREATEXCHANGE_INTERVAL_HOURS": "3", "CONNECTOR_DURATION_PERIOD": "PT2H"},
    )

    assert "a pass every 10800 s (CYBERTHREATEXCHANGE_INTERVAL_HOURS)" in alone.output
    assert "a pass every 7200 s (CONNECTOR_DURATION_PERIOD)" in both.output
    assert "are both set; CONNECTOR_DURATION_PERIOD wins" in both.output


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("6h", "is not an ISO 8601 duration", id="not-iso"),
        pytest.param("3600", "is not an ISO 8601 duration", id="bare-number"),
        pytest.param("P1M", "is not an ISO 8601 duration", id="months"),
        pytest.param("-PT1H", "is not an ISO 8601 duration", id="negative"),
        pytest.param("PT", "is not an ISO 8601 duration", id="empty"),
        pytest.param("PT30S", "at least PT1M", id="too-short"),
    ],
)
def test_a_bad_duration_period_is_refused_clearly(
    env: dict[str, str], spool_dir: Path, value: str, message: str
) -> None:
    result = invoke(["run", "--max-passes", "1"], {**env, "CONNECTOR_DURATION_PERIOD": value})

    assert result.exit_code == 1
    assert "CONNECTOR_DURATION_PERIOD" in result.output
    assert message in result.output
    assert not spool_dir.exists()


def test_state_on_a_narrow_terminal_is_a_block_per_feed_with_the_whole_error() -> None:
    error = "CTX refused v1/subscriptions/ with 401: the API key is wrong or not entitled"
    at = "2026-12-02T21:36:24.123456Z"
    feed = "0b2d4e5f-1111-4111-8111-111111111111"
    passes = PassRecord(feed, at, at, at, "failed", 0, 0, 10, None, error, at)
    console = Console(width=80, file=io.StringIO())

    render_table([FeedState(feed, True, None, passes, None, GapCounts(2, 1))], console)

    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert all(len(line) <= 80 for line in text.splitlines())
    assert text.splitlines()[0] == feed
    assert error in " ".join(part.strip() for part in text.split())
    assert "reports waiting/incomplete  2/1" in text
