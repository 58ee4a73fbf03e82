"""Faults: 429, 5xx, dropped connections, auth, subscriptions, malformed answers, hostile ids."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.fetcher.helpers import cursors, invoke, spool_files
from tests.standins.ctx import CTXStandIn


def test_429_retry_after_is_honoured(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    standin.inject("status", path_contains="/objects/", status=429, retry_after="1")

    result = invoke(["once"], env)

    assert result.exit_code == 0, result.output
    asked = standin.queries("/objects/")
    # The first objects request got the 429; its retry must wait the Retry-After second, far
    # longer than the 0.01 s backoff the tests configure. (The two listings run side by side, so
    # the retry is the next request identical to the first, not necessarily the next request.)
    retry = next(r for r in asked[1:] if r.path == asked[0].path and r.query == asked[0].query)
    assert retry.at - asked[0].at >= 0.95
    assert len(spool_files(spool_dir)) > 0


def test_5xx_and_dropped_connections_recover(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    standin.inject("status", path_contains="/subscriptions/", status=503)
    standin.inject("status", path_contains="/objects/", status=502)
    standin.inject("drop", path_contains="/objects/")
    standin.inject("status", path_contains="/objects/", status=500)
    standin.inject("latency", path_contains="/objects/", delay=0.2, times=3)

    result = invoke(["once"], env)

    assert result.exit_code == 0, result.output
    assert all(fault.times == 0 for fault in standin.faults)
    feeds = standin.active_feed_ids
    reports = [p for p in spool_files(spool_dir) if "_report--" in p.name]
    assert len(reports) == sum(len(standin.feeds[f].report_ids) for f in feeds)


def test_5xx_beyond_retries_fails_the_feed_and_keeps_its_cursor(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    feed_id = standin.active_feed_ids[0]
    standin.inject("status", path_contains=f"{feed_id}/objects/", status=503, times=100)

    result = invoke(["once"], env)

    assert result.exit_code == 1
    assert f"feed {feed_id} failed: CTX answered 503" in result.output
    assert not [k for k in cursors(spool_dir) if k[0] == feed_id]
    other = standin.active_feed_ids[1]
    assert (other, "listing") in cursors(spool_dir)


def test_wrong_key_401_fails_every_feed_without_leaking_the_key(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    env["CYBERTHREATEXCHANGE_API_KEY"] = "wrong-key-0123456789"

    result = invoke(["once"], env)

    assert result.exit_code == 1
    for feed_id in standin.active_feed_ids:
        assert f"feed {feed_id} failed: CTX refused /v1/subscriptions/ with 401" in result.output
    assert "wrong-key-0123456789" not in result.output
    assert spool_files(spool_dir) == []


def test_inactive_and_unknown_feeds_fail_alone(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    good = standin.active_feed_ids[0]
    inactive = standin.inactive_feed_ids[0]
    unknown = str(uuid.uuid4())
    env["CYBERTHREATEXCHANGE_FEED_IDS"] = f"{inactive},{good},{unknown}"

    result = invoke(["once"], env)

    assert result.exit_code == 1
    assert (
        f"feed {inactive} failed: the subscription to 'Stand-in feed 2 (inactive)' is 'inactive', not active"
        in result.output
    )
    assert f"feed {unknown} failed: not among the team's subscriptions" in (result.output)
    assert f"feed {good} failed" not in result.output
    written = {p.relative_to(spool_dir / "incoming").parts[0] for p in spool_files(spool_dir)}
    assert written == {good}
    # Nothing was asked of the feeds that may not be fetched.
    assert not standin.queries(f"/v1/feeds/{inactive}/")
    assert not standin.queries(f"/v1/feeds/{unknown}/")


def test_malformed_json_fails_the_feed_without_moving_its_cursor(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    assert invoke(["once"], env).exit_code == 0
    saved = cursors(spool_dir)
    before = set(spool_files(spool_dir))
    feed_id = standin.active_feed_ids[0]
    standin.update_report(feed_id)
    standin.inject("malformed", path_contains=f"{feed_id}/objects/", times=50)

    result = invoke(["once"], env)

    assert result.exit_code == 1
    assert f"feed {feed_id} failed: CTX answer for" in result.output
    assert "is not valid JSON" in result.output
    assert cursors(spool_dir)[(feed_id, "listing")] == saved[(feed_id, "listing")]
    assert set(spool_files(spool_dir)) == before
    standin.faults.clear()

    assert invoke(["once"], env).exit_code == 0
    assert len(set(spool_files(spool_dir)) - before) == 1


def _outside_spool(tmp_path: Path, spool_dir: Path) -> list[Path]:
    return [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and spool_dir not in p.parents and not p.name.startswith(".")
    ]


def test_hostile_ids_are_left_out_and_the_feed_goes_on(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, tmp_path: Path
) -> None:
    feed_id = standin.active_feed_ids[0]
    for bad in ("report--../../etc", "indicator--../../../x", "/etc/passwd"):
        standin.add_raw(
            feed_id,
            {
                "type": bad.split("--")[0],
                "spec_version": "2.1",
                "id": bad,
                "created": "2025-01-01T00:00:00.000Z",
                "modified": "2025-01-01T00:00:00.000Z",
            },
        )
    standin.add_raw(feed_id, {"type": "indicator", "spec_version": "2.1"})

    result = invoke(["once"], env)

    # One bad record must not stop a feed: it is left out with an error naming it, and every
    # other object of the feed is written.
    assert result.exit_code == 0, result.output
    assert "refusing STIX id 'report--../../etc'" in result.output
    assert "refusing STIX id 'indicator--../../../x'" in result.output
    assert _outside_spool(tmp_path, spool_dir) == []
    written: set[str] = set()
    for path in spool_files(spool_dir):
        assert path.resolve().is_relative_to((spool_dir / "incoming").resolve())
        written.update(o["id"] for o in json.loads(path.read_bytes())["objects"])
    assert set(standin.latest_objects(feed_id)) <= written | {
        "report--../../etc",
        "indicator--../../../x",
        "/etc/passwd",
        "None",  # the stand-in's key for the record without an id
    }
    assert (feed_id, "listing") in cursors(spool_dir)


def test_api_key_absent_from_logs_spool_and_state(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    standin.inject("status", path_contains="/objects/", status=429, retry_after="0")
    standin.inject("drop", path_contains="/bundle/")
    standin.inject("malformed", path_contains="/bundle/")

    result = invoke(["once"], env)
    result2 = invoke(["once"], env)

    assert "DEBUG" in result.output
    assert result2.exit_code == 0
    key = standin.api_key.encode()
    assert key not in result.output.encode()
    assert key not in result2.output.encode()
    for path in spool_dir.rglob("*"):
        if path.is_file():
            assert key not in path.read_bytes(), path
    assert all(r.had_key for r in standin.requests)


def test_redirect_to_another_host_does_not_carry_the_key(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    # Same key on purpose: if the header followed the redirect, the other host would accept it.
    with CTXStandIn(feeds=1, reports=1, seed=99, api_key=standin.api_key) as other:
        other_origin = other.base_url.replace("127.0.0.1", "localhost")
        standin.inject(
            "redirect", path_contains="/subscriptions/", location=f"{other_origin}v1/subscriptions/"
        )

        result = invoke(["once"], env)

        assert other.requests
        assert not any(r.had_key for r in other.requests)
    assert result.exit_code == 1
    assert "401" in result.output


def test_huge_retry_after_is_capped(
    standin: CTXStandIn, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fetcher.ctx.client.MAX_RETRY_AFTER", 0.5)
    standin.inject("status", path_contains="/subscriptions/", status=503, retry_after="3600")

    result = invoke(["once"], env)

    assert result.exit_code == 0, result.output
    first, second = standin.queries("/subscriptions/")[:2]
    assert 0.45 <= second.at - first.at < 30
