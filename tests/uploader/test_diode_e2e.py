"""End to end: diode files the real pycti wrote, copied into the drop folder of a running
``ctx-uploader watch``, imported into the OpenCTI stand-in as the connectors that wrote them.

The connected side is a stand-in too (the writer registers with it): the files come from
``OpenCTIConnectorHelper.send_stix2_bundle`` with ``send_to_directory`` on and ``send_to_queue``
off (tests/standins/diode_writer.py), in the pycti under test (``make compat`` runs this once per
supported pycti).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shared.layout import Spool, walk_bundles
from tests.standins import diode_writer
from tests.standins.opencti import STANDIN_TOKEN, OpenCTIStandIn
from tests.uploader.conftest import UPLOADER, wait_until

pytest_plugins = ["tests.standins.fixtures"]
pytestmark = pytest.mark.skipif(not UPLOADER.exists(), reason="ctx-uploader is not installed")

ALPHA = str(uuid.uuid4())
BETA = str(uuid.uuid4())
TARGET_USER = str(uuid.uuid4())


def _write(out: Path, connector: str, name: str, count: int) -> tuple[list[Path], list[Any], str]:
    """Files written by the real pycti for ``connector``, sorted by name (by epoch), and the
    applicant id the connected side put in them."""
    out.mkdir(parents=True)
    with OpenCTIStandIn(STANDIN_TOKEN) as upstream:
        lines = diode_writer.write(
            str(out), upstream.url, STANDIN_TOKEN, connector, name, count, seed=connector
        )
        applicant = upstream.connector_user_id
    return sorted(out.iterdir()), lines, applicant


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("connected")
    alpha, alpha_lines, alpha_applicant = _write(root / "alpha", ALPHA, "Feed Alpha", 5)
    beta, beta_lines, _ = _write(root / "beta", BETA, "Feed Beta", 3)
    return {
        "alpha": alpha,
        "alpha_lines": alpha_lines,
        "alpha_applicant": alpha_applicant,
        "beta": beta,
        "beta_lines": beta_lines,
        "root": root,
    }


def _pushes_of(standin: OpenCTIStandIn, object_ids: list[str]) -> list[int]:
    """Indexes of the pushes carrying exactly this file's objects."""
    wanted = set(object_ids)
    with standin.lock:
        return [
            i
            for i, push in enumerate(standin.pushes)
            if {o["id"] for o in push.bundle["objects"]} == wanted
        ]


def _all_pushed(standin: OpenCTIStandIn, lines: list[Any]) -> bool:
    return all(_pushes_of(standin, line["object_ids"]) for line in lines)


def _rels(root: Path) -> list[str]:
    return [e.relative.as_posix() for e in walk_bundles(root)]


def _reason_kinds(spool: Spool) -> list[str]:
    kinds = []
    for rel in _rels(spool.failed):
        path = spool.failed / rel
        kinds.append(json.loads(path.with_name(path.name + ".reason").read_text())["kind"])
    return sorted(kinds)


def test_diode_files_copied_by_cp_rsync_and_tar_import_once_in_order_as_their_connector(
    spool: Spool,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
    upstream: dict[str, Any],
    tmp_path: Path,
) -> None:
    drop = tmp_path / "drop"
    env = {
        **uploader_env,
        "UPLOADER_DROP_DIR": str(drop),
        "UPLOADER_APPLICANT_MAPPINGS": f"{upstream['alpha_applicant']}:{TARGET_USER}",
        "UPLOADER_SETTLE_SECONDS": "1",
        "UPLOADER_RESCAN_INTERVAL": "2",
    }
    alpha: list[Path] = upstream["alpha"]
    alpha_lines: list[Any] = upstream["alpha_lines"]
    beta_lines: list[Any] = upstream["beta_lines"]
    uploader = launch(["watch"], env)
    assert uploader.wait_for_line("started"), uploader.stderr
    assert wait_until(drop.is_dir, timeout=30)

    # A batch copied by cp, named in reverse: imported in the order of the epochs in the names.
    subprocess.run(["cp", *map(str, reversed(alpha[1:4])), str(drop)], check=True)
    assert wait_until(lambda: _all_pushed(opencti_standin, alpha_lines[1:4]), 30), uploader.stderr
    # The oldest file arrives late by rsync: imported (diode-import's mtime mark skips it).
    subprocess.run(["rsync", "-t", str(alpha[0]), f"{drop}/"], check=True)
    # Beta's files come in a tar archive, unpacked into a folder of the drop folder.
    archive = tmp_path / "beta.tar"
    subprocess.run(["tar", "-C", str(upstream["root"]), "-cf", str(archive), "beta"], check=True)
    subprocess.run(["tar", "-C", str(drop), "-xf", str(archive)], check=True)
    # The newest alpha file is still being written when it appears (cp writes in place).
    data = alpha[4].read_bytes()
    with (drop / alpha[4].name).open("wb") as out:
        out.write(data[: len(data) // 2])
        out.flush()
        time.sleep(0.6)
        out.write(data[len(data) // 2 :])
    # A corrupt copy and a JSON file that is no bundle: refused, never deleted.
    (drop / "corrupt.json").write_bytes(alpha[0].read_bytes()[:100])
    (drop / "notabundle.json").write_text('{"hello": "world"}')

    assert wait_until(lambda: _all_pushed(opencti_standin, alpha_lines + beta_lines), 60), (
        uploader.stderr
    )
    assert wait_until(lambda: len(_rels(spool.failed)) == 2, 30), uploader.stderr
    assert wait_until(lambda: len(_rels(spool.done)) == 8, 30), uploader.stderr

    firsts = []
    for line in alpha_lines + beta_lines:
        pushes = _pushes_of(opencti_standin, line["object_ids"])
        assert len(pushes) == 1, line
        firsts.append(pushes[0])
    # Order per connector: the batch in epoch order, the newest after it.
    assert firsts[1] < firsts[2] < firsts[3] < firsts[4]
    assert firsts[5] < firsts[6] < firsts[7]
    with opencti_standin.lock:
        pushes = list(opencti_standin.pushes)
        works = dict(opencti_standin.works)
        connectors = dict(opencti_standin.connectors)
    # Under its source connector, registered as diode-import does; one work per file.
    assert connectors[ALPHA]["name"] == "Feed Alpha" and connectors[BETA]["name"] == "Feed Beta"
    for index in firsts[:5]:
        assert pushes[index].connector_id == ALPHA
        assert pushes[index].applicant_id == TARGET_USER
    for index in firsts[5:]:
        assert pushes[index].connector_id == BETA
        assert pushes[index].applicant_id is None  # beta's applicant is not mapped
    work_ids = [pushes[i].work_id for i in firsts]
    assert len(set(work_ids)) == 8
    for index, work_id in zip(firsts, work_ids, strict=True):
        work = works[str(work_id)]
        assert work.connector_id == pushes[index].connector_id and work.processed
        assert " run @ " in str(work.name)
    # Refused files: in failed/ with their reasons, and still in the drop folder.
    assert _reason_kinds(spool) == ["not-a-bundle", "not-json"]
    left = sorted(p.name for p in drop.rglob("*.json"))
    assert left == ["corrupt.json", "notabundle.json"]

    # Replay: a done file goes back and is imported again under its connector.
    done_alpha = sorted(r for r in _rels(spool.done) if r.startswith(ALPHA))
    replay = subprocess.run(
        [str(UPLOADER), "replay", "--from", "done", done_alpha[0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert wait_until(
        lambda: len(_pushes_of(opencti_standin, alpha_lines[0]["object_ids"])) == 2, 30
    )
    with opencti_standin.lock:
        again = opencti_standin.pushes[_pushes_of(opencti_standin, alpha_lines[0]["object_ids"])[1]]
    assert again.connector_id == ALPHA and again.applicant_id == TARGET_USER

    uploader.proc.send_signal(signal.SIGTERM)
    code, _ = uploader.finish()
    assert code == 0, uploader.stderr


def test_a_restart_during_adoption_loses_and_duplicates_nothing(
    spool: Spool,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
    tmp_path: Path,
) -> None:
    connector = str(uuid.uuid4())
    files, lines, _ = _write(tmp_path / "written", connector, "Feed Gamma", 40)
    drop = tmp_path / "drop"
    env = {**uploader_env, "UPLOADER_DROP_DIR": str(drop), "UPLOADER_RESCAN_INTERVAL": "1"}
    # Nothing is imported before the crash: every push afterwards is one adoption.
    opencti_standin.go_down()
    first = launch(["watch"], env)
    assert wait_until(drop.is_dir, timeout=30), first.stderr

    def copy() -> None:
        for path in files:
            shutil.copy2(path, drop / path.name)
            time.sleep(0.01)

    copier = threading.Thread(target=copy)
    copier.start()
    assert wait_until(lambda: len(_rels(spool.incoming)) >= 10, 30), first.stderr
    first.proc.kill()
    first.proc.wait(30)
    copier.join(30)
    opencti_standin.come_up()

    second = launch(["watch"], env)
    assert wait_until(lambda: _all_pushed(opencti_standin, lines), 60), second.stderr
    assert wait_until(lambda: not any(drop.iterdir()), 30)
    second.proc.send_signal(signal.SIGTERM)
    code, _ = second.finish()

    assert code == 0, second.stderr
    counts = Counter(len(_pushes_of(opencti_standin, line["object_ids"])) for line in lines)
    assert counts == {1: 40}
    assert len(_rels(spool.done)) == 40 and _rels(spool.incoming) == []
    assert not any(os.scandir(drop))
