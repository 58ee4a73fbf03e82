"""``ctx-uploader once`` with ``OPENCTI_JSON_LOGGING=true``: every stderr line is one JSON object,
also after pycti has taken over the root logger while the connector helper was built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shared.layout import Spool, walk_bundles
from tests.standins.opencti import OpenCTIStandIn
from tests.uploader.conftest import FEED_A, FEED_B, SpoolFiles

pytest_plugins = ["tests.standins.fixtures"]

UPLOADER = Path(sys.executable).with_name("ctx-uploader")
pytestmark = pytest.mark.skipif(not UPLOADER.exists(), reason="ctx-uploader is not installed")


def test_once_writes_one_json_object_per_stderr_line(
    spool: Spool, files: SpoolFiles, opencti_standin: OpenCTIStandIn, tmp_path: Path
) -> None:
    paths = [
        files.add(feed, data=files.bundle_bytes(f"{feed}-{i}"))
        for feed in (FEED_A, FEED_B)
        for i in range(2)
    ]
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENCTI_", "CONNECTOR_", "MQ_", "UPLOADER_", "SPOOL_"))
    }
    env = {
        **base,
        "SPOOL_DIR": str(spool.root),
        "OPENCTI_URL": opencti_standin.url,
        "OPENCTI_TOKEN": opencti_standin.token,
        "OPENCTI_JSON_LOGGING": "true",
        "CONNECTOR_ID": str(uuid.uuid4()),
        "CONNECTOR_LOG_LEVEL": "debug",
        "UPLOADER_INSTANCE_ID": "json",
    }
    proc = subprocess.run(
        [str(UPLOADER), "once", "--max-wait", "60"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert records
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), record
    # Lines from after the helper was built (pycti's basicConfig(force=True)) are JSON too.
    registered = [
        i for i, r in enumerate(records) if r["message"] == "connector registered with OpenCTI"
    ]
    assert registered and registered[0] < len(records) - 1
    assert opencti_standin.token not in proc.stderr + proc.stdout
    assert len(list(walk_bundles(spool.done))) == len(paths)
