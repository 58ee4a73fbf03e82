"""Copy in progress, end to end: a spool of several hundred signed files copied into the
``incoming/`` of a running ``ctx-uploader watch`` (a real process with the real pycti importer,
against the OpenCTI stand-in) with ``cp -r``, ``rsync -a`` and ``tar -xf``, plus one file written
slowly in chunks under its final name.

Every file must be imported exactly once (one work per file, holding exactly the file's final
objects), none may fail, and none may be imported before its bytes were complete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.layout import Spool, walk_bundles
from shared.signing import SigningKey
from tests.airgap.conftest import KEY, add_signed
from tests.standins.opencti import OpenCTIStandIn
from tests.uploader.conftest import (
    FEED_A,
    FEED_B,
    FEED_C,
    UPLOADER,
    SpoolFiles,
    Uploader,
    wait_until,
)

pytest_plugins = ["tests.standins.fixtures"]

pytestmark = pytest.mark.skipif(not UPLOADER.exists(), reason="ctx-uploader is not installed")

FILES_PER_FEED = 100
SETTLE_SECONDS = 3.0
CHUNK_PAUSE = 0.2


def source_spool(root: Path, key: SigningKey) -> dict[str, bytes]:
    """Several hundred signed files in ``root/incoming``; returns their final bytes by path."""
    spool = Spool(root)
    spool.ensure()
    files = SpoolFiles(spool)
    written = {}
    for feed in (FEED_A, FEED_B, FEED_C):
        for i in range(FILES_PER_FEED):
            # Mostly small bundles, every tenth a larger one (a longer copy per file).
            data = files.bundle_bytes(f"{root}-{feed}-{i}", n=60 if i % 10 == 0 else 3)
            path = add_signed(files, key, feed, minutes=i, data=data)
            written[path.relative_to(spool.incoming).as_posix()] = data
    return written


def slow_file(root: Path, key: SigningKey) -> tuple[str, bytes]:
    """A large signed file's relative path and bytes, not written anywhere yet."""
    data = SpoolFiles(Spool(root)).bundle_bytes(f"slow-{uuid.uuid4()}", n=400)
    files = SpoolFiles(Spool(root / "staging"))
    path = add_signed(files, key, FEED_A, minutes=10_000, data=data)
    rel = path.relative_to(files.spool.incoming).as_posix()
    path.unlink()
    return rel, data


@pytest.fixture
def watched(
    tmp_path: Path, opencti_standin: OpenCTIStandIn, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Spool, Uploader]]:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENCTI_", "CONNECTOR_", "MQ_", "UPLOADER_", "SPOOL_"))
    }
    env = {
        **base,
        "SPOOL_DIR": str(spool.root),
        "SPOOL_SIGNING_KEY": KEY,
        "OPENCTI_URL": opencti_standin.url,
        "OPENCTI_TOKEN": opencti_standin.token,
        "CONNECTOR_ID": str(uuid.uuid4()),
        "CONNECTOR_LOG_LEVEL": "info",
        "UPLOADER_INSTANCE_ID": "airgap",
        "UPLOADER_CONCURRENCY": "3",
        "UPLOADER_SETTLE_SECONDS": str(SETTLE_SECONDS),
        "UPLOADER_RESCAN_INTERVAL": "5",
        "UPLOADER_RETRY_INITIAL": "0.2",
        "UPLOADER_RETRY_MAX": "1",
    }
    uploader = Uploader(["watch"], env, tmp_path)
    try:
        assert uploader.wait_for_line("instance 'airgap'", timeout=60), uploader.stderr
        yield spool, uploader
    finally:
        uploader.kill()
        for stream in (uploader.proc.stdout, uploader.proc.stderr):
            if stream is not None:
                stream.close()


def copy_command(method: str, source: Path, spool: Spool, tmp_path: Path) -> list[str]:
    if method == "cp":
        return ["cp", "-r", f"{source / 'incoming'}/.", f"{spool.incoming}/"]
    if method == "rsync":
        # rsync writes each file under a hidden temp name (.name.XXXXXX), then renames it.
        return ["rsync", "-a", f"{source / 'incoming'}/", f"{spool.incoming}/"]
    archive = tmp_path / "spool.tar"
    subprocess.run(["tar", "-C", str(source), "-cf", str(archive), "incoming"], check=True)
    return ["tar", "-C", str(spool.root), "-xf", str(archive)]


def write_slowly(path: Path, data: bytes, uploader: Uploader, pieces: int = 8) -> None:
    """Write ``data`` under its final name in pieces with pauses shorter than the settle time.

    After the first piece, wait until the uploader has looked at the partial file (its log says
    so), so the test proves the partial file was seen and left alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // pieces)
    with path.open("wb") as fh:
        fh.write(data[:size])
        fh.flush()
        assert uploader.wait_for_line(f"digest of {path.name} does not match", timeout=60), (
            uploader.stderr
        )
        for start in range(size, len(data), size):
            time.sleep(CHUNK_PAUSE)
            fh.write(data[start : start + size])
            fh.flush()


def pushed_objects(standin: OpenCTIStandIn, work_id: str) -> list[dict[str, Any]]:
    return [obj for push in standin.pushes_for(work_id) for obj in push.bundle["objects"]]


def canonical(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(obj, sort_keys=True) for obj in objects)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("cp", id="cp-r"),
        pytest.param(
            "rsync",
            id="rsync-a",
            marks=pytest.mark.skipif(
                shutil.which("rsync") is None, reason="rsync is not installed"
            ),
        ),
        pytest.param("tar", id="tar-xf"),
    ],
)
def test_copy_into_watched_incoming_imports_each_file_once_and_complete(
    method: str,
    tmp_path: Path,
    watched: tuple[Spool, Uploader],
    opencti_standin: OpenCTIStandIn,
    signing_key: SigningKey,
) -> None:
    spool, uploader = watched
    source = tmp_path / "source"
    expected = source_spool(source, signing_key)
    slow_rel, slow_data = slow_file(tmp_path, signing_key)
    expected[slow_rel] = slow_data
    command = copy_command(method, source, spool, tmp_path)
    # The slow writer's folders exist before the copy starts: `cp -r` fails with EEXIST when
    # another writer creates a folder between its own stat and mkdir (seen once in CI).
    (spool.incoming / slow_rel).parent.mkdir(parents=True, exist_ok=True)

    copy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    write_slowly(spool.incoming / slow_rel, slow_data, uploader)
    _out, err = copy.communicate(timeout=120)
    assert copy.returncode == 0, err

    def all_done() -> bool:
        return sum(1 for _ in walk_bundles(spool.done)) >= len(expected)

    assert wait_until(all_done, timeout=150, step=0.2), uploader.stderr[-3000:]

    done = {e.relative.as_posix(): e.path for e in walk_bundles(spool.done)}
    assert sorted(done) == sorted(expected)
    assert [e.relative for e in walk_bundles(spool.failed)] == []
    assert [e.relative for e in walk_bundles(spool.incoming)] == []
    work_ids = []
    for rel, path in done.items():
        assert path.read_bytes() == expected[rel], rel
        receipt = json.loads(path.with_name(path.name + ".receipt").read_text())
        work_ids.append(receipt["work_id"])
        # The work holds exactly the final file's objects: nothing from a partial read.
        final = json.loads(expected[rel])["objects"]
        assert canonical(pushed_objects(opencti_standin, receipt["work_id"])) == canonical(final), (
            rel
        )
    # Exactly once: one work per file, and no push outside those works.
    assert len(set(work_ids)) == len(expected)
    assert len(opencti_standin.works) == len(expected)
    assert {push.work_id for push in opencti_standin.pushes} == set(work_ids)
    assert len(opencti_standin.objects()) == sum(
        len(json.loads(data)["objects"]) for data in expected.values()
    )
    assert f"digest of {Path(slow_rel).name} does not match" in uploader.stderr
    assert KEY not in uploader.stderr
