"""The fetcher's ledger: batched commits, and state files of older schemas brought up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fetcher.state.ledger import Ledger
from fetcher.state.schema import DB_NAME, SCHEMA_VERSION

FEED = "0b2d4e5f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
INDICATOR = "indicator--1c2d3e4f-0000-4000-8000-000000000001"


def test_a_batch_commits_its_writes_together_at_the_end(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger, Ledger(tmp_path) as other:
        with ledger.batch():
            ledger.record_report(FEED, "report--1", "b" * 64, "p")
            ledger.set_cursor(FEED, "listing", "2025-01-01T00:00:00.000000Z")
            assert other.cursor(FEED, "listing") is None
            assert other.report_shas(FEED, ["report--1"]) == {}
        assert other.cursor(FEED, "listing") == "2025-01-01T00:00:00.000000Z"
        assert other.report_shas(FEED, ["report--1"]) == {"report--1": "b" * 64}


def test_a_batch_ended_by_an_error_still_commits_what_was_recorded(tmp_path: Path) -> None:
    # Entries are written only for published files: keeping them is always right.
    with Ledger(tmp_path) as ledger:
        with pytest.raises(RuntimeError), ledger.batch():
            ledger.record_report(FEED, "report--1", "a" * 64, "p")
            raise RuntimeError("a listing request failed")
        assert ledger.report_shas(FEED, ["report--1"]) == {"report--1": "a" * 64}
        ledger.record_report(FEED, "report--2", "c" * 64, "q")
        assert ledger.report_shas(FEED, ["report--2"]) == {"report--2": "c" * 64}


def test_a_state_of_the_first_schema_with_its_mirror_is_brought_up_to_date(tmp_path: Path) -> None:
    # The first fetcher to keep a mirror: no versioned step yet (user_version 0), the mirror made
    # when a pass first read a page, its pending rows indexed by object id.
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.executescript(
            """
            CREATE TABLE cursors (
                feed_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
                PRIMARY KEY (feed_id, name));
            CREATE TABLE reports (
                feed_id TEXT NOT NULL, report_id TEXT NOT NULL, sha256 TEXT NOT NULL,
                path TEXT NOT NULL, PRIMARY KEY (feed_id, report_id));
            CREATE TABLE transfers (
                path TEXT NOT NULL PRIMARY KEY, sha256 TEXT NOT NULL, marked_at TEXT NOT NULL);
            CREATE TABLE mirror (
                feed_id TEXT NOT NULL, object_id TEXT NOT NULL, type TEXT NOT NULL,
                version TEXT NOT NULL, sha256 TEXT NOT NULL, stamp TEXT NOT NULL,
                body BLOB NOT NULL, written TEXT, source_ref TEXT, target_ref TEXT,
                PRIMARY KEY (feed_id, object_id));
            CREATE INDEX mirror_pending ON mirror (feed_id, type, object_id)
                WHERE written IS NOT sha256;
            CREATE INDEX mirror_source ON mirror (feed_id, source_ref)
                WHERE source_ref IS NOT NULL;
            CREATE INDEX mirror_target ON mirror (feed_id, target_ref)
                WHERE target_ref IS NOT NULL;
            """
        )
        db.execute(
            "INSERT INTO cursors VALUES (?, 'listing', '2025-01-01T00:00:00.000000Z')", (FEED,)
        )
        db.execute(
            "INSERT INTO mirror (feed_id, object_id, type, version, sha256, stamp, body) "
            "VALUES (?, ?, 'indicator', 'v|', ?, '2025-01-01T00:00:00.000000Z', ?)",
            (FEED, INDICATOR, "1" * 64, b'{"id":"' + INDICATOR.encode() + b'"}'),
        )
    db.close()
    with Ledger(tmp_path, read_only=True) as old:
        # A read-only look changes nothing, and sees no pass records yet.
        assert old.passes.records() == {}
        assert old.mirror.written(FEED, [INDICATOR]) == {}
    with Ledger(tmp_path) as ledger:
        assert ledger.cursor(FEED, "listing") == "2025-01-01T00:00:00.000000Z"
        assert list(ledger.mirror.pending(FEED, reports=False)) == [[INDICATOR]]
        ledger.mirror.mark_written(FEED, {INDICATOR: "1" * 64})
        assert list(ledger.mirror.pending(FEED, reports=False)) == []
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    db.close()
    assert "mirror_pending" not in indexes
    assert {"mirror_pending_rows", "mirror_source", "mirror_target"} <= indexes


def test_a_state_of_schema_2_without_a_mirror_gets_one(tmp_path: Path) -> None:
    # A fetcher of schema 2 that never read a page had no mirror table.
    with Ledger(tmp_path) as ledger:
        ledger.set_cursor(FEED, "listing", "2025-01-01T00:00:00.000000Z")
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.executescript("DROP TABLE mirror; PRAGMA user_version = 2;")
    db.close()
    with Ledger(tmp_path, read_only=True) as old:
        assert old.mirror.written(FEED, [INDICATOR]) == {}
    with Ledger(tmp_path) as ledger:
        assert ledger.mirror.get(FEED, [INDICATOR]) == {}
        assert ledger.cursor(FEED, "listing") == "2025-01-01T00:00:00.000000Z"
