"""``ctx-fetcher audit``: the listing read again from its start, compared with the fetcher's state."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from fetcher.commands.audit import INCOMPLETE
from fetcher.commands.lock import StateLock
from tests.fetcher.helpers import invoke
from tests.standins.ctx import CTXStandIn

DB = Path(".fetcher") / "fetcher.sqlite3"


def _audit(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    result = invoke(["audit", "--json", *args], env)
    assert result.exit_code in (0, INCOMPLETE), result.output
    document = json.loads(result.stdout)
    assert document["complete"] is (result.exit_code == 0)
    return result.exit_code, {feed["feed_id"]: feed for feed in document["feeds"]}


def _dump(spool_dir: Path) -> list[str]:
    with sqlite3.connect(spool_dir / DB) as db:
        return list(db.iterdump())


def _member(standin: CTXStandIn, feed: str) -> tuple[str, str]:
    """A report of the feed and an object its ``object_refs`` name that is not a report."""
    for report_id in standin.report_ids(feed):
        for ref in standin.object(feed, report_id).get("object_refs", []):
            if not ref.startswith("report--") and ref in standin.expected_ids(feed):
                return report_id, str(ref)
    raise AssertionError("the stand-in's feed has no report with a member")


def test_after_a_pass_the_audit_is_clean_and_touches_nothing(
    standin: CTXStandIn,
    env: dict[str, str],
    spool_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert invoke(["once"], env).exit_code == 0
    before = _dump(spool_dir)
    asked = len(standin.requests)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    # Held as `ctx-fetcher run` holds it: the audit takes no lock.
    with StateLock(spool_dir / ".fetcher"):
        text = invoke(["audit"], env)
        code, feeds = _audit(env)

    assert text.exit_code == 0, text.output
    assert code == 0
    lines = text.stdout.splitlines()
    assert len(lines) == len(standin.active_feed_ids)
    for feed_id, line in zip(standin.active_feed_ids, lines, strict=True):
        entry = feeds[feed_id]
        assert entry == {
            "feed_id": feed_id,
            "complete": True,
            "records": entry["records"],
            "objects": len(standin.expected_ids(feed_id)),
            "not_in_files": [],
            "reports_lacking_members": {},
            "members_not_listed": {},
            "reports_waiting": 0,
        }
        assert entry["records"] >= entry["objects"]
        assert (
            line == f"{feed_id}: {entry['records']} records, {entry['objects']} objects, complete"
        )
    audited = standin.requests[asked:]
    assert audited
    assert all(r.path.endswith("/objects/") for r in audited)
    # No `added_after` on the first request of each feed: read from the start.
    for feed_id in standin.active_feed_ids:
        first = next(r for r in audited if feed_id in r.path)
        assert "added_after" not in first.query
    assert _dump(spool_dir) == before
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    "loss",
    [
        pytest.param("DELETE FROM mirror WHERE feed_id = ? AND object_id = ?", id="row-deleted"),
        pytest.param(
            "UPDATE mirror SET written = NULL WHERE feed_id = ? AND object_id = ?",
            id="marked-unwritten",
        ),
        pytest.param(
            "UPDATE mirror SET written = 'f00d' WHERE feed_id = ? AND object_id = ?",
            id="older-version-written",
        ),
    ],
)
def test_a_lost_object_is_named_until_a_reset_pass_writes_it(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, loss: str
) -> None:
    feed, other = standin.active_feed_ids
    assert invoke(["once"], env).exit_code == 0
    _, lost = _member(standin, feed)
    with sqlite3.connect(spool_dir / DB) as db:
        assert db.execute(loss, (feed, lost)).rowcount == 1

    text = invoke(["audit"], env)
    code, feeds = _audit(env)

    assert text.exit_code == code == INCOMPLETE
    assert feeds[feed]["not_in_files"] == [lost]
    assert feeds[feed]["reports_lacking_members"] == {}
    assert feeds[other]["complete"] is True
    summary = f"{feed}: {feeds[feed]['records']} records, {feeds[feed]['objects']} objects, "
    assert f"{summary}1 object in no file\n  in no file: {lost}\n" in text.stdout
    assert f"{other}: " in text.stdout

    assert invoke(["reset", "--feed", feed, "--since", "2000-01-01"], env).exit_code == 0
    assert invoke(["once"], env).exit_code == 0

    assert invoke(["audit"], env).exit_code == 0


def test_a_report_written_without_a_member_the_listing_holds_is_named(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    assert invoke(["once"], env).exit_code == 0
    report_id, member = _member(standin, feed)
    ghost = f"indicator--{uuid.uuid4()}"
    # What a report whose grace ran out before these arrived leaves (fetcher.state.gaps).
    with sqlite3.connect(spool_dir / DB) as db:
        db.executemany(
            "INSERT INTO report_gaps (feed_id, report_id, member_id, since, written) "
            "VALUES (?, ?, ?, '2026-01-01T00:00:00.000000Z', 1)",
            [(feed, report_id, member), (feed, report_id, ghost)],
        )

    text = invoke(["audit", "--feed", feed], env)
    code, feeds = _audit(env, "--feed", feed)

    assert text.exit_code == code == INCOMPLETE
    assert list(feeds) == [feed]
    assert feeds[feed]["not_in_files"] == []
    assert feeds[feed]["reports_lacking_members"] == {report_id: [member]}
    assert feeds[feed]["members_not_listed"] == {report_id: [ghost]}
    assert "1 report lacking members" in text.stdout
    assert f"  {report_id} is in a file without: {member}" in text.stdout

    # A member the listing does not hold is no fault of the fetcher's: information only.
    with sqlite3.connect(spool_dir / DB) as db:
        db.execute("DELETE FROM report_gaps WHERE member_id = ?", (member,))
    code, feeds = _audit(env, "--feed", feed)

    assert code == 0
    assert feeds[feed]["members_not_listed"] == {report_id: [ghost]}


def test_a_report_of_the_wrong_version_is_counted_once(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    assert invoke(["once"], env).exit_code == 0
    report_id, member = _member(standin, feed)
    with sqlite3.connect(spool_dir / DB) as db:
        db.execute(
            "INSERT INTO report_gaps VALUES (?, ?, ?, '2026-01-01T00:00:00.000000Z', 1)",
            (feed, report_id, member),
        )
        db.execute("UPDATE mirror SET written = NULL WHERE object_id = ?", (report_id,))

    code, feeds = _audit(env, "--feed", feed)

    assert code == INCOMPLETE
    # Its newest version is in no file: that is what is wrong with it, said once.
    assert feeds[feed]["not_in_files"] == [report_id]
    assert feeds[feed]["reports_lacking_members"] == {}


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        pytest.param(str(uuid.UUID(int=7)), "is not configured", id="not-configured"),
        pytest.param("../etc", "--feed", id="not-a-uuid"),
    ],
)
def test_feed_must_be_a_configured_one(
    standin: CTXStandIn, env: dict[str, str], feed: str, message: str
) -> None:
    result = invoke(["audit", "--feed", feed], env)

    assert result.exit_code in (1, 2)
    assert message in result.output
    assert standin.requests == []


def test_no_state_and_a_ctx_failure_are_errors(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    missing = invoke(["audit"], {**env, "SPOOL_DIR": str(empty)})

    assert missing.exit_code == 1
    assert str(empty) in missing.output
    assert not (empty / ".fetcher").exists()

    assert invoke(["once"], env).exit_code == 0
    feed = standin.active_feed_ids[1]
    standin.inject("status", path_contains=f"{feed}/objects/", status=503, times=100)

    failed = invoke(["audit"], env)

    assert failed.exit_code == 1
    assert "Error: CTX answered 503" in failed.output


def test_help_names_the_exit_statuses() -> None:
    result = invoke(["audit", "--help"], {})

    assert result.exit_code == 0
    for text in ("Usage: ctx-fetcher audit", "--config FILE", "--feed UUID", "--json"):
        assert text in result.output
    assert f"{INCOMPLETE} when an object" in " ".join(result.output.split())
