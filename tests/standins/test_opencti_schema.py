"""The OpenCTI stand-in refuses what each platform release's schema refuses, and accepts pycti."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.standins.opencti import STANDIN_TOKEN, OpenCTIStandIn
from tests.standins.opencti_schema import (
    RELEASE_ENV,
    SchemaValidator,
    SchemaViolationError,
    available_releases,
    check_request,
    configured_release,
    load_schema,
    release_for_pycti,
)

# pycti_env, loaded the way the other OpenCTI tests load it.
pytest_plugins = ["tests.standins.fixtures"]

RELEASES = ["6.5", "6.8", "6.9", "7.x"]

WORK_QUERY = """query WorkQuery($id: ID!) { work(id: $id) { id name user { name } timestamp status
  event_source_id received_time processed_time completed_time completed_number
  tracking { import_expected_number import_processed_number }
  messages { timestamp message sequence source } errors { timestamp message sequence source } } }"""
PUSH = """mutation StixBundlePush($connectorId: String!, $bundle: String!, $work_id: String) {
  stixBundlePush(connectorId: $connectorId, bundle: $bundle, work_id: $work_id) }"""
REGISTER = """mutation RegisterConnector($input: RegisterConnectorInput) {
  registerConnector(input: $input) { id connector_state
  config { connection { host vhost use_ssl port user pass } listen listen_routing listen_exchange
  push push_routing push_exchange } connector_user_id } }"""
REGISTER_S3 = REGISTER.replace(
    "connection { host vhost use_ssl port user pass }",
    "connection { host vhost use_ssl port user pass } s3 { endpoint port bucket_name }",
)
REGISTER_JWKS = REGISTER.replace("connector_state", "connector_state jwks")
WORK_ADD = """mutation workAdd($connectorId: String!, $friendlyName: String) {
  workAdd(connectorId: $connectorId, friendlyName: $friendlyName) { id } }"""
WORK_ADD_MULTIPART = """mutation workAdd($connectorId: String!, $friendlyName: String, $isMultiPartWork: Boolean) {
  workAdd(connectorId: $connectorId, friendlyName: $friendlyName, isMultiPartWork: $isMultiPartWork) { id } }"""
# pycti's connector read (check_connector_buffering), ping and works listing, word for word.
QUEUE = """query GetConnector($id: String!) { connector(id: $id) { id name active auto
  only_contextual connector_type connector_scope connector_state
  connector_queue_details { messages_number messages_size } updated_at created_at
  config { listen listen_exchange push push_exchange push_routing } built_in } }"""
PING = """mutation PingConnector($id: ID!, $state: String, $connectorInfo: ConnectorInfoInput ) {
  pingConnector(id: $id, state: $state, connectorInfo: $connectorInfo) { id connector_state
  connector_info { run_and_terminate buffering queue_threshold queue_messages_size
  next_run_datetime last_run_datetime } } }"""
WORKS = """query ConnectorWorksQuery( $count: Int $orderBy: WorksOrdering $orderMode: OrderingMode
  $filters: FilterGroup ) { works( first: $count orderBy: $orderBy orderMode: $orderMode
  filters: $filters ) { edges { node { id name status
  tracking { import_expected_number import_processed_number } errors { message } } } } }"""
CONNECTOR_INFO = {
    "run_and_terminate": False,
    "buffering": False,
    "queue_threshold": 500.0,
    "queue_messages_size": 0.0,
    "next_run_datetime": None,
    "last_run_datetime": None,
}
WORKS_FILTER = {
    "mode": "and",
    "filters": [{"key": ["connector_id"], "values": ["c"]}],
    "filterGroups": [],
}
TO_PROCESSED = """mutation workToProcessed($id: ID!, $message: String, $inError: Boolean) {
  workEdit(id: $id) { toProcessed(message: $message, inError: $inError) } }"""
REPORT = """mutation reportExpectation($id: ID!, $error: WorkErrorInput) {
  workEdit(id: $id) { reportExpectation(error: $error) } }"""

REGISTER_INPUT = {"id": "c1", "name": "uploader", "type": "EXTERNAL_IMPORT", "scope": ["x"]}


def _check(release: str, query: str, variables: dict[str, Any] | None = None) -> Any:
    return check_request(load_schema(release), query, variables)


def test_every_release_has_a_stored_schema() -> None:
    assert set(RELEASES) <= set(available_releases())


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize(
    ("query", "variables"),
    [
        pytest.param("query healthCheck { about { version } }", {}, id="about"),
        pytest.param(REGISTER, {"input": REGISTER_INPUT}, id="register"),
        pytest.param(WORK_ADD, {"connectorId": "c", "friendlyName": "f"}, id="work-add"),
        pytest.param(WORK_QUERY, {"id": "w1"}, id="work"),
        pytest.param(PUSH, {"connectorId": "c", "bundle": "{}", "work_id": None}, id="push"),
        pytest.param(TO_PROCESSED, {"id": "w", "message": "m", "inError": False}, id="processed"),
        pytest.param(REPORT, {"id": "w", "error": {"error": "e", "source": "s"}}, id="expectation"),
        pytest.param(QUEUE, {"id": "c"}, id="queue-details"),
        pytest.param(PING, {"id": "c", "state": "{}", "connectorInfo": CONNECTOR_INFO}, id="ping"),
        pytest.param(WORKS, {"count": 50, "filters": WORKS_FILTER}, id="works"),
    ],
)
def test_the_connector_path_validates_on_every_release(
    release: str, query: str, variables: dict[str, Any]
) -> None:
    assert _check(release, query, variables) is None


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize(
    ("query", "variables", "code", "needle"),
    [
        pytest.param(
            "query { about { version colour } }",
            {},
            "GRAPHQL_VALIDATION_FAILED",
            "colour",
            id="unknown-field",
        ),
        pytest.param(
            PUSH.replace("work_id: $work_id)", "work_id: $work_id, draft: true)"),
            {"connectorId": "c", "bundle": "{}"},
            "GRAPHQL_VALIDATION_FAILED",
            "draft",
            id="unknown-argument",
        ),
        pytest.param(
            "query { work(id: 1.5) { id } }",
            {},
            "GRAPHQL_VALIDATION_FAILED",
            "ID",
            id="wrong-argument-type",
        ),
        pytest.param(WORK_QUERY, {}, "BAD_USER_INPUT", "$id", id="missing-variable"),
        pytest.param(
            REGISTER,
            {"input": {**REGISTER_INPUT, "colour": "red"}},
            "BAD_USER_INPUT",
            "colour",
            id="unknown-input-field",
        ),
        pytest.param("query { about { version }", {}, "GRAPHQL_PARSE_FAILED", "", id="syntax"),
    ],
)
def test_invalid_documents_are_refused_on_every_release(
    release: str, query: str, variables: dict[str, Any], code: str, needle: str
) -> None:
    problem = _check(release, query, variables)
    assert problem is not None
    assert problem[0] == code
    assert needle in " ".join(problem[1])


# What the newer pycti versions send and the older platforms do not have (pycti 6.9.29 selects
# config.s3; pycti 7.261026.0 selects jwks, passes isMultiPartWork, version and slug).
@pytest.mark.parametrize(
    ("query", "variables", "accepted_by"),
    [
        pytest.param(REGISTER_S3, {"input": REGISTER_INPUT}, {"6.9", "7.x"}, id="config.s3"),
        pytest.param(REGISTER_JWKS, {"input": REGISTER_INPUT}, {"6.9", "7.x"}, id="jwks"),
        pytest.param(
            WORK_ADD_MULTIPART,
            {"connectorId": "c", "friendlyName": "f", "isMultiPartWork": True},
            {"6.9", "7.x"},
            id="isMultiPartWork",
        ),
        pytest.param(
            REGISTER,
            {"input": {**REGISTER_INPUT, "version": None, "slug": None}},
            {"7.x"},
            id="version-slug",
        ),
    ],
)
def test_newer_arguments_and_fields_only_validate_where_the_release_has_them(
    query: str, variables: dict[str, Any], accepted_by: set[str]
) -> None:
    accepted = {release for release in RELEASES if _check(release, query, variables) is None}
    assert accepted == accepted_by


@pytest.mark.parametrize(
    ("version", "release"),
    [("6.5.10", "6.5"), ("6.8.17", "6.8"), ("6.9.29", "6.9"), ("7.261026.0", "7.x")],
)
def test_pycti_versions_map_to_their_platform_release(version: str, release: str) -> None:
    assert release_for_pycti(version) == release


def test_the_environment_chooses_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RELEASE_ENV, "6.9")
    assert configured_release() == "6.9"
    validator = SchemaValidator.for_release()
    assert (validator.release, validator.strict) == ("6.9", True)
    with pytest.raises(ValueError, match="no OpenCTI schema stored"):
        SchemaValidator.for_release("5.12")


@pytest.fixture(params=RELEASES)
def strict_standin(request: pytest.FixtureRequest) -> Iterator[OpenCTIStandIn]:
    standin = OpenCTIStandIn(STANDIN_TOKEN, platform_version=request.param).start()
    try:
        yield standin
    finally:
        standin.go_down()


def _post(standin: OpenCTIStandIn, query: str, variables: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{standin.url}/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {STANDIN_TOKEN}"},
        timeout=10,
    )


def test_the_standin_refuses_an_invalid_document_and_fails_at_stop(
    strict_standin: OpenCTIStandIn,
) -> None:
    ok = _post(strict_standin, "query healthCheck { about { version } }", {})
    assert ok.status_code == 200
    assert "errors" not in ok.json()

    refused = _post(strict_standin, "query healthCheck { about { version build } }", {})
    assert refused.status_code == 400
    [error] = refused.json()["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "build" in error["message"]
    [violation] = strict_standin.schema.violations
    assert violation.operation == "healthCheck"

    with pytest.raises(SchemaViolationError, match="healthCheck"):
        strict_standin.stop()


def test_the_installed_pycti_validates_against_its_own_release(
    pycti_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pycti's own documents (start-up, work, push, ping, work status) are valid for its release.

    If this fails, the stored schema subset of that release is wrong, not pycti.
    """
    pycti = pytest.importorskip("pycti")
    release = configured_release()
    standin = OpenCTIStandIn(STANDIN_TOKEN, platform_version=release).start()
    try:
        helper = pycti.OpenCTIConnectorHelper(
            {
                "opencti": {"url": standin.url, "token": STANDIN_TOKEN},
                "connector": {
                    "id": str(uuid.uuid4()),
                    "type": "EXTERNAL_IMPORT",
                    "name": "schema check",
                    "scope": "schema",
                    "log_level": "error",
                    "run_and_terminate": True,
                    "queue_protocol": "api",
                },
            }
        )
        work_id = helper.api.work.initiate_work(helper.connect_id, "schema check")
        identity = {
            "type": "identity",
            "spec_version": "2.1",
            "id": f"identity--{uuid.uuid4()}",
            "created": "2026-01-01T00:00:00.000Z",
            "modified": "2026-01-01T00:00:00.000Z",
            "name": "schema check",
        }
        bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [identity]}
        helper.send_stix2_bundle(json.dumps(bundle), work_id=work_id)
        helper.api.work.report_expectation(work_id, {"error": "e", "source": "s"})
        helper.api.work.to_processed(work_id, "done")
        helper.api.connector.ping(helper.connect_id, {}, None)
        assert helper.api.work.get_work(work_id)["id"] == work_id
    finally:
        standin.go_down()
    operations = set(standin.operations())
    assert {"RegisterConnector", "workAdd", "StixBundlePush", "WorkQuery"} <= operations
    assert standin.schema.violations == []
