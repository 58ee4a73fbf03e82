"""`make standins` (``python -m tests.demo --serve``): starts, prints the exports, and they answer."""

from __future__ import annotations

import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = {
    "CYBERTHREATEXCHANGE_BASE_URL",
    "CYBERTHREATEXCHANGE_API_KEY",
    "CYBERTHREATEXCHANGE_FEED_IDS",
    "OPENCTI_URL",
    "OPENCTI_TOKEN",
    "CONNECTOR_ID",
    "SPOOL_DIR",
}


def _read_exports(lines: queue.Queue[str | None], timeout: float) -> dict[str, str]:
    exports: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while not exports.keys() >= EXPORTS:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        assert line is not None, f"the command ended before printing {EXPORTS - exports.keys()}"
        match = re.match(r"^export (\w+)=(.*)$", line)
        if match:
            (exports[match.group(1)],) = shlex.split(match.group(2))
    return exports


def test_standins_command_prints_exports_that_answer(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    lines: queue.Queue[str | None] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-m", "tests.demo", "--serve", "--spool", str(spool)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            exports = _read_exports(lines, timeout=60)
            assert exports["SPOOL_DIR"] == str(spool)
            feeds = requests.get(
                f"{exports['CYBERTHREATEXCHANGE_BASE_URL']}v1/subscriptions/",
                headers={"API-KEY": exports["CYBERTHREATEXCHANGE_API_KEY"]},
                timeout=10,
            )
            assert feeds.status_code == 200
            for feed_id in exports["CYBERTHREATEXCHANGE_FEED_IDS"].split(","):
                assert feed_id in feeds.text
            about = requests.post(
                f"{exports['OPENCTI_URL']}/graphql",
                json={"query": "query healthCheck { about { version } }"},  # pycti's health check
                headers={"Authorization": f"Bearer {exports['OPENCTI_TOKEN']}"},
                timeout=10,
            )
            assert about.status_code == 200
            assert about.json()["data"]["about"]["version"]
        finally:
            proc.terminate()
            returncode = proc.wait(timeout=30)
            reader.join(timeout=10)
    assert returncode == 0
