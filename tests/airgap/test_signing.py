"""Signed spool files through the uploader (fake importer) and ``verify``; key settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shared.layout import Spool, walk_bundles
from shared.signing import SigningKey
from tests.airgap.conftest import KEY, add_signed, uploader
from tests.uploader.conftest import FEED_A, FEED_B, FakeImporter, SpoolFiles, run_once

OTHER_KEY = SigningKey.from_secret("another-key-" + "0" * 40)


def reason(spool: Spool, path: Path) -> dict[str, object]:
    rel = path.relative_to(spool.incoming)
    failed = spool.failed / rel
    data: dict[str, object] = json.loads(failed.with_name(failed.name + ".reason").read_text())
    return data


def names(root: Path) -> list[str]:
    return [entry.relative.as_posix() for entry in walk_bundles(root)]


def test_with_key_only_rightly_signed_files_are_imported(
    spool: Spool, files: SpoolFiles, signing_key: SigningKey
) -> None:
    good = add_signed(files, signing_key, FEED_A)
    good_bytes = good.read_bytes()
    unsigned = add_signed(files, None, FEED_A)
    wrong_key = add_signed(files, OTHER_KEY, FEED_B)
    # Right key, but the signature of other bytes (same SHA-256 in the name as the content).
    swapped = add_signed(files, None, FEED_B, signature=signing_key.sign(b"other bytes"))
    importer = FakeImporter()

    summary = run_once(spool, importer, signing_key=signing_key)

    assert summary.done == 1 and summary.failed == 3
    assert importer.accepted == [good_bytes]
    assert names(spool.done) == [good.relative_to(spool.incoming).as_posix()]
    assert reason(spool, unsigned)["kind"] == "unsigned"
    assert reason(spool, wrong_key)["kind"] == "bad-signature"
    assert reason(spool, swapped)["kind"] == "bad-signature"
    for path in (unsigned, wrong_key, swapped):
        assert KEY not in json.dumps(reason(spool, path))
    assert len(importer.calls) == 1


def test_without_key_signed_files_are_imported_and_noted_once(
    spool: Spool, files: SpoolFiles, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        add_signed(files, OTHER_KEY, FEED_A)
    add_signed(files, None, FEED_A)
    importer = FakeImporter()

    with caplog.at_level(logging.INFO, logger="uploader.importing.admit"):
        summary = run_once(spool, importer)

    assert summary.done == 4 and summary.failed == 0
    notes = [r for r in caplog.records if "signatures are not being verified" in r.getMessage()]
    assert len(notes) == 1


def test_copy_in_progress_of_a_signed_file_settles_before_the_signature_is_checked(
    spool: Spool, files: SpoolFiles, signing_key: SigningKey
) -> None:
    path = add_signed(files, signing_key, FEED_A)
    data = path.read_bytes()
    # A copy in progress: the first half only. Complete it once the uploader has seen it.
    path.write_bytes(data[: len(data) // 2])
    importer = FakeImporter()
    seen: list[str] = []

    class Completer(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for it to settle" in record.getMessage() and not seen:
                seen.append(record.getMessage())
                path.write_bytes(data)

    handler = Completer(logging.INFO)
    logger = logging.getLogger("uploader.importing.admit")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        summary = run_once(spool, importer, signing_key=signing_key, settle_seconds=5.0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    assert seen, "the uploader never saw the partial file"
    assert summary.done == 1 and summary.failed == 0
    assert importer.accepted == [data]


def test_once_with_key_from_a_file_refuses_unsigned(
    spool: Spool,
    files: SpoolFiles,
    signing_key: SigningKey,
    uploader_env: dict[str, str],
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "spool.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    add_signed(files, signing_key, FEED_A)
    unsigned = add_signed(files, None, FEED_B)
    importer = FakeImporter()

    result = uploader(
        ["once", "--max-wait", "10"],
        {**uploader_env, "SPOOL_SIGNING_KEY_FILE": str(key_file)},
        importer,
    )

    assert result.exit_code == 1, result.output
    assert "done 1, failed 1" in result.output
    assert reason(spool, unsigned)["kind"] == "unsigned"


def test_verify_reports_unsigned_and_bad_signatures_only_with_a_key(
    spool: Spool, files: SpoolFiles, signing_key: SigningKey, uploader_env: dict[str, str]
) -> None:
    add_signed(files, signing_key, FEED_A)
    add_signed(files, signing_key, FEED_A, state="done")
    unsigned = add_signed(files, None, FEED_A)
    bad = add_signed(files, OTHER_KEY, FEED_B, state="failed")

    without = uploader(["verify"], uploader_env)
    with_key = uploader(["verify"], {**uploader_env, "SPOOL_SIGNING_KEY": KEY})

    assert without.exit_code == 0, without.output
    assert "4 checked, 0 bad" in without.output
    assert with_key.exit_code == 1
    assert "4 checked, 2 bad" in with_key.output
    lines = [line for line in with_key.output.splitlines() if line.startswith("BAD ")]
    assert len(lines) == 2
    assert any(unsigned.name in line and "unsigned" in line for line in lines)
    assert any(bad.name in line and "bad-signature" in line for line in lines)
    assert KEY not in with_key.output


@pytest.mark.parametrize(
    ("extra", "variables"),
    [
        pytest.param({"SPOOL_SIGNING_KEY": "short-key"}, ["SPOOL_SIGNING_KEY"], id="too-short"),
        pytest.param(
            {"SPOOL_SIGNING_KEY": KEY, "SPOOL_SIGNING_KEY_FILE": "KEYFILE"},
            ["SPOOL_SIGNING_KEY", "SPOOL_SIGNING_KEY_FILE"],
            id="both",
        ),
        pytest.param(
            {"SPOOL_SIGNING_KEY_FILE": "/nonexistent/spool.key"},
            ["SPOOL_SIGNING_KEY_FILE"],
            id="missing-file",
        ),
    ],
)
@pytest.mark.parametrize(
    "command", [pytest.param(["verify"], id="verify"), pytest.param(["once"], id="once")]
)
def test_bad_key_settings_are_config_errors_without_the_key(
    uploader_env: dict[str, str],
    tmp_path: Path,
    extra: dict[str, str],
    variables: list[str],
    command: list[str],
) -> None:
    key_file = tmp_path / "spool.key"
    key_file.write_text(KEY)
    env = {**uploader_env, **{k: str(key_file) if v == "KEYFILE" else v for k, v in extra.items()}}

    result = uploader(command, env, FakeImporter())

    assert result.exit_code != 0
    for variable in variables:
        assert variable in result.output
    assert KEY not in result.output and "short-key" not in result.output


def test_key_is_masked_in_logs(
    spool: Spool, files: SpoolFiles, uploader_env: dict[str, str]
) -> None:
    # Defence in depth: even a library logging the key by mistake never shows it.
    env = {**uploader_env, "SPOOL_SIGNING_KEY": KEY, "CONNECTOR_LOG_LEVEL": "info"}

    def leaky(work_name: str, bundle: bytes) -> None:
        logging.getLogger("some.library").warning("leaking %s", KEY)

    add_signed(files, SigningKey.from_secret(KEY), FEED_A)
    result = uploader(["once", "--max-wait", "10"], env, FakeImporter(behaviour=leaky))

    assert result.exit_code == 0, result.output
    assert "leaking ***" in result.stderr
    assert KEY not in result.output and KEY not in result.stderr
