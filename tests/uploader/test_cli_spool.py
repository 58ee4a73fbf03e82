"""The commands that read a spool refuse a directory that is not one; the importing ones say
which spool they work on."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.layout import Spool
from tests.uploader.conftest import FakeImporter, SpoolFiles, invoke

READING = [
    pytest.param(["status"], id="status"),
    pytest.param(["status", "--json"], id="status-json"),
    pytest.param(["verify"], id="verify"),
    pytest.param(["replay"], id="replay"),
    pytest.param(["prune", "--older-than", "1d"], id="prune"),
]


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param("missing", id="missing"),
        pytest.param("file", id="a-file"),
        pytest.param("empty", id="empty-dir"),
        pytest.param("other", id="some-other-dir"),
    ],
)
@pytest.mark.parametrize("command", READING)
def test_reading_commands_refuse_a_directory_that_is_not_a_spool(
    env: dict[str, str], tmp_path: Path, layout: str, command: list[str]
) -> None:
    wrong = tmp_path / "not-the-spool"
    if layout == "file":
        wrong.write_text("x", encoding="utf-8")
    elif layout != "missing":
        wrong.mkdir()
    if layout == "other":
        (wrong / "notes.txt").write_text("hello", encoding="utf-8")
        (wrong / "inbox").mkdir()

    result = invoke(command, {**env, "SPOOL_DIR": str(wrong)})

    assert result.exit_code == 1, result.output
    assert str(wrong.absolute()) in result.output
    expected = "does not exist" if layout in ("missing", "file") else "is not a spool"
    assert expected in result.output
    assert "0 checked" not in result.output
    # Refused without creating anything there.
    if layout in ("empty", "other"):
        assert sorted(p.name for p in wrong.iterdir()) == sorted(
            {"empty": [], "other": ["inbox", "notes.txt"]}[layout]
        )
    else:
        assert not wrong.is_dir()


def test_a_relative_spool_dir_is_named_absolute(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(["status"], {**env, "SPOOL_DIR": "spool-here"})
    assert result.exit_code == 1
    assert str(tmp_path / "spool-here") in result.output


@pytest.mark.parametrize("command", READING)
def test_reading_commands_accept_a_spool_with_only_one_state_folder(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    received = tmp_path / "received"
    (received / "incoming").mkdir(parents=True)
    result = invoke(command, {**env, "SPOOL_DIR": str(received)})
    assert "is not a spool" not in result.output
    assert result.exit_code == 0, result.output


def test_once_logs_the_absolute_spool_it_works_on(
    env: dict[str, str],
    spool: Spool,
    files: SpoolFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files.add()
    monkeypatch.chdir(spool.root.parent)
    result = invoke(["once"], {**env, "SPOOL_DIR": spool.root.name}, importer=FakeImporter())
    assert result.exit_code == 0, result.output
    started = [line for line in result.stderr.splitlines() if " started (once)" in line]
    assert len(started) == 1, result.stderr
    assert f"spool {spool.root.absolute()}" in started[0]
