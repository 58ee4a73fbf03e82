"""Secrets echoed back by the services never reach a log line, a reason or a receipt.

Every test of the suite is followed by the secrets guard (conftest); this one makes the platform
itself echo the token in its errors, the worst case for what ends up in logs and reason files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability import harness
from tests.reliability.harness import OPENCTI_TOKEN, Row, record
from tests.standins.opencti import OpenCTIStandIn


@pytest.mark.timeout(300)
def test_platform_errors_echoing_the_token(opencti: OpenCTIStandIn, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    expected = harness.fill_spool(spool_dir, feeds=2, per_feed=2, tag="secrets")
    # A transient error and then a refusal, both quoting the token back.
    opencti.fail("workAdd", times=2, graphql_error=f"Lock timeout for {OPENCTI_TOKEN}")
    opencti.fail(
        "StixBundlePush",
        times=1,
        graphql_error=f"Invalid bundle sent with token {OPENCTI_TOKEN}",
        code="UNSUPPORTED_ERROR",
    )
    proc = harness.uploader(
        ["once", "--max-wait", "60"],
        harness.uploader_env(opencti.url, spool_dir, "secrets"),
        tmp_path,
    )
    code = proc.wait(180)
    states = harness.states_of(spool_dir)
    reasons = [
        json.loads((spool_dir / "failed" / f"{rel}.reason").read_text()) for rel in states["failed"]
    ]
    scanned, leaks = harness.scan_for_secrets([("uploader", proc.text())], [spool_dir])
    record(
        Row(
            "OpenCTI errors echoing the token",
            1,
            3,
            len(expected),
            len(set(expected) - set(states["done"]) - set(states["failed"])),
            0,
            len(leaks),
            note=f"{scanned} logs/files scanned; failed wrongly = places the token appeared",
        )
    )
    assert leaks == []
    assert code == 1, proc.text()[-3000:]
    assert len(states["failed"]) == 1 and len(states["done"]) == len(expected) - 1
    assert reasons[0]["kind"] == "rejected" and "***" in reasons[0]["message"]
    assert "Lock timeout for ***" in proc.stderr
