"""The benchmark cases. Each returns a :class:`Result` with its rows for BENCHMARKS.md."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.durable import publish_bytes, sha256_bytes
from shared.layout import SpoolName, relative_path
from tests.bench.diode import bench_diode
from tests.bench.fetch import bench_fetch, bench_fetch_memory, fetch_once
from tests.bench.fetch150 import bench_fetch_150
from tests.bench.harness import (
    FEED_IDS,
    TOKEN,
    Child,
    Series,
    TimedOpenCTI,
    base_env,
    log,
    rss_mib,
    small_bundle,
    tool,
    uploader_env,
    write_spool_files,
)
from tests.bench.quiet import bench_quiet
from tests.bench.result import Options, Result, Row
from tests.standins.ctx import CTXStandIn, ts

# Upload -----------------------------------------------------------------------------------------

UPLOAD_FILES = 1000
UPLOAD_FEEDS = 4
#: Added to every answer of the stand-in: a platform on a network, not on loopback.
UPLOAD_LATENCY = 0.020


@dataclass(frozen=True)
class UploadRun:
    """One upload run: the stand-in's request window and the client process's figures."""

    window: float
    wall: float
    cpu: float


def _upload_once(
    opts: Options,
    tag: str,
    argv_for: Any,
    *,
    latency: float,
    **extra: str,
) -> UploadRun:
    spool = opts.work / f"upload-{tag}-{uuid.uuid4().hex[:8]}"
    write_spool_files(spool / "incoming", UPLOAD_FILES, feeds=UPLOAD_FEEDS, seed=f"u{tag}")
    with TimedOpenCTI(TOKEN, keep_bundles=False) as standin:
        if latency:
            standin.slow(latency, times=10**9)
        env = uploader_env(spool, standin, **extra)
        child = Child(argv_for(spool), env, opts.work / f"upload-{tag}.log")
        rc = child.wait()
        if rc != 0:
            raise RuntimeError(f"{tag} exited {rc}:\n{child.tail()}")
        if len(standin.push_times) != UPLOAD_FILES:
            raise RuntimeError(f"{tag}: {len(standin.push_times)} pushes, not {UPLOAD_FILES}")
        first, last = standin.first("workAdd"), standin.last("workToProcessed")
        assert first is not None and last is not None and child.cpu is not None
    shutil.rmtree(spool)
    return UploadRun(last - first, child.wall, child.cpu)


#: The queue-threshold run: files, seconds the stand-in reports the queue over the threshold.
QUEUE_FILES = 200
QUEUE_PAUSE = 4.0


def _queue_threshold_run(opts: Options) -> tuple[int, float, float, int]:
    """``ctx-uploader once`` while the stand-in reports the connector's queue over the threshold
    for :data:`QUEUE_PAUSE` s, then under it: (pushes during the pause, first push after it in s,
    seconds from then to the last push, pause lines logged)."""
    spool = opts.work / f"upload-queue-{uuid.uuid4().hex[:8]}"
    write_spool_files(spool / "incoming", QUEUE_FILES, feeds=UPLOAD_FEEDS, seed="q")
    with TimedOpenCTI(TOKEN, keep_bundles=False) as standin:
        standin.set_queue_size(600_000_000)  # 600 MB, over the default 500 MB
        env = uploader_env(spool, standin)
        log_path = opts.work / "upload-queue.log"
        child = Child([tool("ctx-uploader"), "once"], env, log_path)
        time.sleep(QUEUE_PAUSE)
        with standin.lock:
            released = time.monotonic()
            during = len(standin.push_times)
            standin.set_queue_size(0)
        rc = child.wait()
        if rc != 0 or len(standin.push_times) != QUEUE_FILES:
            raise RuntimeError(f"queue run exited {rc}, {len(standin.push_times)} pushes")
        first_after = standin.push_times[0][0] - released
        drained = standin.push_times[-1][0] - released
    paused_lines = log_path.read_text(errors="replace").count("pausing pushes")
    shutil.rmtree(spool)
    return during, first_after, drained, paused_lines


def bench_upload(opts: Options) -> Result:
    result = Result("upload")
    bare = lambda spool: [sys.executable, "-m", "tests.bench.bareloop", str(spool / "incoming")]  # noqa: E731
    ours = lambda spool: [tool("ctx-uploader"), "once"]  # noqa: E731
    # (argv, extra environment, latency): the targets are measured against a platform answering
    # in 20 ms; the loopback pair is information only.
    setups: dict[str, tuple[Any, dict[str, str], float]] = {
        "bare": (bare, {}, UPLOAD_LATENCY),
        "ours-c4": (ours, {"UPLOADER_CONCURRENCY": str(UPLOAD_FEEDS)}, UPLOAD_LATENCY),
        "ours-c2": (ours, {}, UPLOAD_LATENCY),
        "bare-loopback": (bare, {}, 0.0),
        "ours-loopback": (ours, {"UPLOADER_CONCURRENCY": str(UPLOAD_FEEDS)}, 0.0),
    }
    runs: dict[str, list[UploadRun]] = {k: [] for k in setups}
    for run in range(opts.runs):
        for tag, (argv_for, extra, latency) in setups.items():
            measured = _upload_once(opts, tag, argv_for, latency=latency, **extra)
            runs[tag].append(measured)
            log(
                f"upload run {run + 1}/{opts.runs} {tag}: {measured.window:.2f}s window, "
                f"{measured.wall:.2f}s wall, {measured.cpu:.2f}s CPU"
            )

    during, first_after, drained, paused_lines = _queue_threshold_run(opts)
    log(
        f"upload queue threshold: {during} pushes during the pause, first push {first_after:.1f}s "
        f"after it, last {drained:.1f}s after it, {paused_lines} pause line(s)"
    )

    def windows(tag: str) -> list[float]:
        return [r.window for r in runs[tag]]

    def cpu_per_file(tag: str) -> Series:
        return Series([r.cpu / UPLOAD_FILES * 1000 for r in runs[tag]])

    thr = {k: Series([UPLOAD_FILES / w for w in windows(k)]) for k in setups}
    ratio = Series.ratios(windows("bare"), windows("ours-c4"))
    ratio_c2 = Series.ratios(windows("bare"), windows("ours-c2"))
    ratio_loop = Series.ratios(windows("bare-loopback"), windows("ours-loopback"))
    cpu_ratio = Series.ratios([r.cpu for r in runs["ours-c4"]], [r.cpu for r in runs["bare"]])
    ms = f"{UPLOAD_LATENCY * 1000:.0f} ms"
    result.rows.append(
        Row(
            f"Upload, {ms} per platform answer, {UPLOAD_FILES:,} files over {UPLOAD_FEEDS} feeds: "
            "ours (UPLOADER_CONCURRENCY=4) vs bare sequential pycti loop",
            "≥ 1.8×",
            f"{ratio.median:.2f}× ({thr['ours-c4'].median:.0f} vs {thr['bare'].median:.0f} files/s)",
            ratio.median >= 1.8,
        )
    )
    result.rows.append(
        Row(
            f"Upload, {ms}: client CPU per file, ours vs bare loop (process CPU / files)",
            "≤ 2×",
            f"{cpu_ratio.median:.2f}× ({cpu_per_file('ours-c4').median:.2f} vs "
            f"{cpu_per_file('bare').median:.2f} ms)",
            cpu_ratio.median <= 2.0,
        )
    )
    result.rows.append(
        Row(
            f"Upload, {ms}: ours with the default UPLOADER_CONCURRENCY=2 vs bare loop",
            "(figure only)",
            f"{ratio_c2.median:.2f}× ({thr['ours-c2'].median:.0f} files/s)",
            None,
        )
    )
    result.rows.append(
        Row(
            "Upload on loopback (stand-in answering at once): ours (CONCURRENCY=4) vs bare loop",
            "(figure only)",
            f"{ratio_loop.median:.2f}× ({thr['ours-loopback'].median:.0f} vs "
            f"{thr['bare-loopback'].median:.0f} files/s)",
            None,
        )
    )

    result.rows.append(
        Row(
            "Upload while the connector's queue is over CONNECTOR_QUEUE_THRESHOLD "
            f"({QUEUE_PAUSE:g} s), then under it",
            "no push while over; all after",
            f"{during} pushes while over; first push {first_after:.1f} s after, all "
            f"{QUEUE_FILES} by {drained:.1f} s; {paused_lines} pause line logged",
            during == 0 and paused_lines == 1,
        )
    )

    def line(label: str, tag: str) -> str:
        wall = Series([r.wall for r in runs[tag]])
        return (
            f"| {label} | {thr[tag].fmt('files/s', 0)} | {Series(windows(tag)).fmt()} | "
            f"{wall.fmt()} | {cpu_per_file(tag).fmt('ms', 2)} |"
        )

    result.details += [
        f"{UPLOAD_FILES} small files (~900 bytes: a report and an indicator) over {UPLOAD_FEEDS} feeds, "
        f"to the OpenCTI stand-in (a fresh one per run) answering every request after {ms} (a "
        "platform on a network), and once on loopback. Throughput = files / (first `workAdd` → "
        "last `workToProcessed` received by the stand-in): process start-up, pycti import and "
        "connector registration are excluded for both sides alike. CPU per file = the client "
        "process's user + system CPU (wait4) / files, start-up included for both. Ours is "
        "`ctx-uploader once` (digest check, claim, receipt, durable moves to done/, the "
        "queue-size look included), making pycti's public calls; the bare loop is "
        "`tests/bench/bareloop.py` (read the file, initiate_work, send_stix2_bundle, to_processed, "
        "one file after another).",
        "",
        "| set-up | files/s | window | process wall time | CPU per file |",
        "| --- | --- | --- | --- | --- |",
        line(f"bare pycti loop, {ms}", "bare"),
        line(f"ctx-uploader once, CONCURRENCY=4, {ms}", "ours-c4"),
        line(f"ctx-uploader once, CONCURRENCY=2 (default), {ms}", "ours-c2"),
        line("bare pycti loop, loopback", "bare-loopback"),
        line("ctx-uploader once, CONCURRENCY=4, loopback", "ours-loopback"),
        "",
        f"Ratio ours/bare (throughput, each run's pair): {ratio.fmt('×')} with 4 feeds in "
        f"parallel, {ratio_c2.fmt('×')} with 2; on loopback {ratio_loop.fmt('×')}. CPU ours/bare: "
        f"{cpu_ratio.fmt('×')}. With the platform taking {ms} per answer the client's CPU is not "
        "the pace: feeds in parallel overlap the platform's time, one per feed in flight.",
        "",
        f"Queue threshold: `ctx-uploader once` over {QUEUE_FILES} files while the stand-in reports "
        f"600 MB in the connector's queue (default threshold 500 MB) for {QUEUE_PAUSE:g} s, then 0: "
        f"{during} pushes while over, the first push {first_after:.1f} s after the queue went under "
        f"(the uploader looks every 10 s), the last {drained:.1f} s after; 'pausing pushes' logged "
        f"{paused_lines} time(s).",
    ]
    return result


# Watch latency ----------------------------------------------------------------------------------

WATCH_FEED = FEED_IDS[0]


def _watch_samples(opts: Options, polling: bool, samples: int) -> list[float]:
    spool = opts.work / f"watch-{'poll' if polling else 'inotify'}-{uuid.uuid4().hex[:8]}"
    (spool / "incoming").mkdir(parents=True)
    latencies = []
    with TimedOpenCTI(TOKEN) as standin:
        env = uploader_env(
            spool,
            standin,
            CONNECTOR_LOG_LEVEL="info",
            UPLOADER_POLLING="true" if polling else "false",
            UPLOADER_POLL_INTERVAL="1.0",
        )
        child = Child([tool("ctx-uploader"), "watch"], env, opts.work / "watch.log")
        try:
            if not child.wait_for_text("watching", 60):
                raise RuntimeError(f"watch did not start:\n{child.tail()}")
            base = datetime(2025, 6, 1, tzinfo=UTC)
            for i in range(samples + 1):  # the first one is a warm-up (pycti connects lazily)
                bundle_id, data = small_bundle(i, f"w{polling}{uuid.uuid4().hex[:6]}")
                name = SpoolName(
                    base + timedelta(seconds=i), f"report--{uuid.uuid4()}", sha256_bytes(data)
                )
                path = spool / "incoming" / Path(*relative_path(WATCH_FEED, name).parts)
                publish_bytes(path, data)
                published = time.monotonic()
                received = standin.wait_push(bundle_id, 30)
                if received is None:
                    raise RuntimeError(f"no push for sample {i}:\n{child.tail()}")
                if i:
                    latencies.append(received - published)
                time.sleep(0.15)
        finally:
            child.signal(signal.SIGTERM)
            child.wait(60)
    shutil.rmtree(spool)
    return latencies


def bench_watch(opts: Options) -> Result:
    result = Result("watch")
    n_inotify = 10 if opts.quick else 30
    n_poll = 5 if opts.quick else 12
    inotify = Series(_watch_samples(opts, False, n_inotify))
    log(f"watch inotify: median {inotify.median * 1000:.0f} ms")
    polling = Series(_watch_samples(opts, True, n_poll))
    log(f"watch polling: median {polling.median * 1000:.0f} ms")
    result.rows.append(
        Row(
            "Watch latency, inotify (publish → push received)",
            "(figure only)",
            f"{inotify.median * 1000:.0f} ms (max {inotify.spread[1] * 1000:.0f} ms)",
            None,
        )
    )
    result.rows.append(
        Row(
            "Watch latency, polling every 1.0 s",
            "(figure only)",
            f"{polling.median * 1000:.0f} ms (max {polling.spread[1] * 1000:.0f} ms)",
            None,
        )
    )
    result.details += [
        "`ctx-uploader watch` as a child process; the bench publishes one small file at a time into "
        "`incoming/` as the fetcher does (`publish_bytes`: temp file, fsync, "
        "rename, fsync of the folder) and times from its return to the push received by the "
        "OpenCTI stand-in. One warm-up file first (pycti registers the connector on the first "
        "file). watchdog's inotify emitter holds a rename for up to 0.5 s to pair it with its "
        "source: about 0.3 s is what its public API gives, a figure, not a target.",
        "",
        f"- inotify: {Series([v * 1000 for v in inotify.values]).fmt('ms', 0)}",
        f"- polling (UPLOADER_POLL_INTERVAL=1.0): {Series([v * 1000 for v in polling.values]).fmt('ms', 0)}",
    ]
    return result


# Scale ------------------------------------------------------------------------------------------


def bench_scale(opts: Options) -> Result:
    result = Result("scale")
    count = 20_000 if opts.quick else 100_000
    feeds = 10
    spool = opts.work / "scale"
    if spool.exists():
        shutil.rmtree(spool)
    started = time.monotonic()
    write_spool_files(spool / "incoming", count, feeds=feeds, seed="s")
    gen_time = time.monotonic() - started
    log(f"scale: {count} files generated in {gen_time:.1f}s")
    first_push: list[float] = []
    peaks: list[float] = []
    for run in range(opts.runs):
        with TimedOpenCTI(TOKEN, keep_bundles=False) as standin:
            env = uploader_env(spool, standin)
            child = Child([tool("ctx-uploader"), "watch"], env, opts.work / "scale-watch.log")
            try:
                when = standin.wait_push(None, 120)
                if when is None:
                    raise RuntimeError(f"no push within 120 s:\n{child.tail()}")
                first_push.append(when - child.started)
                time.sleep(3)  # importing at full speed for a while
                child.sample_helpers()
            finally:
                child.signal(signal.SIGTERM)
                child.wait(120)
            peaks.append(rss_mib(child.tree_peak_kib))
            log(
                f"scale run {run + 1}: first push after {first_push[-1]:.2f}s, peak {peaks[-1]:.0f} MiB, {len(standin.push_times)} pushed"
            )
    status_wall: list[float] = []
    status_rss: list[float] = []
    env = {**base_env(), "SPOOL_DIR": str(spool), "CONNECTOR_LOG_LEVEL": "warn"}
    for _ in range(opts.runs):
        child = Child([tool("ctx-uploader"), "status"], env, opts.work / "scale-status.log")
        if child.wait(300) != 0:
            raise RuntimeError(f"status failed:\n{child.tail()}")
        status_wall.append(child.wall)
        status_rss.append(rss_mib(child.peak_rss_kib))
    log(f"scale status: {Series(status_wall).median:.2f}s")

    # Memory against the number of files already in done/: the same 300 new files, once with an
    # empty done/, once with every generated file moved into done/.
    shutil.rmtree(spool / "done", ignore_errors=True)
    shutil.rmtree(spool / "processing", ignore_errors=True)
    (spool / "incoming").rename(spool / "done")
    in_done = sum(1 for _ in (spool / "done").rglob("*.json"))
    empty = opts.work / "scale-empty"
    shutil.rmtree(empty, ignore_errors=True)
    rss_by: dict[str, list[float]] = {
        "empty": [],
        "full": [],
        "status-empty": [],
        "status-full": [],
    }
    for run in range(opts.runs):
        for tag, root in (("empty", empty), ("full", spool)):
            write_spool_files(root / "incoming", 300, feeds=3, seed=f"d{run}")
            with TimedOpenCTI(TOKEN, keep_bundles=False) as standin:
                child = Child(
                    [tool("ctx-uploader"), "once"],
                    uploader_env(root, standin),
                    opts.work / "scale-once.log",
                )
                if child.wait(300) != 0:
                    raise RuntimeError(f"once failed:\n{child.tail()}")
            rss_by[tag].append(rss_mib(child.tree_peak_kib))
            env = {**base_env(), "SPOOL_DIR": str(root), "CONNECTOR_LOG_LEVEL": "warn"}
            child = Child([tool("ctx-uploader"), "status"], env, opts.work / "scale-status.log")
            child.wait(300)
            rss_by[f"status-{tag}"].append(rss_mib(child.peak_rss_kib))
    grow = Series.differences(rss_by["full"], rss_by["empty"])
    grow_status = Series.differences(rss_by["status-full"], rss_by["status-empty"])
    shutil.rmtree(spool)
    shutil.rmtree(empty)

    fp, sw = Series(first_push), Series(status_wall)
    peak = Series(peaks)
    result.rows += [
        Row(
            f"Scale: {count:,} files, uploader start → first push",
            "≤ 3 s",
            f"{fp.median:.2f} s",
            fp.median <= 3,
        ),
        Row(
            f"Scale: `ctx-uploader status` on {count:,} files",
            "≤ 5 s",
            f"{sw.median:.2f} s",
            sw.median <= 5,
        ),
        Row(
            "Scale: uploader peak RSS",
            "≤ 300 MB",
            f"{max(peaks):.0f} MiB (worst run)",
            max(peaks) * 1.048576 <= 300,
        ),
        Row(
            f"Scale: uploader memory with {in_done:,} files in done/ vs none",
            "no growth",
            f"{grow.median:+.1f} MiB",
            grow.median <= 5,
        ),
    ]
    result.details += [
        f"{count:,} small valid bundles over {feeds} feeds, named per the contract, generated in "
        f"{gen_time:.1f} s (plain writes). `ctx-uploader watch` as a child process: time from "
        "process start (fork) to the first push received by the stand-in (Python start-up, pycti "
        "import and connector registration included); it then imports for 3 s and is stopped with "
        "SIGTERM; the uploader's peak RSS is its own VmHWM plus that of any process it starts, "
        "each read until it exits (see harness.Child).",
        "",
        f"- start → first push: {fp.fmt()}",
        f"- uploader peak RSS: {peak.fmt('MiB', 0)}",
        f"- `ctx-uploader status`: {sw.fmt()}, peak RSS {Series(status_rss).fmt('MiB', 0)}",
        f"- 300 new files, `ctx-uploader once` peak RSS with {in_done:,} files in done/: "
        f"{Series(rss_by['full']).fmt('MiB', 1)}; with an empty done/: {Series(rss_by['empty']).fmt('MiB', 1)} "
        f"(difference {grow.fmt('MiB', 1)})",
        f"- `ctx-uploader status` peak RSS with {in_done:,} files in done/: "
        f"{Series(rss_by['status-full']).fmt('MiB', 1)}; with 300 files: {Series(rss_by['status-empty']).fmt('MiB', 1)} "
        f"(difference {grow_status.fmt('MiB', 1)})",
    ]
    return result


# Big bundle -------------------------------------------------------------------------------------


def _grow_report(ctx: CTXStandIn, feed_id: str, target_bytes: int) -> int:
    """Give the feed's first report ~``target_bytes`` of related indicators (~4 KB each)."""
    report = ctx.object(feed_id, ctx.report_ids(feed_id)[0])
    identity = report["created_by_ref"]
    indicators: list[dict[str, Any]] = []
    words = [
        "lateral",
        "movement",
        "beacon",
        "loader",
        "dropper",
        "persistence",
        "exfiltration",
        "staging",
        "credential",
        "access",
        "phishing",
        "lure",
        "macro",
        "payload",
        "sideloading",
    ]
    record = datetime(2025, 4, 1, tzinfo=UTC)
    made = 0
    size = 0
    while size < target_bytes:
        stamp = ts(record + timedelta(seconds=made))
        ident = f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, f'big-{made}')}"
        text = " ".join(words[(made + k) % len(words)] for k in range(420))
        obj = {
            "type": "indicator",
            "spec_version": "2.1",
            "id": ident,
            "created": stamp,
            "modified": stamp,
            "created_by_ref": identity,
            "name": f"big indicator {made}",
            "description": text,
            "indicator_types": ["malicious-activity"],
            "pattern": f"[ipv4-addr:value = '198.18.{made // 250 % 250}.{made % 250}']",
            "pattern_type": "stix",
            "valid_from": stamp,
            "labels": ["bench", "big-bundle"],
        }
        indicators.append(obj)
        report["object_refs"].append(ident)
        size += len(json.dumps(obj))
        made += 1
    # One upload, as CTX would store it: the indicators and a new version of the report.
    report["modified"] = ts(record + timedelta(seconds=made + 1))
    ctx.upload(feed_id, [*indicators, report])
    return made


SPLIT_PUSH_BYTES = 8 * 1024 * 1024


def bench_big(opts: Options) -> Result:
    result = Result("big")
    target = (10 if opts.quick else 40) * 1024 * 1024
    fetch_ratio: list[float] = []
    upload_ratio: list[float] = []
    sizes: list[int] = []
    fetch_rss: list[float] = []
    upload_rss: list[float] = []
    split_rss: list[float] = []
    with CTXStandIn(feeds=1, reports=1, orphans=0, seed=5) as ctx:
        feed = ctx.active_feed_ids[0]
        objects = _grow_report(ctx, feed, target)
        for run in range(max(2, opts.runs - 1)):
            child, _times, spool = fetch_once(opts, ctx, feed, "big")
            files = sorted((spool / "incoming").rglob("*.json"), key=lambda p: p.stat().st_size)
            size = files[-1].stat().st_size
            sizes.append(size)
            fetch_rss.append(rss_mib(child.memory_peak_kib))
            fetch_ratio.append(child.memory_peak_kib * 1024 / size)
            with TimedOpenCTI(TOKEN, keep_bundles=False) as standin:
                up = Child(
                    [tool("ctx-uploader"), "once"],
                    uploader_env(spool, standin),
                    opts.work / "big-upload.log",
                )
                up.wait(600)
            # What counts here is the big file reaching done/ (the exit status covers the
            # feed's other files too).
            if not list((spool / "done").rglob(files[-1].name)):
                raise RuntimeError(f"the big bundle did not reach done/:\n{up.tail()}")
            upload_rss.append(rss_mib(up.tree_peak_kib))
            upload_ratio.append(up.tree_peak_kib * 1024 / size)
            # The same file again (replayed from done/), pushed in 8 MiB pieces under one work.
            env = {**base_env(), "SPOOL_DIR": str(spool), "CONNECTOR_LOG_LEVEL": "warn"}
            replay = Child(
                [tool("ctx-uploader"), "replay", "--from", "done"],
                env,
                opts.work / "big-replay.log",
            )
            replay.wait(120)
            with TimedOpenCTI(TOKEN, keep_bundles=False) as standin:
                split = Child(
                    [tool("ctx-uploader"), "once"],
                    uploader_env(spool, standin, UPLOADER_MAX_PUSH_BYTES=str(SPLIT_PUSH_BYTES)),
                    opts.work / "big-upload-split.log",
                )
                split.wait(600)
            split_rss.append(rss_mib(split.tree_peak_kib))
            log(
                f"big run {run + 1}: file {size / 2**20:.1f} MiB, fetch {fetch_rss[-1]:.0f} MiB ({child.wall:.1f}s), upload {upload_rss[-1]:.0f} MiB ({up.wall:.1f}s)"
            )
            shutil.rmtree(spool)
    fr, ur = Series(fetch_ratio), Series(upload_ratio)
    mib = sizes[0] / 2**20
    result.rows += [
        Row(
            f"Big bundle ({mib:.0f} MiB): fetcher peak memory",
            "≤ 4× file size",
            f"{max(fetch_ratio):.1f}× ({max(fetch_rss):.0f} MiB)",
            max(fetch_ratio) <= 4,
        ),
        Row(
            f"Big bundle ({mib:.0f} MiB): uploader peak RSS",
            "≤ 4× file size",
            f"{max(upload_ratio):.1f}× ({max(upload_rss):.0f} MiB)",
            max(upload_ratio) <= 4,
        ),
        Row(
            f"Big bundle ({mib:.0f} MiB): uploader peak RSS, UPLOADER_MAX_PUSH_BYTES=8 MiB",
            "(figure only)",
            f"{max(split_rss) * 2**20 / sizes[0]:.1f}× ({max(split_rss):.0f} MiB)",
            None,
        ),
    ]
    result.details += [
        f"One report whose bundle holds {objects:,} indicators of ~4 KB ({mib:.1f} MiB file), served by "
        "the CTX stand-in; `ctx-fetcher once` then `ctx-uploader once` (one push: under "
        "UPLOADER_MAX_PUSH_BYTES) as child processes. The fetcher's peak memory counts all its "
        "processes (the greatest sum of their PSS over samples every 5 ms, or its own VmHWM if "
        "greater); the uploader's peak RSS is its own VmHWM plus that of any process it starts, "
        "read until it exits (harness.Child).",
        "",
        f"- fetcher peak memory / file size: {fr.fmt('×', 2)} ({Series(fetch_rss).fmt('MiB', 0)})",
        f"- uploader peak RSS / file size: {ur.fmt('×', 2)} ({Series(upload_rss).fmt('MiB', 0)})",
        f"- the same file replayed and pushed in 8 MiB pieces (UPLOADER_MAX_PUSH_BYTES=8388608): "
        f"{Series(split_rss).fmt('MiB', 0)}",
    ]
    return result


BENCHMARKS = {
    "fetch-150": bench_fetch_150,
    "fetch": bench_fetch,
    "fetch-memory": bench_fetch_memory,
    "fetch-quiet": bench_quiet,
    "upload": bench_upload,
    "watch": bench_watch,
    "scale": bench_scale,
    "big": bench_big,
    "diode": bench_diode,
}
