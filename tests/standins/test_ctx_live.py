"""The CTX stand-in's live mode does what the real write path does (:mod:`tests.standins.ctx_live`):
an upload's relationships become visible in a later commit than its vertices, and a record stamped
before others can become visible after them, below a ``next`` the listing already served."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.standins.ctx import CTXStandIn
from tests.standins.ctx_live import LiveWriter, Planned, Step


@pytest.fixture
def standin() -> Iterator[CTXStandIn]:
    with CTXStandIn(feeds=1, reports=3, orphans=4, seed=21) as server:
        yield server


def listing(standin: CTXStandIn, **params: Any) -> tuple[set[str], str | None]:
    """Every id the listing serves from ``added_after`` on, and the last non-null ``next``."""
    feed_id = standin.active_feed_ids[0]
    url = f"{standin.base_url}v1/feeds/{feed_id}/objects/"
    ids: set[str] = set()
    last = params.get("added_after")
    while True:
        query = {**params, "limit": "50", **({"added_after": last} if last else {})}
        page = requests.get(url, params=query, headers={"API-KEY": standin.api_key}, timeout=10)
        page.raise_for_status()
        body = page.json()
        ids |= {o["id"] for o in body["objects"]}
        if body["next"] is None:
            return ids, last
        last = body["next"]


def step(upload: int, kind: str) -> Any:
    return lambda steps: any(s.upload == upload and s.kind == kind for s in steps)


def the_step(writer: LiveWriter, upload: int, kind: str) -> Step:
    return next(s for s in writer.steps if s.upload == upload and s.kind == kind)


def test_a_report_is_listed_before_its_relationships(standin: CTXStandIn) -> None:
    feed_id = standin.active_feed_ids[0]
    # Three reports (the feed's author writes some with observables only, and no relationship).
    plan = [Planned(at, feed_id, "report") for at in (0.0, 0.05, 0.1)]
    writer = LiveWriter(standin, seed=4, plan=plan, edge_delay=(2.0, 2.0)).start()
    try:
        assert writer.wait_for(step(2, "vertices"))
        # One type per walk: a single half per page, so following next loses nothing here.
        reports, _ = listing(standin, types="report")
        relationships, _ = listing(standin, types="relationship")
        assert not writer.wait_for(step(0, "edges"), timeout=0)
    finally:
        assert writer.settle(30)
    new_reports = standin.report_ids(feed_id)[-3:]
    named = set()
    for report_id in new_reports:
        refs = standin.object(feed_id, report_id)["object_refs"]
        named |= {r for r in refs if r.startswith("relationship--")}
    assert named, "the reports must name relationships to prove anything"
    assert set(new_reports) <= reports
    assert not named & relationships
    after, _ = listing(standin, types="relationship")
    assert named <= after


@pytest.mark.parametrize(
    ("kind", "late_step"),
    [
        pytest.param("orphans", "vertices", id="upload-held-back"),
        pytest.param("touch", "touch", id="update-identities"),
    ],
)
def test_a_late_record_appears_below_a_served_next(
    standin: CTXStandIn, kind: str, late_step: str
) -> None:
    feed_id = standin.active_feed_ids[0]
    plan = [
        Planned(0.0, feed_id, kind, late="vertices"),
        Planned(0.3, feed_id, "orphans"),
    ]
    writer = LiveWriter(standin, seed=5, plan=plan, late_hold=2.5).start()
    try:
        assert writer.wait_for(step(1, "vertices"))
        seen, served = listing(standin)
        assert not writer.wait_for(step(0, late_step), timeout=0)
    finally:
        assert writer.settle(30)
    assert served is not None
    late, other = the_step(writer, 0, late_step), the_step(writer, 1, "vertices")
    assert late.late
    assert late.ids and other.ids
    # Stamped first, visible last: below the next already served, after the other upload.
    assert set(other.ids) <= seen
    assert max(late.stamps) < min(other.stamps) <= served
    assert late.at > other.at
    if kind == "orphans":
        assert not set(late.ids) & seen
        # A client that resumes from the served next never sees it.
        resumed, _ = listing(standin, added_after=served)
        assert not set(late.ids) & resumed
    everything, _ = listing(standin)
    assert set(late.ids) <= everything


def test_the_world_is_complete_after_settle(standin: CTXStandIn) -> None:
    feed_id = standin.active_feed_ids[0]
    reports_before = len(standin.report_ids(feed_id))
    writer = LiveWriter(standin, seed=6, uploads=16, seconds=2.0, late_share=0.3).start()
    assert writer.settle(60)
    kinds = {p.kind for p in writer.plan}
    assert {"report", "version", "paged"} <= kinds
    latest = standin.latest_objects(feed_id)
    assert len(standin.report_ids(feed_id)) > reports_before
    for report_id in standin.report_ids(feed_id):
        report = latest[report_id]
        # Page-by-page jobs re-run their held-back relationships: nothing a report names is lost.
        assert set(report["object_refs"]) <= set(latest)
    versions = [
        r for r in standin.report_ids(feed_id) if latest[r]["description"].endswith("Updated.")
    ]
    assert versions
    assert any(s.late for s in writer.steps)
