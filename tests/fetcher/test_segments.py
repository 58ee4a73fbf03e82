"""The objects listing read in parallel time segments (fetcher.segments, issue 6)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetcher.client import CTXClient
from fetcher.listing import Batch, walk_objects
from fetcher.segments import SegmentedWalk
from fetcher.settings import FetcherSettings
from shared.layout import parse_stix_timestamp
from tests.fetcher.helpers import cursors, invoke, load, spool_files
from tests.standins.ctx import CTXStandIn


@pytest.fixture
def big_standin() -> Iterator[CTXStandIn]:
    # ~1,700 objects: dozens of pages, many _record_modified shared across page boundaries.
    with CTXStandIn(feeds=1, reports=100, orphans=30, seed=3) as server:
        yield server


def _client(standin: CTXStandIn) -> CTXClient:
    settings = FetcherSettings.model_validate(
        {
            "CYBERTHREATEXCHANGE_BASE_URL": standin.base_url,
            "CYBERTHREATEXCHANGE_API_KEY": standin.api_key,
            "CYBERTHREATEXCHANGE_FEED_IDS": standin.active_feed_ids[0],
        }
    )
    return CTXClient(settings)


def _drain(walk: SegmentedWalk | Iterator[Batch]) -> tuple[Counter[str], list[str | None], bool]:
    ids: Counter[str] = Counter()
    cursors_seen: list[str | None] = []
    final = False
    for batch in walk:
        assert not final, "a batch after the final one"
        ids.update(obj["id"] for obj in batch.objects)
        cursors_seen.append(batch.safe_cursor)
        final = batch.final
    return ids, cursors_seen, final


def _cut_points(standin: CTXStandIn, feed: str, rng: random.Random) -> list[str]:
    times = sorted({o["_record_modified"] for o in standin.feeds[feed].objects.values()})
    # Real record times (objects sharing them included), the very first and last ones, and a
    # time after everything: each must split the walk without losing or repeating an object.
    points = [*rng.sample(times, 12), times[0], times[-1], "2030-01-01T00:00:00.000000Z"]
    return sorted(points)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("cursor_at", [None, 0.3])
def test_segments_yield_every_object_once_in_cursor_order(
    big_standin: CTXStandIn, seed: int, cursor_at: float | None
) -> None:
    feed = big_standin.active_feed_ids[0]
    rng = random.Random(seed)
    times = sorted({o["_record_modified"] for o in big_standin.feeds[feed].objects.values()})
    cursor = None if cursor_at is None else times[int(len(times) * cursor_at)]
    with _client(big_standin) as client:
        expected, _, _ = _drain(walk_objects(client, feed, cursor))
        walk = SegmentedWalk(client, feed, cursor, types=None, workers=3, depth=2, budget=3)
        try:
            # Points arrive from another thread while the walk is being read, as the reports
            # listing's cursors do.
            feeder = threading.Thread(
                target=lambda: [walk.cut_at(p) for p in _cut_points(big_standin, feed, rng)]
            )
            feeder.start()
            ids, safe, final = _drain(walk)
            feeder.join(10)
            segments = walk.segments
        finally:
            walk.close()

    assert ids == expected  # every object, each exactly once
    assert max(ids.values()) == 1
    assert final
    stamps = [parse_stix_timestamp(c) for c in safe if c is not None]
    assert stamps == sorted(stamps)  # the objects cursor never goes back
    assert segments >= 2


def test_tiny_buffers_never_deadlock(big_standin: CTXStandIn) -> None:
    feed = big_standin.active_feed_ids[0]
    times = sorted({o["_record_modified"] for o in big_standin.feeds[feed].objects.values()})
    with _client(big_standin) as client:
        walk = SegmentedWalk(client, feed, None, types=None, workers=2, depth=1, budget=1)
        try:
            for point in times[:: max(1, len(times) // 20)]:
                walk.cut_at(point)
            result: list[tuple[Counter[str], list[str | None], bool]] = []
            reader = threading.Thread(target=lambda: result.append(_drain(walk)), daemon=True)
            reader.start()
            reader.join(60)
        finally:
            walk.close()
    assert result, "the segmented walk stalled"
    ids, _, final = result[0]
    assert final and sum(ids.values()) == len(big_standin.feeds[feed].objects)


def test_default_pass_matches_a_pass_at_concurrency_1(
    big_standin: CTXStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    feed = big_standin.active_feed_ids[0]
    results = {}
    for concurrency in ("1", "8"):
        spool = tmp_path / f"spool-{concurrency}"
        env = {
            "CYBERTHREATEXCHANGE_BASE_URL": big_standin.base_url,
            "CYBERTHREATEXCHANGE_API_KEY": big_standin.api_key,
            "CYBERTHREATEXCHANGE_FEED_IDS": feed,
            "CYBERTHREATEXCHANGE_CONCURRENCY": concurrency,
            "SPOOL_DIR": str(spool),
        }
        outcome = invoke(["once"], env)
        assert outcome.exit_code == 0, outcome.output
        files = {p.name: load(p) for p in spool_files(spool)}
        results[concurrency] = (files, cursors(spool))
    # The same files with the same bytes' content, and the same cursors.
    assert results["8"] == results["1"]
    assert sum(1 for name in results["8"][0] if "_report--" in name) == 100
