"""A pass of ``ctx-fetcher once`` against the CTX stand-in: completeness, dedup, cursors, paging."""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from fetcher.bundle import canonical_json
from fetcher.client import OBJECTS_PAGE_SIZE
from shared.durable import sha256_bytes
from shared.layout import SpoolName, parse_relative_path, parse_stix_timestamp
from tests.fetcher.helpers import cursors, invoke, load, spool_files
from tests.standins.ctx import CUSTOM_KINDS, SCO_KINDS, SDO_KINDS, CTXStandIn


def _strip(obj: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _check_spool_matches(standin: CTXStandIn, spool_dir: Path, feed_ids: list[str]) -> None:
    """Every object of every feed is in the spool exactly as served (minus ``_`` keys)."""
    files = spool_files(spool_dir)
    by_feed: dict[str, dict[str, dict[str, object]]] = {f: {} for f in feed_ids}
    for path in files:
        rel = path.relative_to(spool_dir / "incoming")
        feed_id, name = parse_relative_path(rel.as_posix())
        data = path.read_bytes()
        # The name carries the sha256 of the exact bytes, and the same content gives the same bytes.
        assert sha256_bytes(data) == name.sha256
        bundle = load(path)
        assert canonical_json(bundle) == data
        assert bundle["type"] == "bundle"
        assert bundle["id"].startswith("bundle--")
        objects = bundle["objects"]
        assert objects
        ids = {o["id"] for o in objects}
        if name.subject != "objects":
            assert ids == standin.report_bundle_ids(feed_id, name.subject)
            report = standin.object(feed_id, name.subject)
            assert name.modified == parse_stix_timestamp(report["modified"])
        for obj in objects:
            assert not [k for k in obj if k.startswith("_")]
            assert obj == _strip(standin.object(feed_id, obj["id"]))
            by_feed[feed_id][obj["id"]] = obj
    for feed_id in feed_ids:
        assert set(by_feed[feed_id]) == standin.expected_ids(feed_id)


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def test_historical_import_is_complete_and_follows_the_contract(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feeds = standin.active_feed_ids
    # The data must really put equal _record_modified values across a page boundary, else this
    # test proves nothing about the re-ask logic.
    for feed_id in feeds:
        ordered = sorted(
            (o["_record_modified"], o["id"]) for o in standin.feeds[feed_id].objects.values()
        )
        boundaries = range(OBJECTS_PAGE_SIZE, len(ordered), OBJECTS_PAGE_SIZE)
        assert any(ordered[i - 1][0] == ordered[i][0] for i in boundaries)

    result = invoke(["once"], env)

    assert result.exit_code == 0, result.output
    _check_spool_matches(standin, spool_dir, feeds)
    files = spool_files(spool_dir)
    report_files = [p for p in files if "_report--" in p.name]
    assert len(report_files) == sum(len(standin.feeds[f].report_ids) for f in feeds)
    orphans_in_objects_files = {
        o["id"] for p in files if "_objects_" in p.name for o in load(p)["objects"]
    }
    for feed_id in feeds:
        assert set(standin.feeds[feed_id].orphan_ids) <= orphans_in_objects_files
    types = {o["type"] for p in files for o in load(p)["objects"]}
    expected = set(SDO_KINDS + SCO_KINDS + CUSTOM_KINDS) | {
        "report",
        "relationship",
        "extension-definition",
    }
    assert expected <= types
    custom = next(o for p in files for o in load(p)["objects"] if o["type"] == "bank-account")
    assert next(iter(custom["extensions"])).startswith("extension-definition--")
    assert not _leftovers(spool_dir / "incoming")
    assert "reports written 8" in result.stdout


def test_second_pass_writes_nothing(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    before = sorted(spool_files(spool_dir))

    result = invoke(["once"], env)

    assert result.exit_code == 0
    assert sorted(spool_files(spool_dir)) == before
    assert "reports written 0" in result.stdout


def test_updated_report_writes_exactly_one_new_file(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    before = set(spool_files(spool_dir))
    feed_id = standin.active_feed_ids[0]
    report_id = standin.update_report(feed_id, standin.feeds[feed_id].report_ids[3])

    assert invoke(["once"], env).exit_code == 0

    new = set(spool_files(spool_dir)) - before
    assert len(new) == 1
    path = new.pop()
    assert SpoolName.parse(path.name).subject == report_id
    report = next(o for o in load(path)["objects"] if o["id"] == report_id)
    assert report["description"].endswith("Updated.")


def test_record_bookkeeping_change_alone_writes_nothing(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    before = sorted(spool_files(spool_dir))
    feed_id = standin.active_feed_ids[0]
    standin.touch_record(feed_id, standin.feeds[feed_id].report_ids[0])
    standin.touch_record(feed_id, standin.feeds[feed_id].orphan_ids[0])

    result = invoke(["once"], env)

    assert result.exit_code == 0
    assert sorted(spool_files(spool_dir)) == before
    assert "unchanged 1" in result.stdout


@pytest.mark.parametrize(
    "forget_cursors",
    [pytest.param(False, id="drained"), pytest.param(True, id="drained-and-cursors-lost")],
)
def test_drained_spool_gets_no_duplicates(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, forget_cursors: bool
) -> None:
    assert invoke(["once"], env).exit_code == 0
    assert spool_files(spool_dir)
    shutil.move(spool_dir / "incoming", spool_dir / "done")
    if forget_cursors:
        with sqlite3.connect(spool_dir / ".fetcher" / "fetcher.sqlite3") as db:
            db.execute("DELETE FROM cursors")

    result = invoke(["once"], env)

    assert result.exit_code == 0
    assert spool_files(spool_dir) == []


def test_cursor_comes_from_server_data(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    first = standin.queries("/objects/")
    assert "added_after" not in first[0].query
    record_times = {
        o["_record_modified"]
        for f in standin.active_feed_ids
        for o in standin.feeds[f].objects.values()
    }
    saved = cursors(spool_dir)
    assert set(saved.values()) <= record_times
    standin.requests.clear()

    assert invoke(["once"], env).exit_code == 0

    for feed_id in standin.active_feed_ids:
        asked = [
            r.query
            for r in standin.queries(f"/v1/feeds/{feed_id}/objects/")
            if "bundle" not in r.path
        ]
        reports = [q for q in asked if q.get("types") == "report"]
        assert reports[0]["added_after"] == saved[(feed_id, "reports")]
        newest_report = max(
            o["_record_modified"]
            for o in standin.feeds[feed_id].objects.values()
            if o["type"] == "report"
        )
        assert reports[0]["added_after"] == newest_report
        assert all(q["added_after"] in record_times for q in asked)
        assert all(q["limit"] == "50" for q in asked)


def test_page_number_style(standin: CTXStandIn, env: dict[str, str], spool_dir: Path) -> None:
    standin.style = "page"

    assert invoke(["once"], env).exit_code == 0

    _check_spool_matches(standin, spool_dir, standin.active_feed_ids)
    asked = [r.query for r in standin.queries("/objects/") if "bundle" not in r.path]
    assert {"1", "2", "3"} <= {q.get("page") for q in asked}
    before = set(spool_files(spool_dir))
    feed_id = standin.active_feed_ids[1]
    report_id = standin.update_report(feed_id)
    standin.requests.clear()

    assert invoke(["once"], env).exit_code == 0

    new = set(spool_files(spool_dir)) - before
    assert [SpoolName.parse(p.name).subject for p in new] == [report_id]
    asked = [r.query for r in standin.queries(f"{feed_id}/objects/") if "bundle" not in r.path]
    assert all(q.get("updated_since") for q in asked)


def test_switching_style_between_passes(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    before = set(spool_files(spool_dir))
    standin.style = "page"
    feed_id = standin.active_feed_ids[0]
    report_id = standin.update_report(feed_id)

    assert invoke(["once"], env).exit_code == 0

    new = set(spool_files(spool_dir)) - before
    assert [SpoolName.parse(p.name).subject for p in new] == [report_id]


@pytest.mark.parametrize("style", ["cursor", "page"])
def test_bundle_of_many_pages_is_fetched_whole(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, style: str
) -> None:
    standin.style = style
    feed_id = standin.active_feed_ids[0]
    report_id = standin.feeds[feed_id].report_ids[0]
    for object_id in standin.add_objects(feed_id, 150, same_record_time=False):
        standin.add_to_bundle(feed_id, report_id, standin.object(feed_id, object_id))

    assert invoke(["once"], env).exit_code == 0

    path = next(p for p in spool_files(spool_dir) if report_id in p.name)
    assert {o["id"] for o in load(path)["objects"]} == standin.report_bundle_ids(feed_id, report_id)
    pages = standin.queries(f"{report_id}/bundle/")
    if style == "cursor":
        assert any("cursor" in r.query for r in pages)
    else:
        assert {"1", "2", "3"} <= {r.query.get("page") for r in pages}
    _check_spool_matches(standin, spool_dir, standin.active_feed_ids)


def test_whole_page_sharing_one_timestamp_ends_with_a_warning(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed_id = standin.active_feed_ids[0]
    standin.add_objects(feed_id, OBJECTS_PAGE_SIZE + 5)

    result = invoke(["once"], env)

    assert result.exit_code == 0
    assert "whole page shares one _record_modified" in result.output


def test_ledger_lost_after_publish_gives_no_duplicates(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    # As if the fetcher crashed after publishing but before recording: the same content gives the
    # same name, and publishing an existing name is a no-op.
    assert invoke(["once"], env).exit_code == 0
    before = sorted(spool_files(spool_dir))
    with sqlite3.connect(spool_dir / ".fetcher" / "fetcher.sqlite3") as db:
        for table in ("cursors", "reports", "objects"):
            db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names

    result = invoke(["once"], env)

    assert result.exit_code == 0
    assert sorted(spool_files(spool_dir)) == before
    assert "reports written 0, unchanged 8" in result.stdout


@pytest.mark.parametrize("concurrency", [1, 8])
def test_bundles_are_fetched_in_parallel_up_to_concurrency(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, concurrency: int
) -> None:
    feed_id = standin.active_feed_ids[0]
    env["CYBERTHREATEXCHANGE_FEED_IDS"] = feed_id
    env["CYBERTHREATEXCHANGE_CONCURRENCY"] = str(concurrency)
    # Long enough in the parallel case that a loaded machine (CI runs other suites' servers too)
    # cannot spread eight thread starts over it; a sequential fetcher would need 8 × delay.
    delay = 0.5 if concurrency == 1 else 2.0
    standin.inject("latency", path_contains="/bundle/", delay=delay, times=8)

    assert invoke(["once"], env).exit_code == 0

    starts = sorted(r.at for r in standin.queries("/bundle/"))[:8]
    if concurrency == 1:
        assert all(b - a >= delay * 0.9 for a, b in itertools.pairwise(starts))
    else:
        # All eight were asked before the first answer could have come back.
        assert starts[-1] - starts[0] < delay * 0.9
    _check_spool_matches(standin, spool_dir, [feed_id])


def test_a_pass_removes_temp_files_left_by_a_killed_write(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    [first, *_] = spool_files(spool_dir)
    stale = first.parent / f".{first.name}.0123456789ab.tmp"
    fresh = first.parent / f".{first.name}.ba9876543210.tmp"
    rsync_temp = first.parent / f".{first.name}.Xy12Zq"
    for path in (stale, fresh, rsync_temp):
        path.write_bytes(b'{"type":"bun')
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(rsync_temp, (hour_ago, hour_ago))

    assert invoke(["once"], env).exit_code == 0

    assert not stale.exists()
    assert fresh.exists(), "a temp file of a write that may still be running is left alone"
    assert rsync_temp.exists(), "only the fetcher's own temp names are touched"
