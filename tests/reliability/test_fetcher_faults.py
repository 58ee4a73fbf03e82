"""CTX faults, a full disk and hostile answers against a real ``ctx-fetcher``."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.errors import UnsafeNameError
from shared.layout import parse_relative_path
from tests.reliability import harness
from tests.reliability.harness import PartialWatch, Row, record
from tests.reliability.test_fetcher_crash import cursor_overruns
from tests.standins.ctx import CTXStandIn, Feed

#: (id, faults to inject as inject() keyword sets, extra env)
FAULTS: list[tuple[str, list[dict[str, Any]], dict[str, str]]] = [
    (
        "429-retry-after",
        [{"kind": "status", "path_contains": "/objects/", "status": 429, "retry_after": "1", "times": 2}],
        {},
    ),
    (
        "429-storm-beyond-retries",
        [{"kind": "status", "path_contains": "/objects/", "status": 429, "retry_after": "0", "times": 40}],
        {},
    ),
    (
        "5xx-burst",
        [
            {"kind": "status", "path_contains": "/objects/", "status": 502, "times": 2},
            {"kind": "status", "path_contains": "/objects/", "status": 503, "times": 3},
        ],
        {},
    ),
    (
        "5xx-beyond-retries",
        [{"kind": "status", "path_contains": "/objects/", "status": 500, "times": 60}],
        {},
    ),
    (
        "slow-past-read-timeout",
        [{"kind": "latency", "path_contains": "/objects/", "delay": 1.6, "times": 3}],
        {"CYBERTHREATEXCHANGE_READ_TIMEOUT": "1"},
    ),
    (
        "dropped-connections",
        [{"kind": "drop", "path_contains": "/objects/", "times": 3}],
        {},
    ),
    (
        "malformed-json",
        [{"kind": "malformed", "path_contains": "/objects/", "times": 1}],
        {},
    ),
    (
        "huge-answer-cut-short",
        [{"kind": "truncated", "path_contains": "/objects/", "announced": 500 * 2**20, "times": 8}],
        {},
    ),
]  # fmt: skip
if harness.FULL:
    FAULTS += [
        (
            "429-storm-on-subscriptions",
            [{"kind": "status", "path_contains": "/subscriptions/", "status": 429, "times": 5}],
            {},
        ),
        (
            "mixed-drops-and-5xx-on-listing",
            [
                {"kind": "drop", "path_contains": "/objects/", "times": 2},
                {"kind": "status", "path_contains": "/objects/", "status": 504, "times": 2},
            ],
            {},
        ),
    ]


def served(ctx: CTXStandIn, injected: int) -> int:
    return injected - sum(f.times for f in ctx.faults)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("faults", "extra"), [pytest.param(f, e, id=i) for i, f, e in FAULTS])
def test_ctx_fault_then_clean_pass_gets_everything(
    ctx: CTXStandIn,
    baseline: set[str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    faults: list[dict[str, Any]],
    extra: dict[str, str],
) -> None:
    spool_dir = tmp_path / "spool"
    env = harness.fetcher_env(ctx.base_url, ctx.active_feed_ids, spool_dir, **extra)
    injected = 0
    for fault in faults:
        spec = dict(fault)
        ctx.inject(spec.pop("kind"), **spec)
        injected += fault["times"]
    with PartialWatch(spool_dir / "incoming") as watch:
        first = harness.fetcher(["once"], env, tmp_path)
        code = first.wait(240)
        hit = served(ctx, injected)
        overruns = cursor_overruns(ctx, spool_dir)
        for fault in ctx.faults:
            fault.times = 0
        second = harness.fetcher(["once"], env, tmp_path)
        assert second.wait(240) == 0, second.text()[-3000:]
    got = set(harness.bundles(spool_dir / "incoming"))
    temps = [p for p in (spool_dir / "incoming").rglob(".*") if p.is_file()]
    clean = code == 0 or (code == 1 and "failed:" in first.stdout + first.stderr)
    record(
        Row(
            f"CTX fault: {request.node.callspec.id}",
            1,
            hit,
            len(got),
            len(baseline - got),
            len(got - baseline),
            len(watch.partial) + len(overruns) + len(temps) + (not clean),
            note="pass 1 "
            + ("completed" if code == 0 else "failed cleanly" if clean else "crashed"),
        )
    )
    assert hit > 0
    assert clean, first.text()[-3000:]
    assert "Traceback" not in first.stderr, first.stderr[-3000:]
    assert watch.partial == [] and temps == [] and overruns == []
    assert got == baseline


def test_pagination_style_switches_between_passes(ctx: CTXStandIn, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    env = harness.fetcher_env(ctx.base_url, ctx.active_feed_ids, spool_dir)
    feed = ctx.active_feed_ids[0]
    updated: list[str] = []
    for step, style in enumerate(["cursor", "page", "cursor", "page"]):
        ctx.style = style
        if step:
            ctx.add_objects(feed, 7, same_record_time=step % 2 == 0)
            updated.append(ctx.update_report(feed, ctx.feeds[feed].report_ids[step]))
        proc = harness.fetcher(["once"], env, tmp_path)
        assert proc.wait(120) == 0, proc.text()[-3000:]
    incoming = spool_dir / "incoming"
    missing = 0
    names: dict[tuple[str, str, str], int] = {}
    for feed_id in ctx.active_feed_ids:
        ids: set[str] = set()
        for rel in harness.bundles(incoming):
            file_feed, name = parse_relative_path(rel)
            if file_feed == feed_id:
                ids |= harness.file_ids(incoming / rel)
                key = (feed_id, name.subject, name.filename[:22])
                names[key] = names.get(key, 0) + 1
        missing += len(ctx.expected_ids(feed_id) - ids)
    duplicated = sum(
        n - 1 for (_f, subject, _m), n in names.items() if n > 1 and subject != "objects"
    )
    stale = 0
    for report_id in updated:
        current = ctx.object(feed, report_id)
        newest = max(
            (rel for rel in harness.bundles(incoming) if report_id in rel), key=lambda r: r
        )
        objs = {o["id"]: o for o in json.loads((incoming / newest).read_bytes())["objects"]}
        stale += objs[report_id]["modified"] != current["modified"]
    record(
        Row(
            "CTX pagination style switching between passes",
            4,
            3,
            len(harness.bundles(incoming)),
            missing,
            duplicated,
            stale,
            note="cursor → page → cursor → page, new and updated objects each time",
        )
    )
    assert missing == 0 and duplicated == 0 and stale == 0


def limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        # Ignored, SIGXFSZ does not kill the writer: its write() fails with EFBIG instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "limit",
    [
        pytest.param(6_000, id="6KB"),
        pytest.param(20_000, id="20KB"),
        pytest.param(60_000, id="60KB"),
    ],
)
def test_disk_full_while_writing(
    ctx: CTXStandIn, baseline: set[str], tmp_path: Path, limit: int
) -> None:
    spool_dir = tmp_path / "spool"
    env = harness.fetcher_env(ctx.base_url, ctx.active_feed_ids, spool_dir)
    with PartialWatch(spool_dir / "incoming") as watch:
        first = harness.fetcher(["once"], env, tmp_path, preexec_fn=limit_file_size(limit))
        code = first.wait(120)
        overruns = cursor_overruns(ctx, spool_dir)
        temps = [p for p in spool_dir.rglob(".*.tmp") if p.is_file()]
        written = set(harness.bundles(spool_dir / "incoming"))
        second = harness.fetcher(["once"], env, tmp_path)
        assert second.wait(120) == 0, second.text()[-3000:]
    got = set(harness.bundles(spool_dir / "incoming"))
    message = first.stdout + first.stderr
    clear = "File too large" in message or "disk" in message.lower()
    record(
        Row(
            f"Disk full while the fetcher writes (file size limit {limit // 1000} KB)",
            1,
            1,
            len(got),
            len(baseline - got),
            len(got - baseline),
            len(watch.partial) + len(overruns) + len(temps) + (not clear) + (code == 0),
            note=f"{len(written)} files before the limit hit",
        )
    )
    assert code == 1, message[-3000:]
    assert clear, message[-3000:]
    assert "Traceback" not in first.stderr, first.stderr[-3000:]
    assert watch.partial == [] and overruns == [] and temps == []
    assert got == baseline


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", [pytest.param("24k", id="24KB"), pytest.param("80k", id="80KB")])
def test_spool_filesystem_full_while_writing(
    ctx: CTXStandIn, baseline: set[str], tmp_path: Path, size: str
) -> None:
    """incoming/ on a tiny tmpfs (root only): the spool itself runs out of space (ENOSPC)."""
    spool_dir = tmp_path / "spool"
    incoming = spool_dir / "incoming"
    if os.geteuid() != 0 or not _mount_tmpfs(incoming, size):
        pytest.skip("needs root and a tmpfs mount")
    try:
        env = harness.fetcher_env(ctx.base_url, ctx.active_feed_ids, spool_dir)
        with PartialWatch(incoming) as watch:
            first = harness.fetcher(["once"], env, tmp_path)
            code = first.wait(120)
            overruns = cursor_overruns(ctx, spool_dir)
            temps = [p for p in incoming.rglob(".*") if p.is_file()]
            written = set(harness.bundles(incoming))
            # Space freed (a bigger filesystem): the next pass gets everything.
            subprocess.run(["mount", "-o", "remount,size=64m", str(incoming)], check=True)
            second = harness.fetcher(["once"], env, tmp_path)
            assert second.wait(120) == 0, second.text()[-3000:]
        got = set(harness.bundles(incoming))
        message = first.stdout + first.stderr
        clear = "No space left on device" in message
        record(
            Row(
                f"Spool filesystem full while the fetcher writes ({size.upper()}B tmpfs)",
                1,
                1,
                len(got),
                len(baseline - got),
                len(got - baseline),
                len(watch.partial) + len(overruns) + len(temps) + (not clear) + (code == 0),
                note=f"{len(written)} files fitted",
            )
        )
        assert code == 1, message[-3000:]
        assert clear, message[-3000:]
        assert "Traceback" not in first.stderr, first.stderr[-3000:]
        assert watch.partial == [] and overruns == [] and temps == []
        assert got == baseline
    finally:
        subprocess.run(["umount", "-l", str(incoming)], check=False)


def _tree(root: Path, skip: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if skip not in p.parents and p != skip
    }


HOSTILE: list[tuple[str, Callable[[CTXStandIn, str], None]]] = [
    (
        "object-id-with-dotdot",
        lambda ctx, feed: ctx.add_raw(feed, {"type": "indicator", "id": "indicator--../../../../escape"}),
    ),
    (
        "listing-report-id-with-dotdot",
        lambda ctx, feed: ctx.add_raw(
            feed,
            {"type": "report", "id": "report--../../../escape", "modified": "2025-01-01T00:00:00.000Z"},
        ),
    ),
    (
        "object-without-id",
        lambda ctx, feed: ctx.add_raw(feed, {"type": "indicator"}),
    ),
    (
        "absolute-path-id",
        lambda ctx, feed: ctx.add_raw(feed, {"type": "indicator", "id": "/etc/passwd"}),
    ),
    (
        "non-uuid-feed-in-subscriptions",
        lambda ctx, feed: ctx.feeds.__setitem__("../../evil", Feed("../../evil", "evil feed")),
    ),
    (
        "huge-listing-cut-short",
        lambda ctx, feed: ctx.inject(
            "truncated", path_contains=f"{feed}/objects/", announced=800 * 2**20, times=10**6
        ),
    ),
]  # fmt: skip


BAD_RECORDS = {
    "object-id-with-dotdot",
    "listing-report-id-with-dotdot",
    "object-without-id",
    "absolute-path-id",
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in HOSTILE])
def test_hostile_answers_are_refused_and_nothing_escapes(
    ctx: CTXStandIn,
    baseline: set[str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    make: Callable[[CTXStandIn, str], None],
) -> None:
    hostile_feed, other_feed = ctx.active_feed_ids
    make(ctx, hostile_feed)
    spool_dir = tmp_path / "spool"
    env = harness.fetcher_env(ctx.base_url, [hostile_feed, other_feed], spool_dir)
    before = _tree(tmp_path, spool_dir)
    proc = harness.fetcher(["once"], env, tmp_path)
    code = proc.wait(120)
    escaped = sorted(_tree(tmp_path, spool_dir) - before)
    stray = [
        str(p.relative_to(spool_dir))
        for p in spool_dir.rglob("*")
        if p.is_file()
        and p.parts[len(spool_dir.parts)] not in (".fetcher",)
        and not _valid_spool_file(spool_dir, p)
    ]
    got = set(harness.bundles(spool_dir / "incoming"))
    other_expected = {rel for rel in baseline if rel.startswith(other_feed)}
    other_got = {rel for rel in got if rel.startswith(other_feed)}
    case = request.node.callspec.id
    # A bad record is left out with an error and the feed goes on (one record must not stop a
    # feed forever); an unusable subscription is ignored. A broken answer fails the feed.
    left_out = case in BAD_RECORDS
    benign = left_out or case == "non-uuid-feed-in-subscriptions"
    record(
        Row(
            f"Hostile CTX answer: {request.node.callspec.id}",
            1,
            1,
            len(got),
            len(other_expected - other_got),
            0,
            len(escaped) + len(stray) + (code != (0 if benign else 1)),
            note="refused" if code else "ignored",
        )
    )
    assert escaped == [] and stray == []
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert other_got == other_expected
    if left_out:
        assert code == 0, proc.text()[-3000:]
        assert "record left out" in proc.stderr
    elif benign:
        assert code == 0, proc.text()[-3000:]
        assert "unusable feed id" in proc.stderr
    else:
        assert code == 1, proc.text()[-3000:]
        assert f"feed {hostile_feed} failed:" in proc.stdout + proc.stderr


def _valid_spool_file(spool_dir: Path, path: Path) -> bool:
    rel = (
        path.relative_to(spool_dir / "incoming")
        if (spool_dir / "incoming") in path.parents
        else None
    )
    if rel is None:
        return False
    try:
        parse_relative_path(rel.as_posix())
    except UnsafeNameError:
        return False
    return harness.sha_ok(path)


def test_configured_non_uuid_feed_id_is_refused_before_anything_is_written(
    ctx: CTXStandIn, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    env = harness.fetcher_env(ctx.base_url, ["../../../etc", *ctx.active_feed_ids], spool_dir)
    proc = harness.fetcher(["once"], env, tmp_path)
    code = proc.wait(60)
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    record(Row("Hostile config: non-UUID feed id", 1, 1, 0, 0, 0, len(created) + (code == 0)))
    assert code != 0
    assert "CYBERTHREATEXCHANGE_FEED_IDS" in proc.stderr + proc.stdout
    assert created == []
    assert ctx.requests == []
