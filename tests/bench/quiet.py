"""Quiet passes at a real API's pace: requests per feed, and what the overlap window costs."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.bench.harness import Child, Series, base_env, log, tool
from tests.bench.result import Options, Result, Row
from tests.standins.ctx import CTXStandIn

#: A CTX answer's time as users see it (the server runs ArangoDB queries behind gunicorn).
QUIET_LATENCY = 0.15
QUIET_TARGET = 3
#: Records one upload adds just before the cursor: a busy quarter of an hour of a feed.
BURST = 300


def _pass(
    ctx: CTXStandIn, spool: Path, log_path: Path, overlap: str
) -> tuple[float, dict[str, int], int]:
    """One ``ctx-fetcher once``: wall time, listing requests per feed, files written."""
    env = {
        **base_env(),
        "CYBERTHREATEXCHANGE_BASE_URL": ctx.base_url,
        "CYBERTHREATEXCHANGE_API_KEY": ctx.api_key,
        "CYBERTHREATEXCHANGE_FEED_IDS": ",".join(ctx.active_feed_ids),
        "CYBERTHREATEXCHANGE_OVERLAP_MINUTES": overlap,
        "SPOOL_DIR": str(spool),
        "CONNECTOR_LOG_LEVEL": "warn",
    }
    before = sum(1 for _ in (spool / "incoming").rglob("*.json")) if spool.exists() else 0
    mark = len(ctx.requests)
    child = Child([tool("ctx-fetcher"), "once"], env, log_path)
    if child.wait() != 0:
        raise RuntimeError(f"ctx-fetcher once failed:\n{child.tail()}")
    asked = {
        feed: sum(1 for r in ctx.requests[mark:] if f"feeds/{feed}/objects/" in r.path)
        for feed in ctx.active_feed_ids
    }
    files = sum(1 for _ in (spool / "incoming").rglob("*.json")) - before
    return child.wall, asked, files


def bench_quiet(opts: Options) -> Result:
    result = Result("fetch-quiet")
    rows: dict[str, tuple[Series, list[int], Series, list[int]]] = {}
    with CTXStandIn(feeds=2, reports=100, orphans=20, seed=17) as ctx:
        ctx.inject("latency", times=10**9, delay=QUIET_LATENCY)
        for overlap in ("15", "0"):
            spool = opts.work / f"quiet-{overlap}-{uuid.uuid4().hex[:8]}"
            logs = opts.work / f"quiet-{overlap}.log"
            _pass(ctx, spool, logs, overlap)  # the historical import, not measured
            quiet_walls, quiet_asked, quiet_files = [], [], 0
            for run in range(opts.runs):
                wall, asked, files = _pass(ctx, spool, logs, overlap)
                quiet_walls.append(wall)
                quiet_asked += list(asked.values())
                quiet_files += files
                log(f"fetch-quiet overlap {overlap} run {run + 1}: {wall:.2f}s, {asked}")
            if quiet_files:
                raise RuntimeError(f"quiet passes wrote {quiet_files} files")
            # A busy quarter of an hour: the pass after it reads it as new, the one after that
            # reads it again inside the overlap.
            for feed in ctx.active_feed_ids:
                ctx.add_objects(feed, BURST, same_record_time=False)
            _pass(ctx, spool, logs, overlap)
            busy_walls, busy_asked = [], []
            for _ in range(opts.runs):
                wall, asked, files = _pass(ctx, spool, logs, overlap)
                busy_walls.append(wall)
                busy_asked += list(asked.values())
                if files:
                    raise RuntimeError(f"a pass after the burst wrote {files} files again")
            rows[overlap] = (Series(quiet_walls), quiet_asked, Series(busy_walls), busy_asked)
    quiet_max = max(rows["15"][1])
    result.rows.append(
        Row(
            "Fetch: requests of a quiet pass, per feed",
            f"≤ {QUIET_TARGET}",
            f"{quiet_max} at most ({QUIET_LATENCY * 1000:.0f} ms per request)",
            quiet_max <= QUIET_TARGET,
        )
    )
    result.rows.append(
        Row(
            f"Fetch: the overlap after {BURST} records in its 15 minutes, per feed",
            "information",
            f"{max(rows['15'][3])} requests vs {max(rows['0'][3])} without it; "
            f"{rows['15'][2].median:.2f} s vs {rows['0'][2].median:.2f} s a pass",
            None,
        )
    )
    result.details += [
        f"Two feeds of 100 reports from the CTX stand-in, {QUIET_LATENCY * 1000:.0f} ms added "
        "to every request; `ctx-fetcher once` as a child process (start-up included), the same "
        "spool pass after pass, after a historical import that is not measured. A quiet pass "
        "finds nothing new; a busy one follows an upload of "
        f"{BURST} records per feed, which the pass before it wrote, and which lie inside the "
        "overlap (CYBERTHREATEXCHANGE_OVERLAP_MINUTES, default 15) that every pass reads again "
        "for records the server stores late. Requests counted are the feed's listing pages "
        "(`v1/feeds/{id}/objects/`); the subscriptions request is one per pass.",
        "",
        "| overlap | quiet pass: wall | requests per feed | busy pass: wall | requests per feed |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {label} | {quiet.fmt()} | {', '.join(map(str, sorted(set(q))))} | "
            f"{busy.fmt()} | {', '.join(map(str, sorted(set(b))))} |"
            for label, (quiet, q, busy, b) in (
                ("15 minutes (default)", rows["15"]),
                ("none", rows["0"]),
            )
        ),
    ]
    return result
