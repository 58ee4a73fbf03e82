"""Fetch at a real API's pace: a historical import from a CTX answering in 150 ms.

The CTX server runs ArangoDB queries behind a few gunicorn sync workers: a listing page takes on
the order of 100–300 ms, so at that pace a pass waits for its round trips, and what a user feels
is how many of them are in flight at once (the listing's segments of time), not the
CPU the fetcher spends between them.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench.fetch import fetch_once, remove_spools
from tests.bench.harness import Series, log
from tests.bench.result import Options, Result, Row
from tests.standins.ctx import CTXStandIn

#: A CTX answer's time as users see it (the same pace as the quiet-pass benchmark).
PACE_LATENCY = 0.15
PACE_REPORTS = 800
PACE_TARGET = 5.0
#: What each of the fetcher's CPU-side mechanisms was worth at this pace. Measured once, not by
#: this benchmark: each mechanism switched off by a throwaway patch, interleaved with the code as
#: it was; a mechanism stays only if it makes the pass at least 1.2 times as fast.
DECISIONS = """\
Decisions at 150 ms (2026-12-07 22:15–22:45 UTC, the machine busy with other test runs, load
average 2–7 on its 2 cores). Each mechanism was switched off by a throwaway patch and measured
against the code with it: the pass above (`ctx-fetcher once`, 800 reports, 150 ms per answer, a
fresh spool per run, one unmeasured warm-up pass), the two alternating, 5 to 7 runs each; the
ratio is the wall time of each pair, without / with (above 1: the mechanism helps). Kept only at
1.2× or more.

| mechanism | without / with | decision |
| --- | --- | --- |
| files built in 4 worker processes (fork server) vs in the fetcher's own process | 1.09× (min 0.87, max 1.55, n=17; three blocks: 1.25×, 1.00×, 1.06×); peak memory 91 vs 51 MiB | remove |
| (the same files built in 4 threads, one read-only SQLite connection each) | processes vs threads 1.02× (min 0.81, max 1.30, n=12); threads vs inline 1.03× (min 0.82, max 1.38, n=12) | no gain either |
| SQLite `wal_autocheckpoint` 10,000 pages vs SQLite's 1,000 | 0.94× (min 0.93, max 1.21, n=5); built inline: 1.00× (min 0.87, max 1.02, n=5) | remove |
| each folder fsynced once per task vs after each file's rename | 1.04× (min 0.96, max 1.08, n=5); built inline: 0.96× (min 0.82, max 1.25, n=5) | remove |
| listing read-ahead of 16 pages vs 2 | 1.02× (min 0.88, max 1.07, n=5) | any small bound |
| pending reports taken in stored order vs in id order | 0.92× (min 0.88, max 1.20, n=5); built inline: 1.03× (min 1.01, max 1.07, n=5) | either order |
| the listing cut into one segment per worker at the first answer vs halved by pace only | 1.01× (min 0.99, max 1.12, n=5) | remove |

The busiest block (load average 4–7) is the one where building inline lost 1.25×: on a machine
shared with other work, four processes get more of its time than one. After the last request a
pass spends 2.6 s with the processes and 3.7 s inline (medians of 17 runs: the last pages
applied, then 800 files built, fsynced and recorded), about a second of a pass of 12 to 14 s;
the listing's segments are what makes the pass fast (the speed-up above)."""

SETUPS: dict[str, dict[str, str]] = {
    "default": {},
    "c1": {"CYBERTHREATEXCHANGE_CONCURRENCY": "1"},
}


def bench_fetch_150(opts: Options) -> Result:
    result = Result("fetch-150")
    walls: dict[str, list[float]] = {tag: [] for tag in SETUPS}
    windows: dict[str, list[float]] = {tag: [] for tag in SETUPS}
    requests: dict[str, int] = {}
    spools: list[Path] = []
    with CTXStandIn(feeds=1, reports=PACE_REPORTS, orphans=20, seed=11) as ctx:
        feed = ctx.active_feed_ids[0]
        ctx.inject("latency", times=10**9, delay=PACE_LATENCY)
        # Not measured: the stand-in encodes each record's JSON the first time it serves it.
        _child, _times, warm_up = fetch_once(opts, ctx, feed, "pace-warm-up")
        spools.append(warm_up)
        for run in range(opts.runs):
            for tag, settings in SETUPS.items():
                child, times, spool = fetch_once(opts, ctx, feed, f"pace-{tag}", **settings)
                spools.append(spool)
                files = len(list((spool / "incoming").rglob("*_report--*.json")))
                if files != PACE_REPORTS:
                    raise RuntimeError(f"fetch wrote {files} report files, not {PACE_REPORTS}")
                walls[tag].append(child.wall)
                windows[tag].append(max(times) - min(times))
                requests[tag] = len(times)
                log(
                    f"fetch-150 run {run + 1}/{opts.runs} {tag}: {child.wall:.2f}s, "
                    f"{len(times)} requests"
                )
        remove_spools(spools)
    wall = {tag: Series(values) for tag, values in walls.items()}
    window = {tag: Series(values) for tag, values in windows.items()}
    ratio = Series.ratios(walls["c1"], walls["default"])
    ms = f"{PACE_LATENCY * 1000:.0f} ms"
    result.rows.append(
        Row(
            f"Fetch, {ms} per CTX answer, {PACE_REPORTS} reports: default vs CONCURRENCY=1",
            f"≥ {PACE_TARGET:g}×",
            f"{ratio.median:.2f}× ({wall['default'].median:.2f} s vs {wall['c1'].median:.2f} s)",
            ratio.median >= PACE_TARGET,
        )
    )
    result.details += [
        f"One feed of {PACE_REPORTS} reports (+20 orphans) from the CTX stand-in, {ms} added to "
        "every request (a CTX server runs a database query per page); `ctx-fetcher once` as a "
        "child process, start-up included; a fresh spool and state per run, the two set-ups "
        "alternating after one pass that is not measured (the stand-in encodes each record's "
        "JSON the first time it serves it). The ratio is the wall time of each run's pair.",
        "",
        "| set-up | wall time (process) | first → last request | requests |",
        "| --- | --- | --- | --- |",
        f"| default (CONCURRENCY=8) | {wall['default'].fmt()} | {window['default'].fmt()} | "
        f"{requests['default']} |",
        f"| CONCURRENCY=1 | {wall['c1'].fmt()} | {window['c1'].fmt()} | {requests['c1']} |",
        "",
        f"Speed-up default vs CONCURRENCY=1: {ratio.fmt('×')} on wall time.",
        "",
        DECISIONS,
    ]
    return result
