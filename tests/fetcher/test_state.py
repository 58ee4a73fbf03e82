"""The fetcher's ledger: batched commits."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetcher.state import Ledger

FEED = "0b2d4e5f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"


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
