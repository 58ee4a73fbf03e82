"""Adoption of foreign files into the spool (uploader/adoption/adopt.py), with diode files the real pycti
wrote (tests/standins/diode_writer.py); the import under the source connector is in
test_diode_e2e.py."""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from click.testing import CliRunner

from shared.layout import Spool, SpoolName, walk_bundles
from tests.standins import diode_writer
from tests.standins.opencti import STANDIN_TOKEN, OpenCTIStandIn
from tests.uploader.conftest import FakeImporter, pipeline_settings
from uploader.adoption.adopt import Adopter
from uploader.adoption.ledger import AdoptLedger
from uploader.commands.cli import main
from uploader.pipeline import Pipeline
from uploader.settings import ADOPTED_FEED_ID
from uploader.spool_ops.claim import InstanceLock
from uploader.spool_ops.origin import Origin, read_origin, source_path
from uploader.spool_ops.replay import replay, select

CONNECTOR = str(uuid.uuid4())


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Any]]]:
    """Three diode files written by the real pycti (send_to_directory) against the stand-in."""
    out = tmp_path_factory.mktemp("written")
    with OpenCTIStandIn(STANDIN_TOKEN) as standin:
        lines = diode_writer.write(str(out), standin.url, STANDIN_TOKEN, CONNECTOR, "Up Feed", 3)
    yield out, lines


@pytest.fixture
def drop(tmp_path: Path, written: tuple[Path, list[Any]]) -> Path:
    folder = tmp_path / "drop"
    shutil.copytree(written[0], folder)
    return folder


def adopter(spool: Spool, *, keep: bool = False, settle: float = 0.5) -> Adopter:
    return Adopter(
        spool,
        AdoptLedger(spool.adopt_state),
        feed_id=ADOPTED_FEED_ID,
        settle_seconds=settle,
        keep=keep,
    )


def rels(root: Path) -> list[str]:
    return [e.relative.as_posix() for e in walk_bundles(root)]


def test_diode_files_go_to_their_connectors_feed_dated_by_the_epoch_in_their_name(
    spool: Spool, drop: Path, written: tuple[Path, list[Any]]
) -> None:
    names = sorted(os.listdir(drop))
    a = adopter(spool)
    results = [a.adopt(drop / name) for name in names]

    assert [r.outcome for r in results] == ["adopted"] * 3
    assert os.listdir(drop) == []
    placed = rels(spool.incoming)
    assert len(placed) == 3 and all(p.startswith(f"{CONNECTOR}/") for p in placed)
    for name, rel, line in zip(names, placed, written[1], strict=True):
        epoch = name.rsplit("-", 1)[1].removesuffix(".json")
        assert abs(SpoolName.parse(rel.split("/")[4]).modified.timestamp() - float(epoch)) < 1e-5
        bundle = json.loads((spool.incoming / rel).read_bytes())
        assert bundle["id"] == line["bundle_id"]
        origin = read_origin(spool, PurePosixPath(rel))
        assert origin is not None and origin.original_name == name
        assert origin.connector is not None and origin.connector.id == CONNECTOR
        assert origin.connector.name == "Up Feed" and origin.applicant_id
    # Names sort by the epoch: the spool's order is the order pycti wrote them in.
    assert [json.loads((spool.incoming / r).read_bytes())["id"] for r in placed] == [
        line["bundle_id"] for line in written[1]
    ]


def test_the_same_content_is_adopted_once_even_after_a_restart(
    spool: Spool, drop: Path, written: tuple[Path, list[Any]]
) -> None:
    first = adopter(spool)
    for path in sorted(drop.iterdir()):
        first.adopt(path)
    first.ledger.close()
    shutil.copytree(written[0], drop, dirs_exist_ok=True)

    again = adopter(spool)
    outcomes = [again.adopt(path).outcome for path in sorted(drop.iterdir())]

    assert outcomes == ["duplicate"] * 3
    assert len(rels(spool.incoming)) == 3 and os.listdir(drop) == []


def test_a_crash_between_publishing_and_the_ledger_publishes_nothing_twice(
    spool: Spool, drop: Path
) -> None:
    path = sorted(drop.iterdir())[0]
    a = adopter(spool, keep=True)
    rel = a.adopt(path).spool_path
    assert rel is not None
    # The file was imported meanwhile, and the ledger row is lost (the crash).
    a.ledger.close()
    shutil.rmtree(spool.adopt_state)
    done = spool.done / rel.removeprefix("incoming/")
    done.parent.mkdir(parents=True)
    os.replace(spool.incoming / rel.removeprefix("incoming/"), done)

    result = adopter(spool).adopt(path)

    assert (
        result.outcome == "adopted" and result.spool_path == f"done/{done.relative_to(spool.done)}"
    )
    assert rels(spool.incoming) == [] and not path.exists()


def test_keep_and_read_only_folders_leave_the_source(spool: Spool, drop: Path) -> None:
    path = sorted(drop.iterdir())[0]
    assert adopter(spool, keep=True).adopt(path).outcome == "adopted"
    assert path.exists()
    if os.geteuid() == 0:
        return  # root removes files from read-only folders
    other = sorted(drop.iterdir())[1]
    drop.chmod(0o555)
    try:
        assert adopter(spool).adopt(other).outcome == "adopted"
        assert other.exists()
    finally:
        drop.chmod(0o755)


def test_not_json_and_not_a_bundle_go_to_failed_and_stay_in_the_drop_folder(
    spool: Spool, tmp_path: Path
) -> None:
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / "broken.json").write_text('{"bundle_type": "DIRECTORY_BUNDLE", "bund')
    (drop / "other.json").write_text('{"hello": "world"}')
    os.utime(drop / "broken.json", (1, 1))
    a = adopter(spool)

    outcomes = {p.name: a.adopt(p) for p in sorted(drop.iterdir())}
    again = {p.name: a.adopt(p).outcome for p in sorted(drop.iterdir())}

    assert {n: r.outcome for n, r in outcomes.items()} == {
        "broken.json": "failed",
        "other.json": "failed",
    }
    assert again == {"broken.json": "failed", "other.json": "failed"}
    assert sorted(os.listdir(drop)) == ["broken.json", "other.json"]
    kinds = set()
    for rel in rels(spool.failed):
        bundle = spool.failed / rel
        kinds.add(json.loads(bundle.with_name(bundle.name + ".reason").read_text())["kind"])
    assert kinds == {"not-json", "not-a-bundle"} and len(rels(spool.failed)) == 2


def test_a_file_being_written_is_waited_for(spool: Spool, drop: Path, tmp_path: Path) -> None:
    source = sorted(drop.iterdir())[0]
    data = source.read_bytes()
    partial = tmp_path / "partial.json"
    partial.write_bytes(data[: len(data) // 2])
    a = adopter(spool, settle=30)

    assert a.adopt(partial).outcome == "waiting"
    with partial.open("ab") as out:
        out.write(data[len(data) // 2 :])
    assert a.adopt(partial).outcome == "adopted"


def test_plain_bundles_go_to_the_adopted_feed_dated_by_their_newest_modified(
    spool: Spool, tmp_path: Path
) -> None:
    drop = tmp_path / "d"
    drop.mkdir()
    objects = [
        {"type": "indicator", "id": f"indicator--{uuid.uuid4()}", "modified": stamp}
        for stamp in ("2025-03-01T00:00:00Z", "2025-04-02T10:00:00.5Z")
    ]
    bundle_id = f"bundle--{uuid.uuid4()}"
    (drop / "anything.json").write_text(
        json.dumps({"type": "bundle", "id": bundle_id, "objects": objects})
    )

    assert adopter(spool).adopt(drop / "anything.json").outcome == "adopted"

    [rel] = rels(spool.incoming)
    assert rel.startswith(f"{ADOPTED_FEED_ID}/2025/04/02/20250402T100000500000Z_{bundle_id}_")


def test_the_pipeline_imports_adopted_files_with_their_origin_and_replay_keeps_it(
    spool: Spool, drop: Path
) -> None:
    a = adopter(spool)
    for path in sorted(drop.iterdir()):
        a.adopt(path)
    importer = FakeImporter()
    lock = InstanceLock(spool, "test")
    with lock:
        Pipeline(spool, importer, pipeline_settings(), lock).run(threading.Event(), watch=False)
    assert len(importer.origins) == 3
    assert all(isinstance(o, Origin) and o.connector is not None for o in importer.origins)
    assert all("Up Feed run @ " in name for name, _ in importer.calls)
    done = rels(spool.done)
    assert all(source_path(spool.done / r).exists() for r in done)

    replay(spool, "done", select(spool, "done", feed=None, files=(done[0],)))
    assert source_path(spool.incoming / done[0]).exists()
    importer2 = FakeImporter()
    with lock:
        Pipeline(spool, importer2, pipeline_settings(), lock).run(threading.Event(), watch=False)
    assert [o.connector.id for o in importer2.origins if o and o.connector] == [CONNECTOR]


def test_adopt_command(spool: Spool, drop: Path, tmp_path: Path) -> None:
    (drop / "junk.json").write_text("[1, 2]")
    env = {"SPOOL_DIR": str(spool.root), "UPLOADER_SETTLE_SECONDS": "0"}

    result = CliRunner().invoke(main, ["adopt", str(drop)], env=env)

    assert result.exit_code == 1, result.output
    assert "adopted 3, already adopted 0, refused 1" in result.output
    assert os.listdir(drop) == ["junk.json"]
    again = CliRunner().invoke(main, ["adopt", "--keep", str(drop)], env=env)
    assert "adopted 0, already adopted 0, refused 1" in again.output
