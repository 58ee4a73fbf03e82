"""A platform that refuses the uploader's set-up stops ``once``/``watch`` at once with one line:
a pycti newer than the platform, a refused OPENCTI_TOKEN, a user without CONNECTORAPI; ``check``
prints both versions; pycti's per-file INFO lines show only at DEBUG. The real ``ctx-uploader``
and the real installed pycti against the OpenCTI stand-in."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import requests

from shared.layout import Spool, walk_bundles
from tests.standins.opencti import STANDIN_TOKEN, OpenCTIStandIn
from tests.standins.opencti_schema import RELEASE_VERSIONS, release_for_pycti
from tests.uploader.conftest import UPLOADER, SpoolFiles, invoke
from uploader.commands.loading import EXIT_PENDING
from uploader.errors import (
    PermanentImportError,
    PlatformAuthError,
    PyctiMismatchError,
    TransientImportError,
)
from uploader.importing.classify import PATTERNS, classify, verdict
from uploader.importing.refusals import mismatch, pycti_install
from uploader.importing.registration import pycti_too_new

pytest_plugins = ["tests.standins.fixtures"]

pytestmark = pytest.mark.skipif(not UPLOADER.exists(), reason="ctx-uploader is not installed")

PYCTI = importlib.metadata.version("pycti")
# A stored platform release older than the installed pycti's (pycti 7 → 6.8, 6.9 → 6.8, 6.8 → 6.5).
_OLDER = {"7.x": "6.8", "6.9": "6.8", "6.8": "6.5"}.get(release_for_pycti(PYCTI))


def _pending(spool: Spool) -> list[str]:
    return [entry.relative.as_posix() for entry in walk_bundles(spool.incoming)]


def _uploader(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``ctx-uploader`` run to its end (within 30 s), its whole stdout and stderr kept."""
    return subprocess.run(
        [str(UPLOADER), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )


def _errors(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, stderr
    return lines


@pytest.fixture
def older_platform() -> Iterator[OpenCTIStandIn]:
    """A platform whose schema is a release older than the installed pycti's, saying its version."""
    if _OLDER is None:
        pytest.skip(f"no stored platform release older than pycti {PYCTI}")
    with OpenCTIStandIn(STANDIN_TOKEN, platform_version=_OLDER) as standin:
        yield standin


@pytest.mark.parametrize("command", ["once", "watch", "check"])
def test_pycti_newer_than_the_platform_stops_with_both_versions_and_the_command(
    files: SpoolFiles,
    spool: Spool,
    older_platform: OpenCTIStandIn,
    uploader_env: dict[str, str],
    tmp_path: Path,
    command: str,
) -> None:
    path = files.add()
    env = {**uploader_env, "OPENCTI_URL": older_platform.url}
    started = time.monotonic()

    done = _uploader([command], env, tmp_path)

    assert time.monotonic() - started < 30
    assert done.returncode == click.ClickException.exit_code, done.stderr
    [line] = _errors(done.stderr)
    platform = RELEASE_VERSIONS[older_platform.schema.release]
    assert f"pycti {PYCTI}" in line and f"OpenCTI {platform}" in line, line
    major, minor = platform.split(".")[:2]
    assert f"pip install 'pycti=={major}.{minor}.*'" in line, line
    assert "Traceback" not in done.stderr
    # No retry, nothing the older schema refuses: one version query, no registration.
    assert older_platform.operations() == ["healthCheck"]
    assert older_platform.schema.violations == []
    assert _pending(spool) == [files.rel(path)]


def test_after_such_a_stop_health_says_why(
    files: SpoolFiles,
    older_platform: OpenCTIStandIn,
    uploader_env: dict[str, str],
    tmp_path: Path,
) -> None:
    files.add()
    env = {**uploader_env, "OPENCTI_URL": older_platform.url}
    [stopped] = _errors(_uploader(["watch"], env, tmp_path).stderr)

    health = _uploader(["health"], env, tmp_path)

    assert health.returncode != 0
    [line] = _errors(health.stderr)
    assert "stopped at" in line and stopped.removeprefix("Error: ") in line, line


def test_a_registration_the_schema_refuses_names_the_field_when_the_version_is_unknown(
    files: SpoolFiles,
    spool: Spool,
    uploader_env: dict[str, str],
    tmp_path: Path,
) -> None:
    if release_for_pycti(PYCTI) not in ("6.9", "7.x"):
        # The 6.5 schema subset is the 6.8 copy: pycti 6.8 registers there.
        pytest.skip(f"pycti {PYCTI} asks nothing an older stored schema lacks")
    files.add()
    # A platform version that does not read as numbers (a development build): registration goes
    # ahead and the older schema refuses what this pycti asks.
    with OpenCTIStandIn(STANDIN_TOKEN, platform_version=_OLDER, version="dev") as standin:
        env = {**uploader_env, "OPENCTI_URL": standin.url}
        done = _uploader(["once"], env, tmp_path)
        refused = [v.operation for v in standin.schema.violations]
        standin.schema.violations.clear()  # refused on purpose: not a stand-in failure

    stderr = done.stderr
    assert done.returncode == click.ClickException.exit_code, stderr
    [line] = _errors(stderr)
    assert f"pycti {PYCTI} does not fit OpenCTI dev" in line, line
    assert "pip install 'pycti==" in line
    assert refused == ["RegisterConnector"]  # once: never retried
    assert "Traceback" not in stderr


@pytest.mark.parametrize("command", ["once", "watch"])
def test_a_wrong_token_stops_at_once_naming_opencti_token(
    files: SpoolFiles,
    spool: Spool,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    tmp_path: Path,
    command: str,
) -> None:
    path = files.add()
    env = {**uploader_env, "OPENCTI_TOKEN": "wrong-token-0000"}
    started = time.monotonic()

    args = [command, "--max-wait", "300"] if command == "once" else [command]
    done = _uploader(args, env, tmp_path)

    assert time.monotonic() - started < 30
    assert done.returncode == EXIT_PENDING, done.stderr
    [line] = _errors(done.stderr)
    # pycti 7 passes the platform's code on (AUTH_REQUIRED), 6.x its message.
    assert "OPENCTI_TOKEN" in line and "logged in" in line, line
    assert "Traceback" not in done.stderr
    assert "wrong-token-0000" not in done.stderr + done.stdout
    assert opencti_standin.auth_failures == 1
    assert not opencti_standin.registrations
    assert _pending(spool) == [files.rel(path)]


def test_a_user_without_connectorapi_stops_at_once_naming_the_capability(
    files: SpoolFiles,
    spool: Spool,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    tmp_path: Path,
) -> None:
    files.add()
    # registerConnector is @auth(for: [CONNECTORAPI]): the platform's ForbiddenAccess.
    opencti_standin.fail(
        "RegisterConnector",
        graphql_error="You are not allowed to do this.",
        code="FORBIDDEN_ACCESS",
        times=50,
    )

    done = _uploader(["once"], uploader_env, tmp_path)
    stderr = done.stderr

    assert done.returncode == EXIT_PENDING, stderr
    [line] = _errors(stderr)
    assert "OPENCTI_TOKEN" in line and "CONNECTORAPI" in line, line
    assert "Traceback" not in stderr
    assert opencti_standin.operations().count("RegisterConnector") == 0  # refused by the fault
    assert len(_pending(spool)) == 1


def test_a_token_refused_after_an_outage_stops_the_run(
    files: SpoolFiles,
    spool: Spool,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
) -> None:
    files.add()
    opencti_standin.go_down()
    opencti_standin.token = "another-token-of-the-platform"
    uploader = launch(["once", "--max-wait", "300"], uploader_env)
    try:
        assert uploader.wait_for_line("retrying in"), uploader.stderr
    finally:
        opencti_standin.come_up()
    started = time.monotonic()

    # The last line first: finish() reads the rest of stderr itself.
    assert uploader.wait_for_line("Error: OpenCTI refused OPENCTI_TOKEN", timeout=15), (
        uploader.stderr
    )
    code, _ = uploader.finish(timeout=30)

    assert time.monotonic() - started < 15
    assert code == EXIT_PENDING, uploader.stderr
    [line] = _errors(uploader.stderr)
    assert "OPENCTI_TOKEN" in line
    assert "Traceback" not in uploader.stderr
    assert len(_pending(spool)) == 1


def test_check_prints_both_versions_when_they_match(
    opencti_standin: OpenCTIStandIn, env: dict[str, str]
) -> None:
    result = invoke(
        ["check"], {**env, "OPENCTI_URL": opencti_standin.url, "OPENCTI_TOKEN": STANDIN_TOKEN}
    )

    assert result.exit_code == 0, result.output
    assert f"OpenCTI {opencti_standin.version} at {opencti_standin.url}" in result.output
    assert f"pycti {PYCTI} match" in result.output
    assert opencti_standin.registrations
    assert not opencti_standin.deleted_connectors


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_pycti_lines_per_file_only_at_debug(
    files: SpoolFiles,
    spool: Spool,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    tmp_path: Path,
    level: str,
    shown: bool,
) -> None:
    for _ in range(2):
        files.add()
    env = {**uploader_env, "CONNECTOR_LOG_LEVEL": level, "OPENCTI_JSON_LOGGING": "false"}

    done = _uploader(["once", "--max-wait", "60"], env, tmp_path)
    stderr = done.stderr

    assert done.returncode == 0, stderr
    # pycti's loggers: "api" (OpenCTIApiClient) and the connector's name (the helper's).
    pycti_line = re.compile(r" (INFO|DEBUG) (api|admin|Cyber Threat Exchange \(spool\)) ")
    pycti_info = [line for line in stderr.splitlines() if re.search(r" INFO (api|admin) ", line)]
    assert pycti_info == []
    assert any(pycti_line.search(line) for line in stderr.splitlines()) is shown, stderr
    # Our own line per file stays at INFO.
    assert len([line for line in stderr.splitlines() if " INFO uploader." in line]) >= 2


@pytest.mark.parametrize(
    ("pycti", "platform", "too_new"),
    [
        pytest.param("7.261026.0", "6.8.17", True, id="7-on-6.8"),
        pytest.param("6.9.29", "6.8.17", True, id="6.9-on-6.8"),
        pytest.param("7.261026.0", "7.260910.0", True, id="newer-7-date"),
        pytest.param("6.8.17", "6.8.3", False, id="same-minor-newer-patch"),
        pytest.param("6.5.10", "7.260910.0", False, id="older-pycti"),
        pytest.param("7.260910.0", "7.261026.0", False, id="older-7-date"),
        pytest.param("7.261026.0", "dev", False, id="unreadable"),
    ],
)
def test_pycti_too_new(pycti: str, platform: str, too_new: bool) -> None:
    assert pycti_too_new(pycti, platform) is too_new


def test_install_commands() -> None:
    assert pycti_install("6.8.17") == "pip install 'pycti==6.8.*'"
    assert pycti_install("7.260910.0") == "pip install 'pycti==7.260910.*'"
    assert pycti_install("dev") is None
    assert mismatch(None).install is None


@pytest.mark.parametrize(
    ("raised", "kind"),
    [
        pytest.param(
            ValueError(
                '{"errors":[{"message":"Cannot query field \\"jwks\\" on type \\"Connector\\".",'
                '"extensions":{"code":"GRAPHQL_VALIDATION_FAILED"}}]}'
            ),
            PyctiMismatchError,
            id="400-validation",
        ),
        pytest.param(
            ValueError(
                '{"errors":[{"message":"Variable \\"$input\\" got invalid value; Field \\"slug\\" '
                'is not defined by type \\"RegisterConnectorInput\\".","extensions":'
                '{"code":"BAD_USER_INPUT"}}]}'
            ),
            PyctiMismatchError,
            id="400-unknown-input-field",
        ),
        pytest.param(
            ValueError(
                {"name": "AUTH_REQUIRED", "error_message": "You must be logged in to do this."}
            ),
            PlatformAuthError,
            id="auth-required",
        ),
        pytest.param(
            ValueError("<html><title>401 Authorization Required</title></html>"),
            PlatformAuthError,
            id="401-page",
        ),
        pytest.param(
            ValueError(
                {
                    "name": "UNSUPPORTED_ERROR",
                    "error_message": "Invalid bundle",
                    "cause": "Invalid connector",
                }
            ),
            TransientImportError,
            id="invalid-connector-not-final",
        ),
        pytest.param(requests.ConnectionError("refused"), TransientImportError, id="refused"),
        pytest.param(ValueError("<html>502 Bad Gateway</html>"), TransientImportError, id="502"),
    ],
)
def test_classify_config_refusals(raised: Exception, kind: type[Exception]) -> None:
    failure = classify(raised, None, "tok-en-1234")
    assert type(failure) is kind, failure


@pytest.mark.parametrize(
    ("raised", "kind"),
    [
        pytest.param(
            ValueError({"name": "", "error_message": "Invalid bundle: blockchain wallet report"}),
            PermanentImportError,
            id="blockchain-is-no-lock",
        ),
        pytest.param(
            ValueError({"name": "", "error_message": "Invalid bundle: unlocked mutex report"}),
            PermanentImportError,
            id="unlocked-is-no-lock",
        ),
        pytest.param(
            ValueError({"name": "", "error_message": "Invalid bundle: Lock timeout"}),
            TransientImportError,
            id="a-lock-is-one",
        ),
        pytest.param(
            ValueError("<html><title>403 Forbiddenness test</title></html>"),
            TransientImportError,
            id="a-word-that-starts-like-forbidden-is-not-an-auth-refusal",
        ),
    ],
)
def test_patterns_match_whole_words(raised: Exception, kind: type[Exception]) -> None:
    failure = classify(raised, None, "tok-en-1234")
    assert type(failure) is kind, failure


def test_a_message_merely_containing_block_is_not_a_lock_error() -> None:
    assert verdict("blockchain") is None
    assert verdict("Lock timeout") == "transient"


def test_every_pattern_names_the_pycti_function_that_raises_its_text() -> None:
    for row in PATTERNS:
        assert row.raised_by.startswith("pycti/") and "()" in row.raised_by, row
