"""``make test`` never reaches the operator's platform: their exported OPENCTI_URL/OPENCTI_TOKEN
turn on no test and reach none (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.standins.opencti import OpenCTIStandIn

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_operators_opencti_settings_reach_no_test() -> None:
    with OpenCTIStandIn() as platform:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PYTEST_", "CTX_LIVE_TEST_"))
        }
        env.update(
            OPENCTI_URL=platform.url,
            OPENCTI_TOKEN=platform.token,
            CONNECTOR_ID=str(uuid.uuid4()),
            OPENCTI_SSL_VERIFY="false",
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/uploader/test_opencti_live.py",
                "tests/uploader/test_cli_hygiene.py",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 skipped" in result.stdout, result.stdout
        assert platform.requests == []
        assert platform.registrations == []
        assert platform.auth_failures == 0
