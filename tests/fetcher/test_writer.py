"""Report files from the mirror: each carries its closure, an unchanged one is not written again,
and a report that cannot be named fails its feed with the feed's error."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetcher.errors import FetcherError
from fetcher.files.writer import FileWriter
from fetcher.state.ledger import Ledger
from fetcher.state.mirror import Mirror
from shared.layout import Spool

FEED = "0b2d4e5f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
IDENTITY = "identity--5b1e2d3c-4f5a-4b6c-8d7e-9f0a1b2c3d4e"


def _objects(reports: int) -> list[dict[str, object]]:
    objs: list[dict[str, object]] = [
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": IDENTITY,
            "created": "2025-01-01T00:00:00.000Z",
            "modified": "2025-01-01T00:00:00.000Z",
            "name": "producer",
        }
    ]
    for n in range(reports):
        indicator = f"indicator--7e2b3a3c-0d4f-4c55-9a57-{n:012d}"
        objs.append(
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": indicator,
                "created": "2025-01-02T00:00:00.000Z",
                "modified": "2025-01-02T00:00:00.000Z",
                "pattern": f"[ipv4-addr:value = '198.51.100.{n % 250}']",
                "pattern_type": "stix",
                "valid_from": "2025-01-02T00:00:00Z",
                "created_by_ref": IDENTITY,
            }
        )
        objs.append(
            {
                "type": "report",
                "spec_version": "2.1",
                "id": f"report--1d2c3b4a-5e6f-4a7b-8c9d-{n:012d}",
                "created": "2025-01-03T00:00:00.000Z",
                "modified": f"2025-01-{3 + n % 20:02d}T00:00:00.000Z",
                "name": f"report {n}",
                "published": "2025-01-03T00:00:00Z",
                "object_refs": [indicator],
                "created_by_ref": IDENTITY,
            }
        )
    return objs


def _ledger(tmp_path: Path, objects: list[dict[str, object]]) -> tuple[Ledger, Mirror]:
    ledger = Ledger(tmp_path / "state")
    mirror = ledger.mirror
    mirror.apply_pages(FEED, [(objects, "")])
    return ledger, mirror


def _report_ids(mirror: Mirror) -> list[str]:
    return [i for ids in mirror.pending(FEED, reports=True, limit=1000) for i in ids]


def test_each_report_file_carries_its_closure_once(tmp_path: Path) -> None:
    ledger, mirror = _ledger(tmp_path, _objects(40))
    ids = _report_ids(mirror)
    assert len(ids) == 40
    spool = Spool(tmp_path / "spool")
    writer = FileWriter(ledger, spool, FEED)
    built = [b for at in range(0, 40, 7) for b in writer.reports(ids[at : at + 7])]
    assert all(b.written for b in built)
    for b in built:
        assert len(b.shas) == 3  # the report, its indicator and the identity that made both
        assert spool.path_in("incoming", b.rel).is_file()
        ledger.record_report(FEED, b.subject, b.sha, str(b.rel))
    # Built again with the ledger's entries: the same files, none written.
    again = writer.reports(ids)
    ledger.close()
    assert [(b.subject, b.sha, b.rel) for b in again] == [(b.subject, b.sha, b.rel) for b in built]
    assert not any(b.written for b in again)


def test_a_report_that_cannot_be_named_fails_with_a_fetcher_error(tmp_path: Path) -> None:
    # A report with no modified, created or record time cannot be named (fetcher.files.writer).
    report: dict[str, object] = {
        "type": "report",
        "spec_version": "2.1",
        "id": "report--1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "name": "no time",
        "object_refs": [],
    }
    ledger, mirror = _ledger(tmp_path, [report])
    writer = FileWriter(ledger, Spool(tmp_path / "spool"), FEED)
    with pytest.raises(FetcherError, match="has no modified, created or record time") as err:
        writer.reports(_report_ids(mirror))
    ledger.close()
    assert err.value.feed_id == FEED
