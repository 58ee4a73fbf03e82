"""The fetcher against a server that stores while it is read, one behaviour at a time.

Each test sets up the race it is about with the stand-in's own upload steps
(``tests/standins/ctx_world.py``: vertices, relationships and synthetic edges commit separately, as
``stix2arango/stix2arango.py`` does); ``test_live_writes.py`` runs them all at once.
"""

from __future__ import annotations

import copy
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fetcher.ctx.client import CTXClient
from fetcher.ctx.reader import ListingReader
from fetcher.files.writer import named_ids
from fetcher.settings import FetcherSettings
from fetcher.state.ledger import Ledger
from fetcher.stix import is_storage_artefact, object_time
from shared.layout import parse_relative_path
from tests.fetcher.helpers import invoke, load, spool_files
from tests.standins import ctx_queries
from tests.standins.ctx import CTXStandIn
from tests.standins.ctx_records import parse_ts, strip
from tests.standins.ctx_world import Upload

STATE = Path(".fetcher") / "fetcher.sqlite3"


def _report_upload(standin: CTXStandIn, feed_id: str, *, size: int = 10) -> tuple[str, Upload]:
    """A new report that names relationships, its vertices committed and its relationships not
    yet."""
    with standin.lock:
        world, feed = standin.world, standin.feeds[feed_id]
        identity = copy.deepcopy(strip(feed.latest_record(feed.identity_id) or {}))
        while True:
            report_id, bundle = world.producers[feed_id].report_bundle(size, identity)
            if any(o["type"] == "relationship" for o in bundle):
                break
        up = world.prepare(feed, bundle)
        world.stage_vertices(up)
        world.commit(up)
    return report_id, up


def _commit_edges(standin: CTXStandIn, up: Upload) -> None:
    with standin.lock:
        standin.world.stage_edges(up)
        standin.world.commit(up)
        standin.world.stage_synthetic(up)
        standin.world.commit(up)


def _files_of(spool_dir: Path, subject: str) -> list[dict[str, Any]]:
    return [load(p) for p in spool_files(spool_dir) if f"_{subject}_" in p.name]


def _gap_rows(spool_dir: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(spool_dir / STATE) as db:
        return list(db.execute("SELECT report_id, member_id, written FROM report_gaps"))


def _relationship_ids(up: Upload) -> set[str]:
    return {str(o["id"]) for o in up.objects if o.get("type") == "relationship"}


def test_a_report_waits_for_its_relationships_and_then_carries_them(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    assert invoke(["once"], env).exit_code == 0
    report_id, up = _report_upload(standin, feed)
    relationships = _relationship_ids(up)
    assert relationships, "the stand-in's report names relationships"

    assert invoke(["once"], env).exit_code == 0

    # Listed without the relationships it names: no file, and nothing it would carry in a
    # feed-level file either (that file would be its second copy).
    assert _files_of(spool_dir, report_id) == []
    carried = {o["id"] for p in spool_files(spool_dir) for o in load(p)["objects"]}
    members = {str(o["id"]) for o in up.objects} - {report_id}
    assert not (members - relationships) & (carried - _before_ids(standin, feed, up))
    waiting = {(r, m) for r, m, w in _gap_rows(spool_dir) if w == 0}
    assert {m for r, m in waiting if r == report_id} == relationships

    _commit_edges(standin, up)
    assert invoke(["once"], env).exit_code == 0

    (bundle,) = _files_of(spool_dir, report_id)
    inside = {o["id"] for o in bundle["objects"]}
    report = next(o for o in bundle["objects"] if o["id"] == report_id)
    assert set(named_ids(report)) <= inside
    assert _gap_rows(spool_dir) == []


def _before_ids(standin: CTXStandIn, feed_id: str, up: Upload) -> set[str]:
    """Objects of the upload the feed held before it (the identity, TLP markings…)."""
    return {
        str(o["id"])
        for o in up.objects
        if o.get("type") in ("identity", "marking-definition", "extension-definition")
    }


def test_past_the_grace_a_report_is_written_without_them_then_again_with_them(
    standin: CTXStandIn,
    env: dict[str, str],
    spool_dir: Path,
) -> None:
    env = {**env, "CYBERTHREATEXCHANGE_REPORT_GRACE_MINUTES": "0"}
    feed = standin.active_feed_ids[0]
    assert invoke(["once"], env).exit_code == 0
    report_id, up = _report_upload(standin, feed)
    relationships = _relationship_ids(up)

    result = invoke(["once"], env)
    assert result.exit_code == 0

    (first,) = _files_of(spool_dir, report_id)
    assert not relationships & {o["id"] for o in first["objects"]}
    warned = [line for line in result.output.splitlines() if " WARNING " in line]
    assert len(warned) == 1 and report_id in warned[0]
    assert all(rel in warned[0] for rel in relationships)
    assert {m for r, m, w in _gap_rows(spool_dir) if r == report_id and w == 1} == relationships

    _commit_edges(standin, up)
    assert invoke(["once"], env).exit_code == 0

    second = [b for b in _files_of(spool_dir, report_id) if b != first]
    assert len(second) == 1
    assert relationships <= {o["id"] for o in second[0]["objects"]}
    assert _gap_rows(spool_dir) == []


def test_the_checkpoint_never_passes_records_stored_into_a_finished_segment(
    env: dict[str, str], tmp_path: Path
) -> None:
    # A feed of several pages: its first segment reads them while the segments cut ahead of it,
    # up to this machine's clock, find nothing and finish.
    with CTXStandIn(feeds=1, reports=4, orphans=250, seed=11) as standin:
        feed = standin.active_feed_ids[0]
        newest = max(r["_record_modified"] for r in standin.records(feed))
        settings = FetcherSettings.model_validate(
            {**env, "CYBERTHREATEXCHANGE_BASE_URL": standin.base_url}
        )
        stored: list[str] = []
        with CTXClient(settings) as client, Ledger(tmp_path / "state") as ledger:
            mirror = ledger.mirror
            reader = ListingReader(client, feed, None, workers=4, buffered=1)
            for group in reader:
                if not stored and _wait_for_empty_segments(standin, feed, newest):
                    # An upload with more vertices and more relationships than a half holds,
                    # with times inside the first segment that found nothing, while the one
                    # before it is still reading: its last page carries the first 50 of each
                    # half (next: the 50th relationship, stamped after every vertex) and ends
                    # it; nothing serves the other vertices.
                    ahead = _asked_after(standin, feed, newest)[0]
                    stored = _store_upload(standin, feed, parse_ts(ahead))
                with ledger.batch(durable=False):
                    mirror.apply_pages(feed, [(i.step.objects, i.step.served) for i in group])
                    for item in group:
                        reader.applied(item)
            reader.close()
            checkpoint = reader.checkpoint()
            # stix2arango's synthetic relationships are left out of the mirror by design.
            records = [r for r in standin.records(feed) if not is_storage_artefact(strip(r))]
            held = set(mirror.get(feed, [str(r["id"]) for r in records]))
        assert stored, "no segment finished empty while another was reading"
        unserved = set(stored) - held
        assert unserved, "the race did not happen: steps served every record stored"
        assert checkpoint is not None
        # Every record at or before the cursor is in the mirror; the ones no step served are
        # after it, where the next pass reads them.
        assert {str(r["id"]) for r in records if r["_record_modified"] <= checkpoint} <= held
        assert all(r["_record_modified"] > checkpoint for r in records if r["id"] in unserved)


def _store_upload(standin: CTXStandIn, feed_id: str, after: datetime) -> list[str]:
    with standin.lock:
        standin.world.clock.now = after
        producer = standin.world.producers[feed_id]
        vertices = producer.orphans(120, kinds=["indicator"])
        edges = [producer.relationship(a, b) for a, b in zip(vertices, vertices[60:], strict=False)]
    standin.upload(feed_id, vertices + edges)
    return [str(o["id"]) for o in vertices + edges]


def _asked_after(standin: CTXStandIn, feed_id: str, newest: str) -> list[str]:
    """``added_after`` of the listing requests that asked past the feed's newest record."""
    asked = {
        q.query.get("added_after")
        for q in standin.queries(f"{feed_id}/objects/")
        if "types" not in q.query
    }
    return sorted(a for a in asked if a is not None and a > newest)


def _wait_for_empty_segments(standin: CTXStandIn, feed_id: str, newest: str) -> bool:
    """True once the three segments past the feed's end have asked (and been answered)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(_asked_after(standin, feed_id, newest)) >= 3:
            time.sleep(0.2)  # their answers are on their way; nothing else needs them
            return True
        time.sleep(0.02)
    return False


def test_a_quiet_pass_asks_at_most_three_pages_per_feed_and_warns_nothing(
    standin: CTXStandIn, env: dict[str, str]
) -> None:
    assert invoke(["once"], env).exit_code == 0
    asked = len(standin.requests)

    result = invoke(["once"], env)
    assert result.exit_code == 0

    for feed in standin.active_feed_ids:
        pages = [q for q in standin.requests[asked:] if f"{feed}/objects/" in q.path]
        assert 1 <= len(pages) <= 3, [q.query for q in pages]
    assert [line for line in result.output.splitlines() if "WARNING" in line] == []


def test_versions_without_modified_are_decided_by_the_servers_order(tmp_path: Path) -> None:
    feed = "a3f0c6a4-1e1a-4d5c-9a57-2bd0c8b0a001"
    first = {
        "type": "ipv4-addr",
        "spec_version": "2.1",
        "id": "ipv4-addr--" + "1" * 8 + "-1111-4111-8111-" + "1" * 12,
        "value": "10.0.0.1",
    }
    versions = [dict(first, x_note=str(n)) for n in range(6)]
    for order in (versions, list(reversed(versions))):
        with Ledger(tmp_path / f"state-{order[0]['x_note']}") as ledger:
            mirror = ledger.mirror
            # One page, stored in this order: the last one on the page is the newest record.
            with ledger.batch():
                mirror.apply_pages(feed, [(order, "2025-01-01T00:00:01.000000Z|")])
            kept = mirror.get(feed, [first["id"]])[first["id"]].obj()
            assert kept["x_note"] == order[-1]["x_note"]
            # A later page wins over an earlier one, whichever comes first.
            with ledger.batch():
                mirror.apply_pages(
                    feed,
                    [
                        ([order[0]], "2025-01-01T00:00:02.000000Z|"),
                        ([order[1]], "2025-01-01T00:00:01.500000Z|"),
                    ],
                )
            assert (
                mirror.get(feed, [first["id"]])[first["id"]].obj()["x_note"] == order[0]["x_note"]
            )


def test_feed_level_files_are_named_by_the_newest_modified_they_hold(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0

    checked = 0
    for path in spool_files(spool_dir):
        _, name = parse_relative_path(path.relative_to(spool_dir / "incoming").as_posix())
        if name.subject != "objects":
            continue
        times = [t for t in (object_time(o) for o in load(path)["objects"]) if t]
        if times:
            assert name.modified == parse_ts(max(times))
            checked += 1
    assert checked


@pytest.mark.parametrize(
    "style", [pytest.param("page", id="page-number"), pytest.param("cursor", id="cursor")]
)
def test_a_server_with_smaller_pages_is_read_to_the_end(
    standin: CTXStandIn,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    style: str,
) -> None:
    standin.style = style
    full = tmp_path / "full"
    assert invoke(["once"], {**env, "SPOOL_DIR": str(full)}).exit_code == 0
    # A server whose settings.py MAXIMUM_PAGE_SIZE is smaller than the default: its envelope
    # still reports the default page size (the class attribute, not the size it used).
    monkeypatch.setattr(ctx_queries, "MAXIMUM_PAGE_SIZE", 20)
    small = tmp_path / "small"

    assert invoke(["once"], {**env, "SPOOL_DIR": str(small)}).exit_code == 0

    def carried(spool: Path) -> set[str]:
        return {o["id"] for p in spool_files(spool) for o in load(p)["objects"]}

    assert carried(full) and carried(small) == carried(full)
