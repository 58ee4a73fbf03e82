"""The tables of the fetcher's database and the steps that bring an older state file up to date.

The schema's version is SQLite's ``user_version`` (https://sqlite.org/pragma.html#pragma_user_version).
Each step of :data:`MIGRATIONS` brings it from its index to index + 1, in one transaction with the
version. Steps only add (or replace an index), so a state file written before a step keeps every
cursor, ledger entry and mirrored object it had.
"""

from __future__ import annotations

#: The state file, in the state directory.
DB_NAME = "fetcher.sqlite3"

#: The tables of the first fetcher, before any versioned step (``user_version`` 0).
BASE = """
CREATE TABLE IF NOT EXISTS cursors (
    feed_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (feed_id, name));
CREATE TABLE IF NOT EXISTS reports (
    feed_id TEXT NOT NULL, report_id TEXT NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (feed_id, report_id));
CREATE TABLE IF NOT EXISTS transfers (
    path TEXT NOT NULL PRIMARY KEY, sha256 TEXT NOT NULL, marked_at TEXT NOT NULL);
"""

MIGRATIONS = (
    # 1: what each feed's passes did, and the resets the next pass carries out.
    """
    CREATE TABLE IF NOT EXISTS passes (
        feed_id TEXT NOT NULL PRIMARY KEY,
        started_at TEXT,
        last_started_at TEXT, last_ended_at TEXT, last_result TEXT,
        last_records INTEGER NOT NULL DEFAULT 0, last_files INTEGER NOT NULL DEFAULT 0,
        files_total INTEGER NOT NULL DEFAULT 0,
        last_ok_at TEXT, error TEXT, error_at TEXT);
    CREATE TABLE IF NOT EXISTS resets (
        feed_id TEXT NOT NULL PRIMARY KEY, since TEXT, rewrite INTEGER NOT NULL,
        asked_at TEXT NOT NULL);
    """,
    # 2: reports that name objects the mirror does not hold.
    """
    CREATE TABLE IF NOT EXISTS report_gaps (
        feed_id TEXT NOT NULL, report_id TEXT NOT NULL, member_id TEXT NOT NULL,
        since TEXT NOT NULL, written INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (feed_id, report_id, member_id));
    CREATE INDEX IF NOT EXISTS report_gaps_member ON report_gaps (feed_id, member_id);
    """,
    # 3: the mirror. A state file of schema 0 to 2 may hold it already, made when its fetcher first
    # read a page, with an earlier index of its pending rows (mirror_pending), replaced here.
    """
    CREATE TABLE IF NOT EXISTS mirror (
        feed_id TEXT NOT NULL, object_id TEXT NOT NULL, type TEXT NOT NULL,
        version TEXT NOT NULL, sha256 TEXT NOT NULL, stamp TEXT NOT NULL, body BLOB NOT NULL,
        written TEXT, source_ref TEXT, target_ref TEXT,
        PRIMARY KEY (feed_id, object_id));
    DROP INDEX IF EXISTS mirror_pending;
    CREATE INDEX IF NOT EXISTS mirror_pending_rows ON mirror (feed_id, type)
        WHERE written IS NOT sha256;
    CREATE INDEX IF NOT EXISTS mirror_source ON mirror (feed_id, source_ref)
        WHERE source_ref IS NOT NULL;
    CREATE INDEX IF NOT EXISTS mirror_target ON mirror (feed_id, target_ref)
        WHERE target_ref IS NOT NULL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
