"""The fetcher's commands that write refuse a folder that is not a spool, creating nothing; every
command warns about settings no one reads; ``reset`` says when it changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetcher.state.ledger import LISTING_CURSOR, Ledger
from shared.layout import FETCHER_STATE_DIRNAME
from tests.fetcher.helpers import invoke

FEED = "0b2d4e5f-1111-4222-8333-444455556666"
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(autouse=True)
def _no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # load_settings reads ./config.yml when present: run where there is none.
    monkeypatch.chdir(tmp_path)


def _spool_with_state(root: Path, cursor: str | None = None) -> Path:
    (root / "incoming").mkdir(parents=True)
    with Ledger(root / FETCHER_STATE_DIRNAME) as ledger:
        if cursor is not None:
            ledger.set_cursor(FEED, LISTING_CURSOR, cursor)
    return root


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["transfer"], id="transfer"),
        pytest.param(["transfer", "-0", "--manifest", "MANIFEST", "--mark"], id="transfer-mark"),
        pytest.param(["reset", "--feed", FEED, "--all"], id="reset"),
    ],
)
@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_writing_commands_refuse_a_folder_that_is_not_a_spool(
    tmp_path: Path, args: list[str], layout: str
) -> None:
    spool_dir = tmp_path / "spoool"
    if layout == "empty":
        spool_dir.mkdir()
    manifest = tmp_path / "transfer.sha256"
    args = [str(manifest) if arg == "MANIFEST" else arg for arg in args]

    result = invoke(args, {"SPOOL_DIR": str(spool_dir)})

    assert result.exit_code == 1
    assert str(spool_dir.absolute()) in result.output
    assert "SPOOL_DIR" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.stdout == ""
    assert not manifest.exists()
    if layout == "missing":
        assert not spool_dir.exists()
    else:
        assert list(spool_dir.iterdir()) == []


def test_transfer_refuses_a_spool_the_fetcher_never_wrote_state_for(tmp_path: Path) -> None:
    # A wrong CYBERTHREATEXCHANGE_STATE_DIR would otherwise list every file as not yet carried.
    spool_dir = _spool_with_state(tmp_path / "spool")
    state_dir = tmp_path / "typo-state"

    result = invoke(
        ["transfer", "--mark"],
        {"SPOOL_DIR": str(spool_dir), "CYBERTHREATEXCHANGE_STATE_DIR": str(state_dir)},
    )

    assert result.exit_code == 1
    assert "CYBERTHREATEXCHANGE_STATE_DIR" in result.output
    assert not state_dir.exists()


def test_transfer_on_a_spool_lists_and_exits_zero(tmp_path: Path) -> None:
    spool_dir = _spool_with_state(tmp_path / "spool")

    result = invoke(["transfer", "--mark"], {"SPOOL_DIR": str(spool_dir)})

    assert result.exit_code == 0, result.output
    assert result.stdout == ""


def test_reset_after_the_cursor_says_nothing_changes(tmp_path: Path) -> None:
    cursor = "2026-03-01T00:00:00.000000Z"
    spool_dir = _spool_with_state(tmp_path / "spool", cursor)

    result = invoke(
        ["reset", "--feed", FEED, "--since", "2026-06-01"], {"SPOOL_DIR": str(spool_dir)}
    )

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{FEED}: the next pass already reads from {cursor}, before 2026-06-01, so nothing changes\n"
    )
    assert "(was" not in result.stdout
    with Ledger(spool_dir / FETCHER_STATE_DIRNAME, read_only=True) as ledger:
        assert ledger.cursor(FEED, LISTING_CURSOR) == cursor


def test_reset_before_the_cursor_still_says_where_it_was(tmp_path: Path) -> None:
    spool_dir = _spool_with_state(tmp_path / "spool", "2026-03-01T00:00:00.000000Z")

    result = invoke(
        ["reset", "--feed", FEED, "--since", "2026-01-01"], {"SPOOL_DIR": str(spool_dir)}
    )

    assert result.exit_code == 0, result.output
    assert "(was 2026-03-01T00:00:00.000000Z)" in result.stdout


def _fetcher(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # A process of its own: only the fetcher's settings models exist in it, as in production.
    return subprocess.run(
        [str(Path(sys.executable).with_name("ctx-fetcher")), *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " WARNING " in line]


def test_unknown_settings_are_named_once_with_the_closest_known_name(tmp_path: Path) -> None:
    spool_dir = _spool_with_state(tmp_path / "spool")
    config = tmp_path / "config.yml"
    config.write_text(
        "cyberthreatexchange:\n  feeds_ids: x\nspool:\n  dri: y\nuploader:\n  concurrency: 2\n"
    )
    env = {
        "SPOOL_DIR": str(spool_dir),
        "CONNECTOR_LOG_FORMAT": "json",
        "CYBERTHREATEXCHANGE_FEEDS_IDS": FEED,
        "SPOOL_SIGNING_KEYFILE": "/run/secrets/k",
        # Not ours, or the uploader's, or pycti's: nothing is said about them.
        "HTTP_PROXY": "http://proxy:3128",
        "MQ_HOST": "rabbitmq",
        "UPLOADER_CONCURENCY": "2",
        "CONNECTOR_ID": "a",
        "CONNECTOR_RUN_AND_TERMINATE": "true",
        "OPENCTI_URL": "http://opencti:8080",
        "CYBERTHREATEXCHANGE_UNSET_TYPO": "",
    }

    result = _fetcher(["transfer", "--config", str(config)], env, tmp_path)

    assert result.returncode == 0, result.stderr
    warnings = _warnings(result.stderr)
    expected = [
        "ignoring environment variable CONNECTOR_LOG_FORMAT: no such setting; did you mean OPENCTI_JSON_LOGGING=true?",
        "ignoring environment variable CYBERTHREATEXCHANGE_FEEDS_IDS: no such setting; did you mean CYBERTHREATEXCHANGE_FEED_IDS?",
        "ignoring environment variable SPOOL_SIGNING_KEYFILE: no such setting; did you mean SPOOL_SIGNING_KEY_FILE?",
        f"ignoring cyberthreatexchange.feeds_ids in {config}: no such setting; did you mean cyberthreatexchange.feed_ids?",
        f"ignoring spool.dri in {config}: no such setting; did you mean spool.dir?",
    ]
    for line in expected:
        assert sum(line in warning for warning in warnings) == 1, (line, result.stderr)
    assert len(warnings) == len(expected), result.stderr
    for quiet in ("HTTP_PROXY", "MQ_HOST", "UPLOADER_", "uploader.", "CONNECTOR_ID", "OPENCTI_URL"):
        assert quiet not in result.stderr


def test_json_logging_carries_the_warning_as_json(tmp_path: Path) -> None:
    spool_dir = _spool_with_state(tmp_path / "spool")
    env = {
        "SPOOL_DIR": str(spool_dir),
        "OPENCTI_JSON_LOGGING": "true",
        "CYBERTHREATEXCHANGE_FEEDS_IDS": FEED,
    }

    result = _fetcher(["transfer"], env, tmp_path)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(line["level"], line["setting"], line["closest"]) for line in lines] == [
        ("WARNING", "CYBERTHREATEXCHANGE_FEEDS_IDS", "CYBERTHREATEXCHANGE_FEED_IDS")
    ]


def test_the_sample_config_and_compose_settings_raise_no_warning(tmp_path: Path) -> None:
    spool_dir = _spool_with_state(tmp_path / "spool")
    sample = ROOT / "compose" / "config.yml.sample"

    result = _fetcher(
        ["transfer", "--config", str(sample)], {"SPOOL_DIR": str(spool_dir)}, tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert _warnings(result.stderr) == []
