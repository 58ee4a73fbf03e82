"""ctx-uploader through click's CliRunner (fake importer injected) and a few real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shared.durable import publish_bytes
from shared.layout import Spool, walk_bundles
from tests.uploader.conftest import (
    FEED_A,
    FEED_B,
    FakeImporter,
    SpoolFiles,
    invoke,
    permanent,
    transient_then_ok,
    wait_until,
)
from uploader.commands.cli import main

REPO = Path(__file__).resolve().parents[2]


def bundles(root: Path) -> list[str]:
    return [e.relative.as_posix() for e in walk_bundles(root)]


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([], id="group"),
        pytest.param(["once"], id="once"),
        pytest.param(["watch"], id="watch"),
        pytest.param(["replay"], id="replay"),
        pytest.param(["status"], id="status"),
        pytest.param(["verify"], id="verify"),
    ],
)
def test_help_everywhere(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    if command:
        assert "--config" in result.output


def test_once_imports_everything_and_exits_zero(
    env: dict[str, str], spool: Spool, files: SpoolFiles
) -> None:
    paths = [files.add(FEED_A), files.add(FEED_B)]
    importer = FakeImporter()

    result = invoke(["once"], env, importer)

    assert result.exit_code == 0, result.output
    assert "done 2, failed 0, pending 0" in result.output
    assert sorted(bundles(spool.done)) == sorted(files.rel(p) for p in paths)


def test_once_exits_one_when_a_file_failed(
    env: dict[str, str], spool: Spool, files: SpoolFiles
) -> None:
    files.add(FEED_A)
    result = invoke(["once"], env, FakeImporter(behaviour=permanent()))
    assert result.exit_code == 1
    assert "failed 1" in result.output


def test_once_gives_up_after_max_wait_leaving_files_pending(
    env: dict[str, str], spool: Spool, files: SpoolFiles
) -> None:
    path = files.add(FEED_A)
    started = time.monotonic()

    result = invoke(
        ["once", "--max-wait", "0.5"], env, FakeImporter(behaviour=transient_then_ok(10**6))
    )

    assert result.exit_code == 3
    assert time.monotonic() - started < 10
    assert f"pending per feed: {FEED_A} 1; oldest incoming/{files.rel(path)}" in result.stdout
    assert bundles(spool.incoming) == [files.rel(path)]
    assert bundles(spool.failed) == [] and bundles(spool.processing) == []


def test_config_errors_name_each_bad_variable(env: dict[str, str]) -> None:
    env = {
        **env,
        "OPENCTI_URL": "ftp://nope",
        "CONNECTOR_ID": "not-a-uuid",
        "UPLOADER_CONCURRENCY": "0",
        "UPLOADER_INSTANCE_ID": "../escape",
    }
    result = invoke(["once"], env, FakeImporter())
    assert result.exit_code == 1
    for name in ("OPENCTI_URL", "CONNECTOR_ID", "UPLOADER_CONCURRENCY", "UPLOADER_INSTANCE_ID"):
        assert name in result.output
    assert "Traceback" not in result.output


def test_config_file_is_read(env: dict[str, str], tmp_path: Path, files: SpoolFiles) -> None:
    files.add(FEED_A)
    config = tmp_path / "uploader.yml"
    config.write_text(f"spool:\n  dir: {env['SPOOL_DIR']}\n")
    del env["SPOOL_DIR"]
    result = invoke(["status", "--json", "--config", str(config)], env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["states"]["incoming"]["files"] == 1


def test_status_needs_no_opencti_settings(env: dict[str, str], files: SpoolFiles) -> None:
    files.add(FEED_A)
    only_spool = {"SPOOL_DIR": env["SPOOL_DIR"]}
    result = invoke(["status"], only_spool)
    assert result.exit_code == 0, result.output


def test_a_second_uploader_with_the_same_instance_is_refused(
    env: dict[str, str], spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uploader.spool_ops.claim import InstanceLock

    monkeypatch.setattr("uploader.spool_ops.claim.LOCK_WAIT_SECONDS", 0.2)
    with InstanceLock(spool, "cli"):
        result = invoke(["once"], env, FakeImporter())
    assert result.exit_code == 1
    assert "instance id 'cli'" in result.output


def test_status_table_and_json(env: dict[str, str], spool: Spool, files: SpoolFiles) -> None:
    pending = files.add(FEED_A, minutes=1)
    os.utime(pending, (time.time() - 3600, time.time() - 3600))
    files.add(FEED_A, minutes=2)
    files.add(FEED_B, state="done")
    files.add(FEED_B, state="failed")
    claimed = files.add(FEED_B, state="processing")  # under an instance folder below
    instance_dir = spool.processing / "host-1"
    target = instance_dir / files.rel(claimed, "processing")
    target.parent.mkdir(parents=True)
    claimed.rename(target)

    table = invoke(["status"], env)
    as_json = invoke(["status", "--json"], env)

    assert table.exit_code == 0 and as_json.exit_code == 0
    data = json.loads(as_json.output)
    states = data["states"]
    assert {s: states[s]["files"] for s in states} == {
        "incoming": 2,
        "processing": 1,
        "done": 1,
        "failed": 1,
    }
    assert states["incoming"]["bytes"] == sum(
        p.stat().st_size for p in spool.incoming.rglob("*.json")
    )
    assert data["feeds"][FEED_A]["incoming"]["files"] == 2
    assert data["feeds"][FEED_B]["done"]["files"] == 1
    assert data["feeds"][FEED_B]["processing"]["files"] == 1
    assert data["oldest_pending"]["file"] == f"incoming/{files.rel(pending)}"
    assert data["oldest_pending"]["age_seconds"] >= 3590
    lines = table.output.splitlines()
    assert lines[0].split() == ["incoming", "processing", "done", "failed"]
    assert lines[1].split() == ["files", "2", "1", "1", "1"]
    assert any(line.startswith(FEED_A) for line in lines)
    assert f"oldest pending: incoming/{files.rel(pending)} (60m old)" in table.output


def test_status_of_an_empty_spool(env: dict[str, str]) -> None:
    result = invoke(["status", "--json"], env)
    assert json.loads(result.output)["oldest_pending"] is None
    assert "oldest pending: none" in invoke(["status"], env).output


def test_verify_good_and_bad_digests(env: dict[str, str], spool: Spool, files: SpoolFiles) -> None:
    for state in ("incoming", "done", "failed"):
        files.add(FEED_A, state=state)
    good = invoke(["verify"], env)
    assert good.exit_code == 0, good.output
    assert "3 checked, 0 bad" in good.output

    bad = files.add(FEED_B, state="done", digest="b" * 64)
    odd = spool.failed / FEED_A / "odd.json"
    odd.write_bytes(b"{}")
    result = invoke(["verify"], env)
    assert result.exit_code == 1
    assert f"BAD done/{files.rel(bad, 'done')}: SHA-256 is" in result.output
    assert f"BAD failed/{FEED_A}/odd.json" in result.output
    assert "5 checked, 2 bad" in result.output


def _failed_file(spool: Spool, files: SpoolFiles, feed: str, minutes: int) -> Path:
    path = files.add(feed, minutes=minutes, state="failed")
    path.with_name(path.name + ".reason").write_text('{"kind": "rejected"}')
    return path


def test_replay_all_failed_back_to_incoming(
    env: dict[str, str], spool: Spool, files: SpoolFiles
) -> None:
    paths = [_failed_file(spool, files, FEED_A, 1), _failed_file(spool, files, FEED_B, 2)]
    result = invoke(["replay"], env)
    assert result.exit_code == 0, result.output
    for path in paths:
        rel = files.rel(path, "failed")
        assert f"moved failed/{rel} -> incoming/{rel}" in result.output
        assert spool.path_in("incoming", rel).is_file()
        assert not path.exists()
        assert not path.with_name(path.name + ".reason").exists()
    assert "2 moved, 0 skipped" in result.output


def test_replay_by_feed_and_by_file(env: dict[str, str], spool: Spool, files: SpoolFiles) -> None:
    a1 = _failed_file(spool, files, FEED_A, 1)
    a2 = _failed_file(spool, files, FEED_A, 2)
    b1 = _failed_file(spool, files, FEED_B, 3)

    by_feed = invoke(["replay", "--feed", FEED_B], env)
    assert by_feed.exit_code == 0
    assert not b1.exists() and a1.exists() and a2.exists()

    by_path = invoke(["replay", str(a1)], env)
    by_name = invoke(["replay", a2.name], env)
    assert by_path.exit_code == 0 and by_name.exit_code == 0
    assert bundles(spool.failed) == []
    assert len(bundles(spool.incoming)) == 3

    missing = invoke(["replay", "nope.json"], env)
    assert missing.exit_code == 1
    assert "not found in failed/" in missing.output


def test_replay_from_done_keeps_the_receipt(
    env: dict[str, str], spool: Spool, files: SpoolFiles
) -> None:
    path = files.add(FEED_A, state="done")
    receipt = path.with_name(path.name + ".receipt")
    receipt.write_text('{"work_id": "w-1"}')
    assert invoke(["replay"], env).output.startswith("0 moved")  # default source is failed/
    result = invoke(["replay", "--from", "done"], env)
    assert result.exit_code == 0
    assert spool.path_in("incoming", files.rel(path, "done")).is_file()
    assert receipt.read_text() == '{"work_id": "w-1"}'


def test_replay_never_overwrites(env: dict[str, str], spool: Spool, files: SpoolFiles) -> None:
    path = _failed_file(spool, files, FEED_A, 1)
    rel = files.rel(path, "failed")
    already = spool.path_in("incoming", rel)
    publish_bytes(already, b"something else already here")
    result = invoke(["replay"], env)
    assert result.exit_code == 1
    assert f"skipped failed/{rel}: already in incoming/" in result.output
    assert already.read_bytes() == b"something else already here"
    assert path.is_file()


def test_replayed_files_are_imported_again(
    env: dict[str, str], spool: Spool, files: SpoolFiles
) -> None:
    files.add(FEED_A)
    assert invoke(["once"], env, FakeImporter(behaviour=permanent())).exit_code == 1
    assert invoke(["replay"], env).exit_code == 0
    importer = FakeImporter()
    assert invoke(["once"], env, importer).exit_code == 0
    assert len(importer.accepted) == 1
    assert len(bundles(spool.done)) == 1 and bundles(spool.failed) == []


def test_watch_runs_until_stopped(env: dict[str, str], spool: Spool, files: SpoolFiles) -> None:
    importer = FakeImporter()
    stop = threading.Event()
    results: list[Result] = []
    thread = threading.Thread(
        target=lambda: results.append(invoke(["watch"], env, importer, stop=stop))
    )
    thread.start()
    try:
        assert wait_until(lambda: (spool.processing / "cli" / ".lock").exists(), timeout=5)
        files.add(FEED_A)
        assert importer.wait_for(lambda i: len(i.accepted) == 1, timeout=5)
    finally:
        stop.set()
        thread.join(10)
    assert results and results[0].exit_code == 0
    assert "done 1" in results[0].output


@pytest.mark.parametrize("command", ["status", "verify", "replay"])
def test_read_only_commands_never_import_pycti(
    env: dict[str, str], files: SpoolFiles, command: str
) -> None:
    files.add(FEED_A)
    script = textwrap.dedent(
        f"""
        import sys
        from uploader.commands.cli import main
        try:
            main([{command!r}], standalone_mode=False)
        finally:
            loaded = sorted(m for m in sys.modules if m == "pycti" or m.startswith("pycti.")
                            or m == "uploader.importing.opencti")
            print("LOADED", loaded)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout


_FAKE_WATCH = """
import sys, time
from uploader.commands.cli import main
from uploader.spool_ops.outcome import ImportReceipt

class Slow:
    def import_bundle(self, name, data, origin=None):
        print("IMPORTING", flush=True)
        time.sleep(1.0)
        return ImportReceipt("w", "c", 1, 1)

main(["watch"], obj={"importer_factory": lambda settings: Slow()})
"""


def test_watch_finishes_the_current_file_on_sigterm_and_exits_zero(
    env: dict[str, str], spool: Spool, files: SpoolFiles
) -> None:
    path = files.add(FEED_A)
    proc = subprocess.Popen(
        [sys.executable, "-c", _FAKE_WATCH],
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "IMPORTING"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "done 1" in out
    assert spool.path_in("done", files.rel(path)).is_file()
    assert bundles(spool.processing) == []


def test_once_without_pycti_is_a_clear_error(env: dict[str, str], files: SpoolFiles) -> None:
    files.add(FEED_A)
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pycti"] = None  # what an install without the 'opencti' extra looks like
        from uploader.commands.cli import main
        main(["once", "--max-wait", "1"])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot load pycti" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_spool_commands_run_without_pycti_or_pika(env: dict[str, str], files: SpoolFiles) -> None:
    # pika comes with pycti (the 'opencti' extra): neither may be needed to read the spool.
    files.add(FEED_A)
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pycti"] = None
        sys.modules["pika"] = None
        from uploader.commands.cli import main
        main(["status"])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "incoming" in proc.stdout
