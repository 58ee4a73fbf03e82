"""Fetch benchmarks at 20 ms per request: parallel speed-up (information: the target is
measured at a real API's pace, tests/bench/fetch150.py) and rate limit; memory against the feed's
size."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from tests.bench.harness import Child, Series, base_env, log, max_rate, rss_mib, tool
from tests.bench.result import Options, Result, Row
from tests.standins.ctx import CTXStandIn

# Speed ------------------------------------------------------------------------------------------

FETCH_REPORTS = 1000
FETCH_LATENCY = 0.02
FETCH_RATE_LIMIT = 100.0


def remove_spools(spools: list[Path]) -> None:
    """Remove the spools of a benchmark's runs, after its last run.

    Not between runs: ext4 without a journal (the filesystem of the machine these figures come
    from) skips inodes freed in the last minute or more when it allocates one, reading each freed
    inode to check (Linux ``fs/ext4/ialloc.c``, ``recently_deleted``). A run right after the
    removal of a previous run's thousands of files spent a quarter of its CPU there (perf), which
    is the benchmark's own doing, not the fetcher's.
    """
    for spool in spools:
        shutil.rmtree(spool, ignore_errors=True)


def fetch_once(
    opts: Options, ctx: CTXStandIn, feed: str, tag: str, **settings: str
) -> tuple[Child, list[float], Path]:
    spool = opts.work / f"fetch-{tag}-{uuid.uuid4().hex[:8]}"
    env = {
        **base_env(),
        "CYBERTHREATEXCHANGE_BASE_URL": ctx.base_url,
        "CYBERTHREATEXCHANGE_API_KEY": ctx.api_key,
        "CYBERTHREATEXCHANGE_FEED_IDS": feed,
        "SPOOL_DIR": str(spool),
        "CONNECTOR_LOG_LEVEL": "warn",
        **settings,
    }
    mark = len(ctx.requests)
    child = Child([tool("ctx-fetcher"), "once"], env, opts.work / f"fetch-{tag}.log")
    rc = child.wait()
    if rc != 0:
        raise RuntimeError(f"ctx-fetcher once exited {rc}:\n{child.tail()}")
    times = [r.at for r in ctx.requests[mark:]]
    ctx.last_listing_requests = sum(  # type: ignore[attr-defined]
        1 for r in ctx.requests[mark:] if r.path.endswith("/objects/") and "types" not in r.query
    )
    ctx.last_half_requests = sum(  # type: ignore[attr-defined]
        1 for r in ctx.requests[mark:] if r.path.endswith("/objects/") and "types" in r.query
    )
    return child, times, spool


def bench_fetch(opts: Options) -> Result:
    result = Result("fetch")
    runs = opts.runs
    with CTXStandIn(feeds=1, reports=FETCH_REPORTS, orphans=20, seed=11) as ctx:
        feed = ctx.active_feed_ids[0]
        ctx.inject("latency", times=10**9, delay=FETCH_LATENCY)
        walls: dict[str, list[float]] = {"default": [], "c1": [], "limited": []}
        windows: dict[str, list[float]] = {"default": [], "c1": [], "limited": []}
        rates: list[float] = []
        requests = 0
        spools: list[Path] = []
        # One pass first, not measured: the stand-in encodes each record's JSON the first time
        # it serves it and keeps it (Collection.json in tests/standins/ctx_records.py), which
        # would otherwise load the machine during whichever set-up happens to run first.
        _child, _times, warm_up = fetch_once(opts, ctx, feed, "warm-up")
        spools.append(warm_up)
        log("fetch warm-up pass done")
        for run in range(runs):
            for tag, settings in (
                ("default", {}),
                ("c1", {"CYBERTHREATEXCHANGE_CONCURRENCY": "1"}),
                (
                    "limited",
                    {"CYBERTHREATEXCHANGE_MAX_REQUESTS_PER_SECOND": f"{FETCH_RATE_LIMIT:g}"},
                ),
            ):
                child, times, spool = fetch_once(opts, ctx, feed, tag, **settings)
                files = len(list((spool / "incoming").rglob("*_report--*.json")))
                if files != FETCH_REPORTS:
                    raise RuntimeError(f"fetch wrote {files} report files, not {FETCH_REPORTS}")
                walls[tag].append(child.wall)
                windows[tag].append(max(times) - min(times))
                chain = ctx.last_listing_requests  # type: ignore[attr-defined]
                halves = ctx.last_half_requests  # type: ignore[attr-defined]
                requests = len(times)
                if tag == "limited":
                    rates.append(max_rate(times))
                spools.append(spool)
                log(f"fetch run {run + 1}/{runs} {tag}: {child.wall:.2f}s, {len(times)} requests")
        remove_spools(spools)
    wall = {k: Series(v) for k, v in walls.items()}
    window = {k: Series(v) for k, v in windows.items()}
    ratio = Series.ratios(walls["c1"], walls["default"])
    ratio_window = Series.ratios(windows["c1"], windows["default"])
    peak_rate = max(rates)
    result.rows.append(
        Row(
            f"Fetch, {FETCH_LATENCY * 1000:.0f} ms per CTX answer, {FETCH_REPORTS:,} reports: "
            "default vs CONCURRENCY=1",
            "(figure only)",
            f"{ratio.median:.2f}× ({wall['default'].median:.2f} s vs {wall['c1'].median:.2f} s)",
            None,
        )
    )
    result.rows.append(
        Row(
            f"Fetch: MAX_REQUESTS_PER_SECOND={FETCH_RATE_LIMIT:g}",
            f"max observed ≤ {FETCH_RATE_LIMIT:g}/s",
            f"{peak_rate:.0f}/s (any 1 s window)",
            peak_rate <= FETCH_RATE_LIMIT,
        )
    )
    result.details += [
        f"{FETCH_REPORTS} reports (+20 orphans, {requests} requests per pass) from the CTX stand-in, "
        f"{FETCH_LATENCY * 1000:.0f} ms added to every request; `ctx-fetcher once` as a child "
        "process (start-up included, the same for every set-up); a fresh spool and ledger per run, "
        "after one pass that is not measured (the stand-in encodes each record's JSON the first "
        "time it serves it).",
        "",
        "| set-up | wall time (process) | first → last request |",
        "| --- | --- | --- |",
        f"| default (CONCURRENCY=8) | {wall['default'].fmt()} | {window['default'].fmt()} |",
        f"| CONCURRENCY=1 | {wall['c1'].fmt()} | {window['c1'].fmt()} |",
        f"| default + MAX_REQUESTS_PER_SECOND={FETCH_RATE_LIMIT:g} | {wall['limited'].fmt()} | {window['limited'].fmt()} |",
        "",
        f"Speed-up default vs CONCURRENCY=1: {ratio.fmt('×')} on wall time, "
        f"{ratio_window.fmt('×')} on the request window.",
        f"The last pass asked {chain} listing pages and {halves} half-end requests (where a "
        "page's half was cut short): one chain of round trips at CONCURRENCY=1, segments of "
        "time read at once by default. No bundle endpoint is used. At 20 ms per request the "
        "default set-up is bound by the CPU and one request at a time by the network, so the "
        "ratio follows the machine's load: a figure, not a target (fetch-150 is the target).",
        "",
        f"Highest request rate with the limit, over any 1 s window: "
        f"{', '.join(f'{r:.0f}/s' for r in rates)}.",
    ]
    return result


# Memory -----------------------------------------------------------------------------------------

MEMORY_FEEDS = (500, 2000)
#: Peak RSS may differ by this much between the small and the big feed and still count as flat:
#: allocator noise and SQLite's page cache (2 MiB by default), not a per-record cost.
MEMORY_SLACK = 0.10


def bench_fetch_memory(opts: Options) -> Result:
    """Peak RSS of ``ctx-fetcher once`` on a feed of 500 reports and one of 2,000 (4× the records).

    Memory counts all of the fetcher's processes (:attr:`harness.Child.memory_peak_kib`).
    The fetcher keeps the feed in its mirror on disk and holds only bounded windows in memory (the
    pages read ahead, the report files of a commit or two, at most 1,000 objects per feed-level
    file), so its peak must not follow the feed's size.
    """
    result = Result("fetch-memory")
    peaks: dict[int, list[float]] = {n: [] for n in MEMORY_FEEDS}
    records: dict[int, int] = {}
    walls: dict[int, list[float]] = {n: [] for n in MEMORY_FEEDS}
    worlds = {n: CTXStandIn(feeds=1, reports=n, orphans=20, seed=13) for n in MEMORY_FEEDS}
    spools: list[Path] = []
    try:
        for ctx in worlds.values():
            ctx.start()
        for run in range(max(2, opts.runs - 1)):
            for n, ctx in worlds.items():
                feed = ctx.active_feed_ids[0]
                records[n] = len(ctx.records(feed))
                child, _times, spool = fetch_once(opts, ctx, feed, f"memory-{n}")
                files = len(list((spool / "incoming").rglob("*_report--*.json")))
                if files != n:
                    raise RuntimeError(f"fetch wrote {files} report files, not {n}")
                peaks[n].append(rss_mib(child.memory_peak_kib))
                walls[n].append(child.wall)
                spools.append(spool)
                log(
                    f"fetch-memory run {run + 1} {n} reports: {peaks[n][-1]:.1f} MiB, {child.wall:.1f}s"
                )
    finally:
        for ctx in worlds.values():
            ctx.stop()
        remove_spools(spools)
    small, big = MEMORY_FEEDS
    growth = max(peaks[big]) / max(peaks[small]) - 1
    result.rows.append(
        Row(
            f"Fetch: peak memory, {big:,} vs {small:,} reports",
            f"no growth (≤ {MEMORY_SLACK:.0%})",
            f"{growth:+.1%} ({max(peaks[big]):.0f} MiB vs {max(peaks[small]):.0f} MiB)",
            growth <= MEMORY_SLACK,
        )
    )
    result.details += [
        "`ctx-fetcher once` as a child process against the CTX stand-in, no added latency; a "
        "fresh spool and state per run. Peak memory counts every process of the fetcher (itself "
        "and any process it starts): the greatest sum of their PSS over samples every 5 ms, or "
        "the fetcher's own VmHWM if greater (harness.Child.memory_peak_kib).",
        "",
        "| feed | records served | peak memory | wall time |",
        "| --- | --- | --- | --- |",
        *(
            f"| {n:,} reports | {records[n]:,} | {Series(peaks[n]).fmt('MiB', 1)} | "
            f"{Series(walls[n]).fmt()} |"
            for n in MEMORY_FEEDS
        ),
    ]
    return result
