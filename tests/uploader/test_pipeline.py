"""The spool pipeline with a fake importer: outcomes, order, retries, claims, refusals."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path, PurePosixPath

import pytest

from shared.durable import publish_bytes, sha256_bytes
from shared.errors import SpoolError
from shared.layout import Spool, walk_bundles
from tests.uploader.conftest import (
    FEED_A,
    FEED_B,
    FEED_C,
    FakeImporter,
    RecordWaiter,
    SpoolFiles,
    clean,
    fast_settings,
    permanent,
    run_once,
    transient_then_ok,
    wait_until,
)
from uploader.errors import InstanceBusyError, PermanentImportError
from uploader.importing.check import SpoolFile
from uploader.pipeline import Pipeline, backoff_delay
from uploader.spool_ops import outcome as outcome_module
from uploader.spool_ops.claim import InstanceLock
from uploader.spool_ops.outcome import sidecar_bytes


def bundles_in(root: Path) -> list[str]:
    return [e.relative.as_posix() for e in walk_bundles(root)]


def read_json(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def receipt_of(path: Path) -> dict[str, object]:
    return read_json(path.with_name(path.name + ".receipt"))


def reason_of(path: Path) -> dict[str, object]:
    return read_json(path.with_name(path.name + ".reason"))


def test_every_file_imported_once_and_moved_to_done_with_receipt(
    spool: Spool, files: SpoolFiles
) -> None:
    paths = [files.add(feed) for feed in (FEED_A, FEED_B, FEED_C) for _ in range(3)]
    importer = FakeImporter()

    summary = run_once(spool, importer)

    assert clean(summary)
    assert summary.done == 9
    assert len(importer.calls) == 9
    assert sorted(b for _, b in importer.calls) == sorted(
        spool.path_in("done", files.rel(p)).read_bytes() for p in paths
    )
    assert bundles_in(spool.incoming) == []
    assert bundles_in(spool.processing) == []
    for path in paths:
        done = spool.path_in("done", files.rel(path))
        receipt = receipt_of(done)
        assert receipt["sha256"] == sha256_bytes(done.read_bytes())
        assert receipt["connector_id"] == "connector-1"
        assert receipt["instance"] == "test"
        assert str(receipt["work_id"]).startswith("work-")
        assert receipt["pushes"] == 1
        assert str(receipt["imported_at"]).endswith("Z")
    names = [name for name, _ in importer.calls]
    assert all(name.startswith("CTX ") and "report--" in name for name in names)
    assert any(FEED_B in name for name in names)


def test_files_of_a_feed_go_in_name_order_one_at_a_time(spool: Spool, files: SpoolFiles) -> None:
    # Published newest first, so discovery order is not name order by accident.
    paths = [files.add(FEED_A, minutes=m) for m in (50, 40, 30, 20, 10)]
    importer = FakeImporter()

    summary = run_once(spool, importer, concurrency=4)

    assert summary.done == 5
    expected = sorted(paths, key=lambda p: p.name)
    assert importer.accepted == [spool.path_in("done", files.rel(p)).read_bytes() for p in expected]
    assert importer.max_active == 1


def test_different_feeds_are_imported_in_parallel(spool: Spool, files: SpoolFiles) -> None:
    files.add(FEED_A)
    files.add(FEED_B)
    importer = FakeImporter()

    def wait_for_the_other_feed(name: str, data: bytes) -> None:
        # Sequential imports would wait here in vain (and the test would see max_active == 1).
        importer.wait_for(lambda i: i.max_active >= 2, timeout=5)

    importer.behaviour = wait_for_the_other_feed

    summary = run_once(spool, importer, concurrency=2)

    assert summary.done == 2
    assert importer.max_active == 2


def test_transient_failures_retry_with_logged_backoff_then_succeed(
    spool: Spool, files: SpoolFiles, caplog: pytest.LogCaptureFixture
) -> None:
    paths = [files.add(FEED_A), files.add(FEED_B)]
    importer = FakeImporter(behaviour=transient_then_ok(2))
    caplog.set_level(logging.INFO, logger="uploader")

    summary = run_once(spool, importer)

    assert clean(summary) and summary.done == 2 and summary.failed == 0
    assert bundles_in(spool.failed) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert all("retrying in" in r.getMessage() for r in warnings)
    for path in paths:
        assert receipt_of(spool.path_in("done", files.rel(path)))["attempts"] == 3


def test_a_file_waiting_for_retry_holds_back_its_feed_only(spool: Spool, files: SpoolFiles) -> None:
    older = files.add(FEED_A, minutes=1)
    newer = files.add(FEED_A, minutes=2)
    other = files.add(FEED_B, minutes=3)
    older_bytes, newer_bytes, other_bytes = (p.read_bytes() for p in (older, newer, other))
    seen: dict[bytes, int] = {}

    def behaviour(name: str, data: bytes) -> None:
        seen[data] = seen.get(data, 0) + 1
        if data == older_bytes and seen[data] <= 3:
            from uploader.errors import TransientImportError

            raise TransientImportError("503 (fake)")

    importer = FakeImporter(behaviour=behaviour)
    summary = run_once(spool, importer, retry_initial=0.1, retry_max=0.1)

    assert summary.done == 3
    assert importer.accepted.index(older_bytes) < importer.accepted.index(newer_bytes)
    # The other feed did not wait for feed A's retries.
    assert importer.accepted.index(other_bytes) < importer.accepted.index(older_bytes)


def test_outage_outlasting_max_wait_leaves_files_pending_not_failed(
    spool: Spool, files: SpoolFiles
) -> None:
    paths = [files.add(FEED_A), files.add(FEED_B)]
    importer = FakeImporter(behaviour=transient_then_ok(10_000))

    summary = run_once(spool, importer, max_wait=0.5)

    assert not clean(summary)
    assert summary.failed == 0
    assert sorted(summary.pending) == sorted(files.rel(p) for p in paths)
    assert sorted(bundles_in(spool.incoming)) == sorted(files.rel(p) for p in paths)
    assert bundles_in(spool.failed) == []
    assert bundles_in(spool.processing) == []
    assert len(importer.calls) >= 4


def test_no_secret_reaches_a_reason_file(spool: Spool, files: SpoolFiles) -> None:
    path = files.add(FEED_A)

    def leaky(name: str, data: bytes) -> None:
        raise PermanentImportError("refused for token s3cret-token-value", work_id="w")

    run_once(spool, FakeImporter(behaviour=leaky), opencti_token="s3cret-token-value")

    failed = spool.path_in("failed", files.rel(path))
    text = failed.with_name(failed.name + ".reason").read_text()
    assert "s3cret-token-value" not in text
    assert "refused for token ***" in text


def test_a_crash_between_link_and_unlink_of_done_is_not_imported_again(
    spool: Spool, files: SpoolFiles
) -> None:
    path = files.add(FEED_A)
    rel = files.rel(path)
    done = spool.path_in("done", rel)
    publish_bytes(done, path.read_bytes())
    done.with_name(done.name + ".receipt").write_text('{"work_id": "w-before-crash"}')
    claimed = spool.processing / "dead" / rel
    claimed.parent.mkdir(parents=True)
    path.rename(claimed)
    (spool.processing / "dead" / ".lock").touch()
    importer = FakeImporter()

    summary = run_once(spool, importer)

    assert clean(summary) and importer.calls == []
    assert bundles_in(spool.processing) == [] and bundles_in(spool.incoming) == []
    assert receipt_of(done)["work_id"] == "w-before-crash"


def test_a_pending_file_is_never_dropped_because_an_outcome_copy_exists(
    spool: Spool, files: SpoolFiles
) -> None:
    path = files.add(FEED_A)
    publish_bytes(spool.path_in("failed", files.rel(path)), path.read_bytes())

    summary = run_once(spool, FakeImporter(behaviour=transient_then_ok(10**6)), max_wait=0.3)

    assert summary.pending == [files.rel(path)]
    assert path.is_file()


def test_max_wait_never_cuts_a_long_healthy_run_short(spool: Spool, files: SpoolFiles) -> None:
    for _ in range(6):
        files.add(FEED_A)
    importer = FakeImporter(behaviour=lambda name, data: time.sleep(0.15))

    summary = run_once(spool, importer, max_wait=0.4)

    assert clean(summary) and summary.done == 6


def test_permanent_rejection_goes_to_failed_with_reason(spool: Spool, files: SpoolFiles) -> None:
    path = files.add(FEED_A)
    importer = FakeImporter(behaviour=permanent())

    summary = run_once(spool, importer)

    assert summary.failed == 1 and not clean(summary)
    failed = spool.path_in("failed", files.rel(path))
    reason = reason_of(failed)
    assert reason["kind"] == "rejected"
    assert reason["work_id"] == "work-x"
    assert reason["attempts"] == 1
    assert reason["instance"] == "test"
    assert "bundle rejected" in str(reason["message"])


BAD_CONTENT = [
    pytest.param(b"{not json", "not-json", id="not-json"),
    pytest.param(
        b'{"type": "bundle", "objects": [{"type": "x", "id": "\xff"}]}', "not-json", id="non-utf8"
    ),
    pytest.param(b"[1, 2]", "not-a-bundle", id="list"),
    pytest.param(b'{"type": "report", "objects": []}', "not-a-bundle", id="wrong-type"),
    pytest.param(b'{"type": "bundle", "objects": []}', "empty", id="empty-objects"),
    pytest.param(b'{"type": "bundle", "id": "bundle--1"}', "empty", id="no-objects"),
    pytest.param(
        b'{"type": "bundle", "objects": {"a": 1}}', "invalid-bundle", id="objects-not-list"
    ),
    pytest.param(b'{"type": "bundle", "objects": [1]}', "invalid-bundle", id="object-not-dict"),
    pytest.param(
        b'{"type": "bundle", "objects": [{"type": "report"}]}', "invalid-bundle", id="no-id"
    ),
]


@pytest.mark.parametrize(("data", "kind"), BAD_CONTENT)
def test_bad_content_is_refused_with_its_kind(
    spool: Spool, files: SpoolFiles, data: bytes, kind: str
) -> None:
    path = files.add(FEED_A, data=data)
    importer = FakeImporter()

    summary = run_once(spool, importer)

    assert summary.failed == 1
    assert importer.calls == []
    failed = spool.path_in("failed", files.rel(path))
    assert failed.read_bytes() == data
    reason = reason_of(failed)
    assert reason["kind"] == kind
    assert reason["work_id"] is None
    assert bundles_in(spool.incoming) == []


def test_strict_stix_refuses_invalid_stix_and_accepts_valid(
    spool: Spool, files: SpoolFiles
) -> None:
    good = files.add(FEED_A)
    bad_bundle = {
        "type": "bundle",
        "id": "bundle--6b1e3c1a-2f4d-4e8b-9a7c-0d1e2f3a4b5c",
        "objects": [
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": "indicator--6b1e3c1a-2f4d-4e8b-9a7c-0d1e2f3a4b5c",
                "created": "2024-05-01T10:00:00.000Z",
                "modified": "2024-05-01T10:00:00.000Z",
            }
        ],
    }
    bad = files.add(FEED_B, data=json.dumps(bad_bundle).encode())
    importer = FakeImporter()

    summary = run_once(spool, importer, strict_stix=True)

    assert summary.done == 1 and summary.failed == 1
    assert spool.path_in("done", files.rel(good)).is_file()
    assert reason_of(spool.path_in("failed", files.rel(bad)))["kind"] == "invalid-stix"


def test_symlink_is_refused_and_moved_without_following(
    spool: Spool, files: SpoolFiles, tmp_path: Path
) -> None:
    real = files.add(FEED_A, state="done")
    rel = files.rel(real, "done")
    link = spool.path_in("incoming", rel)
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    importer = FakeImporter()

    summary = run_once(spool, importer)

    assert summary.failed == 1
    assert importer.calls == []
    moved = spool.path_in("failed", rel)
    assert moved.is_symlink()
    assert real.is_file() and not real.is_symlink()
    assert reason_of(moved)["kind"] == "symlink"


@pytest.mark.parametrize(
    "rel",
    [
        pytest.param(f"{FEED_A}/2024/05/01/garbage.json", id="bad-name"),
        pytest.param(
            f"{FEED_A}/2023/01/01/20240501T100000000000Z_objects_{'0' * 64}.json",
            id="wrong-date-folder",
        ),
        pytest.param(
            f"not-a-feed/2024/05/01/20240501T100000000000Z_objects_{'0' * 64}.json", id="bad-feed"
        ),
    ],
)
def test_invalid_name_is_refused(spool: Spool, rel: str) -> None:
    path = spool.path_in("incoming", rel)
    publish_bytes(path, b'{"type": "bundle"}')
    importer = FakeImporter()

    summary = run_once(spool, importer)

    assert summary.failed == 1
    assert importer.calls == []
    assert reason_of(spool.path_in("failed", rel))["kind"] == "invalid-name"


def test_hidden_temp_and_non_json_files_are_ignored(spool: Spool, files: SpoolFiles) -> None:
    good = files.add(FEED_A)
    folder = good.parent
    ignored = [
        folder / f".{good.name}.abc123.tmp",
        folder / f".{good.name}",
        folder / f"{good.name}.part",
        folder / "notes.txt",
    ]
    for path in ignored:
        path.write_bytes(b"partial")
    importer = FakeImporter()

    summary = run_once(spool, importer)

    assert clean(summary) and summary.done == 1
    assert len(importer.calls) == 1
    assert all(path.read_bytes() == b"partial" for path in ignored)
    assert bundles_in(spool.failed) == []


def test_deeply_nested_json_fails_instead_of_retrying_forever(
    spool: Spool, files: SpoolFiles
) -> None:
    # json.loads raised RecursionError, which the pipeline took for an unexpected error
    # and retried forever; the file never left incoming/.
    depth = 100_000
    data = b'{"type":"bundle","objects":[' + b"[" * depth + b"]" * depth + b"]}"
    path = files.add(FEED_A, data=data)
    importer = FakeImporter()
    summary = run_once(spool, importer, max_wait=5)
    assert summary.failed == 1 and summary.pending == []
    assert reason_of(spool.path_in("failed", files.rel(path)))["kind"] == "not-json"
    assert importer.calls == []


def test_name_too_long_for_a_reason_file_is_left_not_retried_forever(spool: Spool) -> None:
    # A 250-character name cannot get its ``.reason`` sidecar (NAME_MAX is 255); the
    # refusal raised SpoolError and the file was retried forever.
    path = spool.incoming / FEED_A / "2024" / "05" / "01" / ("a" * 250 + ".json")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{}")
    importer = FakeImporter()
    summary = run_once(spool, importer, max_wait=5)
    assert summary.failed == 0 and summary.pending == []
    assert len(summary.left) == 1
    assert path.read_bytes() == b"{}"
    assert bundles_in(spool.processing) == [] and bundles_in(spool.failed) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_refused(spool: Spool, files: SpoolFiles) -> None:
    path = files.add(FEED_A)
    path.chmod(0)
    summary = run_once(spool, FakeImporter())
    assert summary.failed == 1
    assert reason_of(spool.path_in("failed", files.rel(path)))["kind"] == "unreadable"


def test_unreadable_file_is_refused_when_open_is_denied(
    spool: Spool, files: SpoolFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, who may read anything: make the open itself fail as it would for a user.
    path = files.add(FEED_A)
    real_open = os.open

    def deny(target: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(target) == str(path):
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(target, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("uploader.importing.check.os.open", deny)
    summary = run_once(spool, FakeImporter())
    assert summary.failed == 1
    assert reason_of(spool.path_in("failed", files.rel(path)))["kind"] == "unreadable"


def test_digest_mismatch_that_stays_is_failed_as_corrupt_after_settling(
    spool: Spool, files: SpoolFiles
) -> None:
    data = files.bundle_bytes("corrupt")
    path = files.add(FEED_A, data=data, digest="a" * 64)
    importer = FakeImporter()
    started = time.monotonic()

    summary = run_once(spool, importer, settle_seconds=0.4)

    assert time.monotonic() - started >= 0.4
    assert summary.failed == 1 and importer.calls == []
    reason = reason_of(spool.path_in("failed", files.rel(path)))
    assert reason["kind"] == "corrupt"
    assert reason["sha256_expected"] == "a" * 64
    assert reason["sha256_actual"] == sha256_bytes(data)


def test_an_unchanged_mismatched_file_is_not_reread_while_it_settles(
    spool: Spool, files: SpoolFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uploader.importing.admit

    files.add(FEED_A, data=files.bundle_bytes("x"), digest="d" * 64)
    reads: list[object] = []
    real_read = uploader.importing.admit.read_spool_file

    def counting_read(path: Path, rel: PurePosixPath) -> SpoolFile:
        reads.append(rel)
        return real_read(path, rel)

    monkeypatch.setattr(uploader.importing.admit, "read_spool_file", counting_read)

    summary = run_once(spool, FakeImporter(), settle_seconds=1.5)

    assert summary.failed == 1
    # Once when first seen, once more to confirm when the settle time is up.
    assert len(reads) == 2


def test_file_still_being_copied_is_imported_once_complete(spool: Spool, files: SpoolFiles) -> None:
    data = files.bundle_bytes("copied", n=50)
    name_holder = files.add(FEED_B, data=data)
    rel = files.rel(name_holder)
    name_holder.unlink()
    target = spool.path_in("incoming", rel)
    later = files.add(FEED_B, minutes=10_000)
    waiter = RecordWaiter("does not match its name yet")
    logging.getLogger("uploader.importing.admit").addHandler(waiter)
    logging.getLogger("uploader.importing.admit").setLevel(logging.INFO)
    importer = FakeImporter()
    result: list[object] = []

    # Like cp: the final name appears first, the bytes follow.
    target.write_bytes(data[:100])

    def copy_in_chunks() -> None:
        with target.open("ab") as fh:
            assert waiter.seen.wait(10)
            for start in range(100, len(data), 1000):
                fh.write(data[start : start + 1000])
                fh.flush()
                time.sleep(0.02)

    writer = threading.Thread(target=copy_in_chunks)
    writer.start()
    try:
        result.append(run_once(spool, importer, settle_seconds=1.0))
    finally:
        writer.join(10)
        logging.getLogger("uploader.importing.admit").removeHandler(waiter)
        logging.getLogger("uploader.importing.admit").setLevel(logging.NOTSET)
    summary = result[0]
    assert waiter.seen.is_set()
    assert summary.failed == 0 and summary.done == 2  # type: ignore[attr-defined]
    assert spool.path_in("done", rel).read_bytes() == data
    # The later file of the same feed waited for the copy to finish.
    assert importer.accepted == [data, spool.path_in("done", files.rel(later)).read_bytes()]


def test_two_pipelines_on_one_spool_import_each_file_once(spool: Spool, files: SpoolFiles) -> None:
    paths = [files.add(feed) for feed in (FEED_A, FEED_B, FEED_C) for _ in range(6)]
    rel_of = {p.read_bytes(): files.rel(p) for p in paths}
    importer = FakeImporter(behaviour=lambda name, data: time.sleep(0.005))
    summaries: dict[str, object] = {}

    def run(instance: str) -> None:
        summaries[instance] = run_once(spool, importer, instance=instance, concurrency=3)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(summaries) == 2
    counts = Counter(importer.accepted)
    assert len(counts) == len(paths)
    assert set(counts.values()) == {1}
    assert len(bundles_in(spool.done)) == len(paths)
    assert bundles_in(spool.incoming) == [] and bundles_in(spool.processing) == []
    # Name order within each feed held across the two uploaders too.
    landed = [rel_of[data] for data in importer.accepted]
    for feed in (FEED_A, FEED_B, FEED_C):
        of_feed = [rel for rel in landed if rel.startswith(feed)]
        assert of_feed == sorted(of_feed)


def test_files_left_claimed_by_a_dead_uploader_or_by_us_are_reclaimed(
    spool: Spool, files: SpoolFiles
) -> None:
    dead = files.add(FEED_A, minutes=1)
    own = files.add(FEED_B, minutes=2)
    duplicate = files.add(FEED_C, minutes=3)
    for path, instance in ((dead, "dead"), (own, "test"), (duplicate, "dead")):
        claimed = spool.processing / instance / files.rel(path)
        claimed.parent.mkdir(parents=True, exist_ok=True)
        if path is duplicate:
            claimed.write_bytes(path.read_bytes())  # also still in incoming: same bytes
        else:
            path.rename(claimed)
    (spool.processing / "dead" / ".lock").touch()
    importer = FakeImporter()

    summary = run_once(spool, importer)

    assert clean(summary) and summary.done == 3
    assert summary.reclaimed >= 2
    assert len(importer.accepted) == 3
    assert bundles_in(spool.processing) == []
    assert len(bundles_in(spool.done)) == 3


def test_an_older_file_another_uploader_is_importing_holds_back_its_feed(
    spool: Spool, files: SpoolFiles
) -> None:
    older = files.add(FEED_A, minutes=1)
    newer = files.add(FEED_A, minutes=2)
    other_feed = files.add(FEED_B, minutes=3)
    newer_bytes, other_bytes = newer.read_bytes(), other_feed.read_bytes()
    waiter = RecordWaiter("waiting for uploader other")
    pipeline_logger = logging.getLogger("uploader.importing.admit")
    pipeline_logger.addHandler(waiter)
    pipeline_logger.setLevel(logging.DEBUG)
    importer = FakeImporter()
    results: list[object] = []
    other = InstanceLock(spool, "other")
    other.acquire()
    try:
        held = spool.processing / "other" / files.rel(older)
        held.parent.mkdir(parents=True)
        older.rename(held)
        thread = threading.Thread(target=lambda: results.append(run_once(spool, importer)))
        thread.start()
        assert waiter.seen.wait(10)
        assert importer.wait_for(lambda i: len(i.accepted) == 1, timeout=5)
        # Only the other feed went ahead.
        assert importer.accepted == [other_bytes]
        # The other uploader finishes the older file.
        publish_bytes(spool.path_in("done", files.rel(older)), held.read_bytes())
        held.unlink()
        thread.join(10)
    finally:
        other.release()
        pipeline_logger.removeHandler(waiter)
        pipeline_logger.setLevel(logging.NOTSET)
    assert results
    assert importer.accepted == [other_bytes, newer_bytes]


def test_files_claimed_by_a_live_uploader_are_left_alone(spool: Spool, files: SpoolFiles) -> None:
    path = files.add(FEED_A)
    with InstanceLock(spool, "alive"):
        claimed = spool.processing / "alive" / files.rel(path)
        claimed.parent.mkdir(parents=True)
        path.rename(claimed)
        summary = run_once(spool, FakeImporter())
        assert claimed.is_file()
    assert summary.done == 0


def test_a_second_process_with_the_same_instance_refuses_to_start(spool: Spool) -> None:
    with InstanceLock(spool, "same"), pytest.raises(InstanceBusyError) as info:
        InstanceLock(spool, "same").acquire(wait=0.2)
    assert info.value.instance == "same"
    assert "UPLOADER_INSTANCE_ID" in str(info.value)


def test_a_claim_folder_being_set_up_is_not_taken_but_an_old_orphan_is(
    spool: Spool, files: SpoolFiles
) -> None:
    starting = spool.processing / "starting"
    starting.mkdir(parents=True)
    orphan_file = files.add(FEED_A)
    orphan = spool.processing / "orphan" / files.rel(orphan_file)
    orphan.parent.mkdir(parents=True)
    orphan_file.rename(orphan)
    old = time.time() - 3600
    os.utime(spool.processing / "orphan", (old, old))

    summary = run_once(spool, FakeImporter())

    assert summary.done == 1
    assert not (starting / ".lock").exists()
    InstanceLock(spool, "starting").acquire(wait=0)


def test_done_destination_with_same_bytes_drops_the_copy_different_bytes_conflict(
    spool: Spool, files: SpoolFiles
) -> None:
    same = files.add(FEED_A, minutes=1)
    other = files.add(FEED_B, minutes=2)
    done_same = spool.path_in("done", files.rel(same))
    publish_bytes(done_same, same.read_bytes())
    done_other = spool.path_in("done", files.rel(other))
    publish_bytes(done_other, b"different bytes under the same name")
    importer = FakeImporter()

    summary = run_once(spool, importer)

    assert summary.done == 1 and summary.failed == 1
    assert done_other.read_bytes() == b"different bytes under the same name"
    assert reason_of(spool.path_in("failed", files.rel(other)))["kind"] == "conflict"
    assert receipt_of(done_same)["work_id"]
    assert bundles_in(spool.incoming) == [] and bundles_in(spool.processing) == []


def test_a_stale_reason_without_its_file_is_removed_when_the_file_is_done(
    spool: Spool, files: SpoolFiles
) -> None:
    path = files.add(FEED_A)
    failed = spool.path_in("failed", files.rel(path))
    stale = failed.with_name(failed.name + ".reason")
    stale.parent.mkdir(parents=True)
    stale.write_text('{"kind": "rejected"}')

    assert run_once(spool, FakeImporter()).done == 1

    assert not stale.exists()


def test_a_stale_receipt_from_an_interrupted_attempt_is_replaced(
    spool: Spool, files: SpoolFiles
) -> None:
    path = files.add(FEED_A)
    done = spool.path_in("done", files.rel(path))
    stale = done.with_name(done.name + ".receipt")
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"work_id": "work-stale-0000"}))

    run_once(spool, FakeImporter())

    assert receipt_of(done)["work_id"] == "work-1"


# watchdog's inotify thread warns when it adds a watch twice (new folders in a burst); pytest's
# "error" filter would turn that into an exception that kills the thread. The CLI ignores it too.
@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
@pytest.mark.parametrize(
    "polling", [pytest.param(False, id="inotify"), pytest.param(True, id="polling")]
)
def test_watch_mode_picks_up_a_new_file_within_a_second(
    spool: Spool, files: SpoolFiles, polling: bool
) -> None:
    first = files.add(FEED_A, minutes=1)
    importer = FakeImporter()
    stop = threading.Event()
    with InstanceLock(spool, "watcher") as lock:
        settings = fast_settings(rescan_interval=3600, polling=polling, poll_interval=0.1)
        pipeline = Pipeline(spool, importer, settings, lock)
        thread = threading.Thread(target=pipeline.run, args=(stop,), kwargs={"watch": True})
        thread.start()
        try:
            assert importer.wait_for(lambda i: len(i.accepted) == 1, timeout=5)
            # Published atomically as the fetcher does; the rescan is an hour away.
            second = files.add(FEED_B, minutes=2)
            published = time.monotonic()
            assert importer.wait_for(lambda i: len(i.accepted) == 2, timeout=1.0)
            assert time.monotonic() - published < 1.0
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()
    assert spool.path_in("done", files.rel(first)).is_file()
    assert spool.path_in("done", files.rel(second)).is_file()


@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
def test_a_dead_file_watcher_is_restarted(
    spool: Spool, files: SpoolFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("uploader.intake.watcher.OBSERVER_RESTART", 0.2)
    importer = FakeImporter()
    stop = threading.Event()
    with InstanceLock(spool, "restarter") as lock:
        pipeline = Pipeline(spool, importer, fast_settings(rescan_interval=3600), lock)
        thread = threading.Thread(target=pipeline.run, args=(stop,), kwargs={"watch": True})
        thread.start()
        try:
            assert wait_until(lambda: pipeline.intake._observer is not None, timeout=5)
            dead = pipeline.intake._observer
            assert dead is not None
            dead.stop()
            dead.join(5)
            assert wait_until(
                lambda: (
                    pipeline.intake._observer is not dead and pipeline.intake._observer is not None
                ),
                timeout=5,
            )
            files.add(FEED_A)
            assert importer.wait_for(lambda i: len(i.accepted) == 1, timeout=2)
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()


def test_periodic_rescan_finds_files_the_observer_missed(spool: Spool, files: SpoolFiles) -> None:
    importer = FakeImporter()
    stop = threading.Event()
    with InstanceLock(spool, "rescanner") as lock:
        # A poller that never polls stands for an observer that dropped its events.
        settings = fast_settings(rescan_interval=0.3, polling=True, poll_interval=3600)
        pipeline = Pipeline(spool, importer, settings, lock)
        thread = threading.Thread(target=pipeline.run, args=(stop,), kwargs={"watch": True})
        thread.start()
        try:
            files.add(FEED_A)
            assert importer.wait_for(lambda i: len(i.accepted) == 1, timeout=5)
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()


def test_backoff_grows_from_initial_to_max_with_jitter() -> None:
    delays = [backoff_delay(n, 2.0, 60.0, 0.5) for n in range(1, 10)]
    assert delays[0] >= 2.0
    assert delays == sorted(delays)
    assert max(delays) <= 60.0
    assert backoff_delay(3, 2.0, 60.0, 0.0) != backoff_delay(3, 2.0, 60.0, 1.0)
    assert backoff_delay(50, 2.0, 60.0, 0.0) >= 0.8 * 60.0


def test_a_feeds_next_import_starts_while_the_previous_file_is_being_recorded(
    spool: Spool, files: SpoolFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The move to done/ (two fsyncs) no longer holds the feed back. The first file's
    # move waits until the second file's import has started: without the early release this
    # would never happen and the move would give up waiting.
    first, second = (files.add(FEED_A, minutes=m) for m in (1, 2))
    importer = FakeImporter()
    real_mark_done = outcome_module.mark_done
    overlapped: list[bool] = []

    def slow_mark_done(*args: object, **kwargs: object) -> Path:
        if str(args[2]) == files.rel(first):
            overlapped.append(importer.wait_for(lambda imp: len(imp.calls) >= 2, timeout=10))
        return real_mark_done(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(outcome_module, "mark_done", slow_mark_done)

    summary = run_once(spool, importer)

    assert overlapped == [True]
    assert summary.done == 2
    # Still strictly in name order, one import at a time.
    assert importer.accepted == [
        spool.path_in("done", files.rel(p)).read_bytes() for p in (first, second)
    ]
    assert importer.max_active == 1


def test_a_failed_move_after_the_import_is_retried_not_imported_again(
    spool: Spool, files: SpoolFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = files.add(FEED_A)
    importer = FakeImporter()
    real_mark_done = outcome_module.mark_done
    failures = [SpoolError("disk full (fake)"), SpoolError("disk full (fake)")]

    def flaky_mark_done(*args: object, **kwargs: object) -> Path:
        if failures:
            raise failures.pop()
        return real_mark_done(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(outcome_module, "mark_done", flaky_mark_done)

    summary = run_once(spool, importer)

    assert summary.done == 1 and summary.failed == 0
    assert len(importer.calls) == 1  # imported once; only the move was tried again
    done = spool.path_in("done", files.rel(path))
    assert receipt_of(done)["work_id"] == "work-1"


def test_a_move_still_failing_at_stop_puts_the_file_back_for_the_next_run(
    spool: Spool, files: SpoolFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = files.add(FEED_A)
    importer = FakeImporter()
    stop = threading.Event()

    def failing_mark_done(*args: object, **kwargs: object) -> Path:
        stop.set()  # the uploader is asked to stop while the move keeps failing
        raise SpoolError("disk full (fake)")

    monkeypatch.setattr(outcome_module, "mark_done", failing_mark_done)

    with InstanceLock(spool, "test") as lock:
        summary = Pipeline(spool, importer, fast_settings(), lock).run(stop, watch=True)

    assert summary.done == 0 and summary.failed == 0
    assert summary.pending == [files.rel(path)]
    assert path.exists()  # back in incoming/, imported again by the next run (at least once)
    assert bundles_in(spool.processing) == []


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"file": "a/b.json", "work_id": None, "attempts": 2, "ok": True}, id="flat"),
        pytest.param({"message": 'quote " back \\ newline \n é ✓', "n": 1.5}, id="escapes"),
        pytest.param({"nested": {"a": [1, 2]}}, id="nested"),
        pytest.param({}, id="empty"),
    ],
)
def test_sidecars_are_the_indented_json_they_always_were(document: dict[str, object]) -> None:
    # Written without json's slow indenting encoder, byte for byte the same.
    expected = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    assert sidecar_bytes(document) == expected
