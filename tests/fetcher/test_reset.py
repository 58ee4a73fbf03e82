"""``ctx-fetcher reset``: the next pass re-reads exactly the feed and the dates asked."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fetcher.ctx.record_time import earlier, just_below
from fetcher.passes.feed import DEFAULT_OVERLAP
from shared.layout import parse_relative_path
from tests.fetcher.helpers import cursors, invoke, load, spool_files
from tests.standins.ctx import CTXStandIn


def _hand_over(spool_dir: Path) -> None:
    """What the uploader does with the files: incoming/ is emptied into done/."""
    done = spool_dir / "done"
    done.mkdir(exist_ok=True)
    for feed_dir in (spool_dir / "incoming").iterdir():
        shutil.copytree(feed_dir, done / feed_dir.name, dirs_exist_ok=True)
        shutil.rmtree(feed_dir)


def _written(spool_dir: Path) -> dict[str, dict[str, set[str]]]:
    """feed -> subject (report id or "objects") -> ids of the objects in the files now in incoming/."""
    out: dict[str, dict[str, set[str]]] = {}
    for path in spool_files(spool_dir):
        feed_id, name = parse_relative_path(path.relative_to(spool_dir / "incoming").as_posix())
        ids = {str(o["id"]) for o in load(path)["objects"]}
        out.setdefault(feed_id, {}).setdefault(name.subject, set()).update(ids)
    return out


def _since(standin: CTXStandIn, feed_id: str) -> str:
    """The record time of a report record in the middle of the feed's listing."""
    times = sorted(r["_record_modified"] for r in standin.records(feed_id) if r["type"] == "report")
    return str(times[len(times) // 2])


def _stored_from(standin: CTXStandIn, feed_id: str, since: str) -> set[str]:
    """Ids of every record CTX stored at or after ``since`` (stix2arango artefacts left out)."""
    synthetic = standin.synthetic_ids(feed_id)
    return {
        str(r["id"])
        for r in standin.records(feed_id)
        if r["_record_modified"] >= since and r["id"] not in synthetic
    }


def _listing_starts(standin: CTXStandIn, feed_id: str, after: int) -> list[str | None]:
    return [
        q.query.get("added_after")
        for q in standin.requests[after:]
        if f"{feed_id}/objects/" in q.path
    ]


@pytest.mark.parametrize(
    "rewrite", [pytest.param(True, id="rewrite"), pytest.param(False, id="plain")]
)
def test_reset_since_rereads_exactly_that_feed_from_that_date(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, rewrite: bool
) -> None:
    feed, other = standin.active_feed_ids
    assert invoke(["once"], env).exit_code == 0
    other_cursor = cursors(spool_dir)[(other, "listing")]
    _hand_over(spool_dir)
    since = _since(standin, feed)
    in_range = _stored_from(standin, feed, since)
    reports_in_range = in_range & set(standin.report_ids(feed))
    # The date splits the feed: some reports before it, some from it on.
    assert reports_in_range and reports_in_range != set(standin.report_ids(feed))

    args = ["reset", "--feed", feed, "--since", since, *(["--rewrite"] if rewrite else [])]
    result = invoke(args, env)

    assert result.exit_code == 0, result.output
    assert cursors(spool_dir)[(feed, "listing")] == just_below(since)
    asked_before = len(standin.requests)
    again = invoke(["once"], env)
    assert again.exit_code == 0, again.output

    # Read again from just below the date (records stored at it are served) less the overlap the
    # fetcher reads behind every cursor, never from the start; the other feed goes on from its own.
    starts = _listing_starts(standin, feed, asked_before)
    assert starts and None not in starts
    assert min(s for s in starts if s is not None) == earlier(just_below(since), DEFAULT_OVERLAP)
    other_starts = _listing_starts(standin, other, asked_before)
    assert other_starts and all(
        s is not None and s >= earlier(other_cursor, DEFAULT_OVERLAP) for s in other_starts
    )

    written = _written(spool_dir)
    assert other not in written
    if not rewrite:
        # Nothing changed at CTX: the reports read again are compared, none is written.
        assert feed not in written
        assert f"reports written 0, unchanged {len(reports_in_range)}" in again.output
    else:
        files = written[feed]
        assert set(files) - {"objects"} == reports_in_range
        carried = set().union(*files.values())
        # Everything stored from the date on is in a file again, and a feed-level file holds
        # only such objects (report files also carry the older objects their report names).
        assert in_range <= carried
        assert files.get("objects", set()) <= in_range
    # The reset is carried out: the next pass reads on from the new cursor and writes nothing.
    assert invoke(["once"], env).exit_code == 0
    assert _written(spool_dir) == written


@pytest.mark.parametrize(
    "rewrite", [pytest.param(True, id="rewrite"), pytest.param(False, id="plain")]
)
def test_reset_all_rereads_the_feed_from_its_start(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, rewrite: bool
) -> None:
    feed, other = standin.active_feed_ids
    assert invoke(["once"], env).exit_code == 0
    _hand_over(spool_dir)

    result = invoke(["reset", "--feed", feed, "--all", *(["--rewrite"] * rewrite)], env)

    assert result.exit_code == 0, result.output
    assert (feed, "listing") not in cursors(spool_dir)
    asked_before = len(standin.requests)
    assert invoke(["once"], env).exit_code == 0
    assert None in _listing_starts(standin, feed, asked_before)
    assert None not in _listing_starts(standin, other, asked_before)
    written = _written(spool_dir)
    assert other not in written
    if rewrite:
        assert set(written[feed]) - {"objects"} == set(standin.report_ids(feed))
    else:
        assert written == {}


def test_a_reset_interrupted_by_a_failed_pass_is_finished_by_the_next(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    env = {**env, "CYBERTHREATEXCHANGE_CONCURRENCY": "1"}
    assert invoke(["once"], env).exit_code == 0
    _hand_over(spool_dir)
    assert invoke(["reset", "--feed", feed, "--all", "--rewrite"], env).exit_code == 0
    # The second listing request of the feed and its retries fail: the re-read stops part-way.
    standin.inject("latency", path_contains=f"{feed}/objects/", times=1, delay=0.0)
    standin.inject("status", path_contains=f"{feed}/objects/", status=503, times=100)

    assert invoke(["once"], env).exit_code == 1
    standin.faults.clear()
    assert invoke(["once"], env).exit_code == 0

    assert set(_written(spool_dir)[feed]) - {"objects"} == set(standin.report_ids(feed))


def test_reset_never_moves_a_feed_forward(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    assert invoke(["once"], env).exit_code == 0
    saved = cursors(spool_dir)[(feed, "listing")]

    result = invoke(["reset", "--feed", feed, "--since", "2999-01-01"], env)

    assert result.exit_code == 0, result.output
    assert cursors(spool_dir)[(feed, "listing")] == saved
    assert f"already reads from {saved}, before 2999-01-01, so nothing changes" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "exactly one of --since DATE and --all", id="neither"),
        pytest.param(["--all", "--since", "2025-01-01"], "exactly one of", id="both"),
        pytest.param(["--since", "last tuesday"], "not an ISO 8601 date", id="bad-date"),
    ],
)
def test_reset_arguments_are_checked(
    standin: CTXStandIn, env: dict[str, str], args: list[str], message: str
) -> None:
    assert invoke(["once"], env).exit_code == 0

    result = invoke(["reset", "--feed", standin.active_feed_ids[0], *args], env)

    assert result.exit_code == 2
    assert message in result.output


def test_reset_of_a_feed_the_state_does_not_know_is_refused(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    before = cursors(spool_dir)
    unknown = "0b2d4e5f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"

    result = invoke(["reset", "--feed", unknown, "--all"], env)

    assert result.exit_code == 1
    assert f"the fetcher state has no feed {unknown}" in result.output
    assert cursors(spool_dir) == before


def _ctx_fetcher() -> str:
    return str(Path(sys.executable).parent / "ctx-fetcher")


def _finished_passes(spool_dir: Path) -> int:
    try:
        with sqlite3.connect(spool_dir / ".fetcher" / "fetcher.sqlite3") as db:
            return len(
                db.execute("SELECT 1 FROM passes WHERE last_ended_at IS NOT NULL").fetchall()
            )
    except sqlite3.Error:
        return 0


@pytest.mark.timeout(60)
def test_reset_is_refused_while_a_fetcher_runs_and_works_once_it_stopped(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed = standin.active_feed_ids[0]
    runner = subprocess.Popen(
        [_ctx_fetcher(), "run", "--interval-seconds", "3600"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while _finished_passes(spool_dir) < 2 and time.monotonic() < deadline:
            assert runner.poll() is None, "ctx-fetcher run ended early"
            time.sleep(0.05)
        before = cursors(spool_dir)

        refused = invoke(["reset", "--feed", feed, "--all"], env)

        assert refused.exit_code == 1
        assert f"another ctx-fetcher (pid {runner.pid}) is using the state" in refused.output
        assert cursors(spool_dir) == before
        # `once` beside a running `run` is refused the same way, before asking CTX anything.
        asked = len(standin.requests)
        assert invoke(["once"], env).exit_code == 1
        assert len(standin.requests) == asked
    finally:
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == 0

    result = invoke(["reset", "--feed", feed, "--all"], env)

    assert result.exit_code == 0, result.output
    assert (feed, "listing") not in cursors(spool_dir)
