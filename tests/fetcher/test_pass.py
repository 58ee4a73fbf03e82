"""A pass of ``ctx-fetcher once`` against the CTX stand-in built from the server's code.

The stand-in serves the listing as ``make_objects_query``/``get_objects`` do (two separately
limited halves, a bare ``next``, every version, ties), so these tests fail for a fetcher that
follows ``next`` naively, keeps an older version, or lets a stix2arango relationship through.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fetcher.stix import canonical_json, references
from shared.durable import sha256_bytes
from shared.layout import parse_relative_path
from tests.fetcher.helpers import invoke, load, spool_files
from tests.standins.ctx import CTXStandIn


def _files(spool_dir: Path) -> dict[Path, tuple[str, str, list[dict[str, object]]]]:
    out = {}
    for path in spool_files(spool_dir):
        feed_id, name = parse_relative_path(path.relative_to(spool_dir / "incoming").as_posix())
        data = path.read_bytes()
        assert sha256_bytes(data) == name.sha256
        bundle = load(path)
        assert canonical_json(bundle) == data
        out[path] = (feed_id, name.subject, bundle["objects"])
    return out


def _check_complete(standin: CTXStandIn, spool_dir: Path, feed_ids: list[str]) -> None:
    """One file per report, newest versions only, every object somewhere, no artefact."""
    files = _files(spool_dir)
    for feed_id in feed_ids:
        latest = standin.latest_objects(feed_id)
        synthetic = set(standin.synthetic_ids(feed_id))
        assert synthetic, "the world must hold stix2arango relationships to prove anything"
        seen: set[str] = set()
        reports: list[str] = []
        for f, subject, objects in files.values():
            if f != feed_id:
                continue
            ids = {str(o["id"]) for o in objects}
            assert not ids & synthetic
            for obj in objects:
                assert obj == latest[str(obj["id"])]
            seen |= ids
            if subject != "objects":
                reports.append(subject)
                report = latest[subject]
                # Everything the report names that the feed holds, in the same file.
                assert {r for r in references(report) if r in latest} <= ids
        assert sorted(reports) == sorted(standin.report_ids(feed_id))
        assert set(latest) == seen


@pytest.mark.parametrize("concurrency", [pytest.param("1", id="c1"), pytest.param("8", id="c8")])
def test_historical_import_of_a_big_interleaved_world_is_complete(
    tmp_path: Path, env: dict[str, str], concurrency: str
) -> None:
    with CTXStandIn(feeds=1, reports=60, orphans=30, seed=5, tie_every=7) as big:
        feed_id = big.active_feed_ids[0]
        env = {
            **env,
            "CYBERTHREATEXCHANGE_BASE_URL": big.base_url,
            "CYBERTHREATEXCHANGE_API_KEY": big.api_key,
            "CYBERTHREATEXCHANGE_FEED_IDS": feed_id,
            "CYBERTHREATEXCHANGE_CONCURRENCY": concurrency,
            "CONNECTOR_LOG_LEVEL": "info",
        }
        spool_dir = Path(env["SPOOL_DIR"])
        # Versions of reports exist, so "newest version" is tested, not assumed.
        records = big.records(feed_id)
        assert len(records) > len({r["id"] for r in records})

        result = invoke(["once"], env)

        assert result.exit_code == 0, result.output
        _check_complete(big, spool_dir, [feed_id])
        before = sorted(spool_files(spool_dir))
        again = invoke(["once"], env)
        assert again.exit_code == 0
        assert "reports written 0" in again.output
        assert sorted(spool_files(spool_dir)) == before


def test_default_world_two_feeds(standin: CTXStandIn, env: dict[str, str], spool_dir: Path) -> None:
    result = invoke(["once"], env)

    assert result.exit_code == 0, result.output
    _check_complete(standin, spool_dir, standin.active_feed_ids)


def test_update_writes_one_file_and_an_older_version_writes_nothing(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    before = set(spool_files(spool_dir))
    feed_id = standin.active_feed_ids[0]
    report_id = standin.report_ids(feed_id)[2]

    standin.update_report(feed_id, report_id)
    assert invoke(["once"], env).exit_code == 0

    new = set(spool_files(spool_dir)) - before
    assert len(new) == 1
    path = new.pop()
    assert report_id in path.name
    report = next(o for o in load(path)["objects"] if o["id"] == report_id)
    assert str(report["description"]).endswith("Updated.")

    before = set(spool_files(spool_dir))
    standin.upload_old_version(feed_id, report_id)
    assert invoke(["once"], env).exit_code == 0
    assert set(spool_files(spool_dir)) == before


def test_a_failed_pass_keeps_the_cursor_and_the_next_pass_completes(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed_id = standin.active_feed_ids[0]
    # The third listing request and its retries fail: the pass stops part-way through the feed.
    standin.inject("latency", path_contains=f"{feed_id}/objects/", times=2, delay=0.0)
    standin.inject("status", path_contains=f"{feed_id}/objects/", status=503, times=100)
    env = {**env, "CYBERTHREATEXCHANGE_CONCURRENCY": "1"}

    assert invoke(["once"], env).exit_code == 1
    standin.faults.clear()

    assert invoke(["once"], env).exit_code == 0
    _check_complete(standin, spool_dir, standin.active_feed_ids)
