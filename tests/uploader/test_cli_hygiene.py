"""The uploader's writing commands refuse a folder that is not a spool, creating nothing; a badly
named file's ``.reason`` says what a name must be, as ``verify`` does; unknown settings are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.config import load_settings, warn_unknown_settings
from shared.durable import publish_bytes
from shared.layout import PATH_RULE, Spool
from tests.uploader.conftest import FEED_A, FakeImporter, invoke
from uploader.settings import SpoolSettings, UploaderSettings


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["prune", "--older-than", "1d"], id="prune"),
        pytest.param(["prune", "--older-than", "1d", "--dry-run"], id="prune-dry-run"),
        pytest.param(["replay"], id="replay"),
        pytest.param(["replay", "--from", "done", "some.json"], id="replay-files"),
    ],
)
@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_writing_commands_refuse_a_folder_that_is_not_a_spool(
    env: dict[str, str], tmp_path: Path, args: list[str], layout: str
) -> None:
    wrong = tmp_path / "spoool"
    if layout == "empty":
        wrong.mkdir()

    result = invoke(args, {**env, "SPOOL_DIR": str(wrong)})

    assert result.exit_code == 1
    assert str(wrong.absolute()) in result.output
    assert "SPOOL_DIR" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    if layout == "missing":
        assert not wrong.exists()
    else:
        assert list(wrong.iterdir()) == []


@pytest.mark.parametrize(
    "rel",
    [
        pytest.param(f"{FEED_A}/2024/05/01/garbage.json", id="bad-name"),
        pytest.param(
            f"{FEED_A}/2023/01/01/20240501T100000000000Z_objects_{'0' * 64}.json",
            id="wrong-date-folder",
        ),
    ],
)
def test_a_badly_named_file_is_failed_with_what_a_name_must_be(
    env: dict[str, str], spool: Spool, rel: str
) -> None:
    path = spool.path_in("incoming", rel)
    publish_bytes(path, b'{"type": "bundle"}')

    once = invoke(["once", "--max-wait", "5"], env, FakeImporter())
    verify = invoke(["verify"], env)

    assert once.exit_code == 1, once.output
    failed = spool.path_in("failed", rel)
    reason = json.loads(failed.with_name(failed.name + ".reason").read_text(encoding="utf-8"))
    assert reason["kind"] == "invalid-name"
    assert rel in reason["message"]
    assert PATH_RULE in reason["message"]
    assert PATH_RULE in verify.output


def test_the_uploader_models_judge_uploader_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {
        "SPOOL_DIR": str(tmp_path),
        "UPLOADER_CONCURENCY": "4",
        "CONNECTOR_LOG_FORMAT": "json",
        "UPLOADER_INSTANCE_ID": "a",
        "MQ_HOST": "rabbitmq",
    }

    settings = load_settings(SpoolSettings, None, environ)
    with caplog.at_level("WARNING", logger="shared.config"):
        warn_unknown_settings(settings)
        warn_unknown_settings(load_settings(SpoolSettings, None, environ))

    assert [r.getMessage() for r in caplog.records] == [
        "ignoring environment variable CONNECTOR_LOG_FORMAT: no such setting; did you mean OPENCTI_JSON_LOGGING=true?",
        "ignoring environment variable UPLOADER_CONCURENCY: no such setting; did you mean UPLOADER_CONCURRENCY?",
    ]


def test_uploader_commands_warn_about_unknown_settings(env: dict[str, str]) -> None:
    # A name no other test uses: each name is warned about once per process.
    result = invoke(["status"], {**env, "UPLOADER_CONCURRENCI": "4"})

    assert result.exit_code == 0, result.output
    assert "did you mean UPLOADER_CONCURRENCY?" in result.stderr


def test_the_sample_config_holds_no_unknown_name() -> None:
    sample = Path(__file__).resolve().parent.parent.parent / "compose" / "config.yml.sample"

    settings = load_settings(
        UploaderSettings, sample, {"CONNECTOR_ID": "6a9d4e39-3b8b-4a57-9f2d-0f1a2b3c4d5e"}
    )

    assert settings.unknown_settings == ()
