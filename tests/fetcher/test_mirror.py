"""The mirror: the newest version per STIX id, kept on disk."""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path

from fetcher.state.ledger import Ledger
from fetcher.state.schema import DB_NAME
from fetcher.stix import canonical_json

FEED = "0b2d4e5f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
IND = "indicator--7e2b3a3c-0d4f-4c55-9a57-1b0b2f6b9a01"


def _indicator(modified: str, name: str) -> dict[str, object]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": IND,
        "created": "2025-01-01T00:00:00.000Z",
        "modified": modified,
        "name": name,
        "pattern": "[ipv4-addr:value = '198.51.100.1']",
        "pattern_type": "stix",
        "valid_from": "2025-01-01T00:00:00Z",
    }


def test_newest_version_kept_whatever_the_order(tmp_path: Path) -> None:
    newer, older = (
        _indicator("2025-03-01T00:00:00.000Z", "b"),
        _indicator("2025-02-01T00:00:00.000Z", "a"),
    )
    with Ledger(tmp_path) as ledger:
        mirror = ledger.mirror
        assert mirror.apply_pages(FEED, [([newer], "2025-03-02T00:00:00.000000Z")]).changed == 1
        assert mirror.apply_pages(FEED, [([older], "2025-03-03T00:00:00.000000Z")]).changed == 0
        assert mirror.apply_pages(FEED, [([newer], "2025-03-04T00:00:00.000000Z")]).changed == 0
        kept = mirror.get(FEED, [IND])[IND]
    assert kept.data == canonical_json(newer)
    assert kept.obj()["name"] == "b"


def test_bodies_compressed_by_an_earlier_fetcher_are_read(tmp_path: Path) -> None:
    # Earlier versions stored zlib-compressed bodies; a state file they wrote keeps working.
    obj = _indicator("2025-03-01T00:00:00.000Z", "old")
    data = canonical_json(obj)
    Ledger(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(
        "INSERT INTO mirror (feed_id, object_id, type, version, sha256, stamp, body) "
        "VALUES (?, ?, 'indicator', ?, ?, ?, ?)",
        (
            FEED,
            IND,
            "2025-03-01T00:00:00.000000Z|",
            "0" * 64,
            "2025-03-01T00:00:00.000000Z",
            zlib.compress(data, 1),
        ),
    )
    db.commit()
    db.close()
    with Ledger(tmp_path) as ledger:
        mirror = ledger.mirror
        assert mirror.get(FEED, [IND])[IND].data == data
        newer = _indicator("2025-04-01T00:00:00.000Z", "new")
        assert mirror.apply_pages(FEED, [([newer], "")]).changed == 1
        kept = mirror.get(FEED, [IND])[IND]
    assert json.loads(kept.data)["name"] == "new"
    raw = sqlite3.connect(tmp_path / DB_NAME).execute("SELECT body FROM mirror").fetchone()[0]
    assert raw == canonical_json(newer)  # stored as it is from now on


def test_written_marks_only_the_version_carried(tmp_path: Path) -> None:
    old, new = (
        _indicator("2025-02-01T00:00:00.000Z", "a"),
        _indicator("2025-03-01T00:00:00.000Z", "b"),
    )
    other = {**_indicator("2025-02-01T00:00:00.000Z", "c"), "id": IND.replace("7e2b", "7e2c")}
    with Ledger(tmp_path) as ledger:
        mirror = ledger.mirror
        mirror.apply_pages(FEED, [([old, other], "")])
        carried = {IND: mirror.get(FEED, [IND])[IND].sha256}
        mirror.apply_pages(FEED, [([new], "")])  # a newer version arrives after the file was built
        mirror.mark_written(
            FEED,
            {**carried, str(other["id"]): mirror.get(FEED, [other["id"]])[str(other["id"])].sha256},
        )
        assert list(mirror.pending(FEED, reports=False)) == [[IND]]
        mirror.mark_written(FEED, {IND: mirror.get(FEED, [IND])[IND].sha256})
        assert list(mirror.pending(FEED, reports=False)) == []


def test_pending_in_batches_reports_apart_each_once(tmp_path: Path) -> None:
    def obj(kind: str, uuid: str) -> dict[str, object]:
        return {"type": kind, "id": f"{kind}--{uuid}", "modified": "2025-01-01T00:00:00.000Z"}

    late_id, early_id = (
        "ffffffff-0000-4000-8000-000000000000",
        "00000000-0000-4000-8000-000000000000",
    )
    stored = [
        obj("report", late_id),
        obj("indicator", late_id),
        obj("report", early_id),
        obj("malware", early_id),
        obj("indicator", early_id),
    ]
    with Ledger(tmp_path) as ledger:
        mirror = ledger.mirror
        for item in stored:
            mirror.apply_pages(FEED, [([item], "")])
        reports = list(mirror.pending(FEED, reports=True, limit=1))
        # A batch left pending (a report that waits) is not served again by the same walk.
        others = list(mirror.pending(FEED, reports=False, limit=2))
    assert [len(batch) for batch in reports] == [1, 1]
    assert sorted(i for batch in reports for i in batch) == sorted(
        [f"report--{late_id}", f"report--{early_id}"]
    )
    assert [len(batch) for batch in others] == [2, 1]
    assert sorted(i for batch in others for i in batch) == sorted(
        str(item["id"]) for item in stored if item["type"] != "report"
    )
