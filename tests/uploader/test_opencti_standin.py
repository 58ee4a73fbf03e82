"""The OpenCTI stand-in itself, over raw HTTP: what it refuses and how it fails on purpose."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

from tests.standins.opencti import STANDIN_TOKEN, OpenCTIStandIn
from tests.standins.opencti_schema import RELEASE_VERSIONS

REGISTER = """mutation RegisterConnector($input: RegisterConnectorInput) {
  registerConnector(input: $input) { id connector_state config { push_exchange } connector_user_id }
}"""
PUSH = """mutation StixBundlePush($connectorId: String!, $bundle: String!, $work_id: String) {
  stixBundlePush(connectorId: $connectorId, bundle: $bundle, work_id: $work_id)
}"""
HEALTH = "query healthCheck { about { version } }"

# The shared fixtures; constants come from tests.standins.opencti so this module is imported
# by pytest as a plugin first (importing it directly would defeat assertion rewriting).
pytest_plugins = ["tests.standins.fixtures"]


def _post(
    standin: OpenCTIStandIn,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str = STANDIN_TOKEN,
) -> requests.Response:
    return requests.post(
        f"{standin.url}/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_health_check_reports_the_platform_version(opencti_standin: OpenCTIStandIn) -> None:
    answer = _post(opencti_standin, HEALTH)
    assert answer.status_code == 200
    # The version of the release whose schema it enforces (RELEASE_VERSIONS), unless told.
    expected = RELEASE_VERSIONS[opencti_standin.schema.release]
    assert answer.json() == {"data": {"about": {"version": expected}}}
    told = OpenCTIStandIn(STANDIN_TOKEN, platform_version="6.8", version="6.8.3").start()
    try:
        assert _post(told, HEALTH).json() == {"data": {"about": {"version": "6.8.3"}}}
    finally:
        told.stop()


def test_wrong_token_gets_auth_required_like_the_platform(opencti_standin: OpenCTIStandIn) -> None:
    answer = _post(opencti_standin, HEALTH, token="nope-nope")
    assert answer.status_code == 200
    [error] = answer.json()["errors"]
    assert error["extensions"]["code"] == "AUTH_REQUIRED"
    assert error["message"] == "You must be logged in to do this."


def test_unknown_operation_is_a_graphql_error(opencti_standin: OpenCTIStandIn) -> None:
    answer = _post(opencti_standin, "query Whatever { whatever { id } }")
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    # Recorded, so a stand-in stopped now would fail the test; this one was sent on purpose.
    assert [v.operation for v in opencti_standin.schema.violations] == ["Whatever"]
    opencti_standin.schema.violations.clear()


def test_push_needs_a_registered_connector_and_a_real_bundle(
    opencti_standin: OpenCTIStandIn,
) -> None:
    good = json.dumps(
        {"type": "bundle", "id": "bundle--1", "objects": [{"id": "x--1", "type": "x"}]}
    )
    refused = _post(opencti_standin, PUSH, {"connectorId": "c1", "bundle": good})
    assert refused.json()["errors"][0]["message"] == "Invalid bundle"

    _post(
        opencti_standin, REGISTER, {"input": {"id": "c1", "name": "n", "type": "EXTERNAL_IMPORT"}}
    )
    accepted = _post(opencti_standin, PUSH, {"connectorId": "c1", "bundle": good})
    assert accepted.json() == {"data": {"stixBundlePush": True}}
    empty = _post(
        opencti_standin, PUSH, {"connectorId": "c1", "bundle": '{"type": "bundle", "objects": []}'}
    )
    assert empty.json()["errors"][0]["extensions"]["data"]["cause"] == "Invalid stix bundle"

    assert [p.bundle["objects"][0]["id"] for p in opencti_standin.pushes] == ["x--1"]
    assert [r["cause"] for r in opencti_standin.rejected_pushes] == [
        "Invalid connector",
        "Invalid stix bundle",
    ]


def test_body_over_the_limit_gets_413(opencti_standin: OpenCTIStandIn) -> None:
    opencti_standin.max_body_bytes = 2048
    answer = _post(opencti_standin, PUSH, {"connectorId": "c1", "bundle": "x" * 4096})
    assert answer.status_code == 413


def test_faults_target_one_operation_a_number_of_times(opencti_standin: OpenCTIStandIn) -> None:
    opencti_standin.fail("healthCheck", status=503, times=2)
    registration = {"input": {"id": "c", "name": "c", "type": "EXTERNAL_IMPORT"}}
    assert _post(opencti_standin, REGISTER, registration).status_code == 200
    assert [_post(opencti_standin, HEALTH).status_code for _ in range(3)] == [503, 503, 200]

    opencti_standin.fail(graphql_error="boom", code="DATABASE_ERROR")
    assert _post(opencti_standin, HEALTH).json()["errors"][0]["message"] == "boom"

    opencti_standin.fail("healthCheck", drop=True)
    with pytest.raises(requests.ConnectionError):
        _post(opencti_standin, HEALTH)

    opencti_standin.slow(0.3, "healthCheck")
    started = time.monotonic()
    assert _post(opencti_standin, HEALTH).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_down_refuses_connections_and_up_serves_on_the_same_port(
    opencti_standin: OpenCTIStandIn,
) -> None:
    port = opencti_standin.port
    opencti_standin.go_down()
    with pytest.raises(requests.ConnectionError):
        _post(opencti_standin, HEALTH)
    opencti_standin.come_up()
    assert opencti_standin.port == port
    assert _post(opencti_standin, HEALTH).status_code == 200


def test_standalone_prints_its_url_and_serves(tmp_path: Any) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.opencti", "--port", "0", "--token", "demo-token"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        answer = requests.post(
            f"{url}/graphql",
            json={"query": HEALTH},
            headers={"Authorization": "Bearer demo-token"},
            timeout=10,
        )
        assert answer.json()["data"]["about"]["version"] in RELEASE_VERSIONS.values()
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
