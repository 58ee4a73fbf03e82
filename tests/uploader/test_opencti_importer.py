"""PyctiImporter with the real pycti helper against the OpenCTI stand-in."""

from __future__ import annotations

import inspect
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pycti.api.opencti_api_work import OpenCTIApiWork
from pycti.utils.opencti_stix2_splitter import is_id_supported

from tests.standins.opencti import STANDIN_TOKEN, OpenCTIStandIn
from tests.standins.proxy import ForwardProxy
from uploader.errors import (
    BundleRejected,
    PermanentImportError,
    PlatformAuthError,
    TransientImportError,
)
from uploader.importing.chunking import Bundle, pushed_size_of, read_bundle
from uploader.importing.classify import classify
from uploader.importing.opencti import PyctiImporter

# The shared fixtures; constants come from tests.standins.opencti so this module is imported
# by pytest as a plugin first (importing it directly would defeat assertion rewriting).
pytest_plugins = ["tests.standins.fixtures"]


def _identity(name: str, pad: int = 0) -> dict[str, Any]:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": f"identity--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "name": name,
        "identity_class": "organization",
        "description": "x" * pad,
    }


def _bundle(objects: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
    ).encode()


def _checked(data: bytes, max_push_bytes: int = 50 * 1024 * 1024) -> Bundle:
    """The file's one check, as the pipeline makes it before the import."""
    return read_bundle(data, max_push_bytes)


def split_bundle(data: bytes, max_push_bytes: int) -> tuple[Any, int]:
    """The pushes a file makes (pycti's own importability test), and its object count."""
    bundle = read_bundle(data, max_push_bytes)
    return bundle.pushes(is_id_supported), bundle.objects


def _report_bundle(n: int = 3, pad: int = 0) -> tuple[bytes, list[dict[str, Any]]]:
    identities = [_identity(f"org {i}", pad) for i in range(n)]
    report = {
        "type": "report",
        "spec_version": "2.1",
        "id": f"report--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "name": "a report",
        "published": "2026-01-01T00:00:00.000Z",
        "object_refs": [i["id"] for i in identities],
    }
    objects = [report, *identities]
    return _bundle(objects), objects


def test_registration_shows_the_connector(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    pycti_importer.connect()

    [registration] = opencti_standin.registrations
    assert registration["type"] == "EXTERNAL_IMPORT"
    assert registration["id"] == pycti_importer.connector_id
    assert registration["name"] == "Cyber Threat Exchange (spool)"
    assert registration["scope"] == ["cyberthreatexchange"]  # pycti splits the scope on commas
    assert opencti_standin.wait_for(lambda: len(opencti_standin.pings) >= 1)
    ops = opencti_standin.operations()
    assert ops[: ops.index("RegisterConnector") + 1][-1] == "RegisterConnector"
    assert "healthCheck" in ops[: ops.index("RegisterConnector")]


def test_one_import_is_one_work_with_exactly_the_bundles_objects(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    data, objects = _report_bundle(3)

    receipt = pycti_importer.import_bundle("feed F / report R", _checked(data))

    assert receipt.connector_id == pycti_importer.connector_id
    assert (receipt.pushes, receipt.objects) == (1, 4)
    [work] = opencti_standin.works.values()
    assert work.id == receipt.work_id
    assert work.name == "feed F / report R"
    assert work.processed and not work.in_error
    [push] = opencti_standin.pushes
    assert push.work_id == receipt.work_id
    assert push.connector_id == pycti_importer.connector_id
    assert push.bundle == json.loads(data)
    assert sorted(json.dumps(o, sort_keys=True) for o in opencti_standin.objects()) == sorted(
        json.dumps(o, sort_keys=True) for o in objects
    )
    ops = [op for op in opencti_standin.operations() if op not in ("healthCheck", "PingConnector")]
    # The queue-size look (GetConnector) comes before the first push, then every few seconds.
    assert ops == [
        "RegisterConnector",
        "GetConnector",
        "workAdd",
        "StixBundlePush",
        "workToProcessed",
    ]


def test_oversized_bundle_is_split_under_one_work_and_nothing_is_dropped(
    pycti_env: None, opencti_standin: OpenCTIStandIn, make_settings: Callable[..., Any]
) -> None:
    limit = 16 * 1024
    opencti_standin.max_body_bytes = limit  # the platform's body limit: every push must fit
    data, objects = _report_bundle(60, pad=400)
    assert len(data) > 2 * limit
    with PyctiImporter(make_settings(opencti_standin, max_push_bytes=limit)) as importer:
        receipt = importer.import_bundle("big", _checked(data, limit))

    pushes = opencti_standin.pushes_for(receipt.work_id)
    assert receipt.pushes == len(pushes) > 2
    assert len(opencti_standin.works) == 1
    assert all(p.size < limit for p in pushes)
    assert all(set(p.bundle) == {"type", "id", "objects"} for p in pushes)
    assert all(p.bundle["type"] == "bundle" and p.bundle["objects"] for p in pushes)
    received = [o["id"] for o in opencti_standin.objects()]
    assert sorted(received) == sorted(o["id"] for o in objects)  # each once, none dropped
    assert received[-1].startswith("report--")  # containers after what they refer to
    assert not opencti_standin.rejected_pushes
    # A work that gets several bundles is multi-part where pycti can say so (7.x): the platform
    # then completes it only after toProcessed, not when the first push's expectations are met.
    [work_add] = [v for op, v in opencti_standin.requests if op == "workAdd"]
    if "is_multipart" in inspect.signature(OpenCTIApiWork.initiate_work).parameters:
        assert work_add["isMultiPartWork"] is True
    else:
        assert "isMultiPartWork" not in work_add


def test_a_file_in_one_push_is_not_a_multi_part_work(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    pycti_importer.import_bundle("small", _checked(_report_bundle()[0]))

    [work_add] = [v for op, v in opencti_standin.requests if op == "workAdd"]
    assert work_add.get("isMultiPartWork") in (None, False)


def test_split_refuses_a_single_object_over_the_limit() -> None:
    data, _ = _report_bundle(1, pad=5000)
    with pytest.raises(PermanentImportError, match="over UPLOADER_MAX_PUSH_BYTES"):
        split_bundle(data, 4096 + 1024)


def _extension_definition(pad: int = 0) -> dict[str, Any]:
    return {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": f"extension-definition--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "created_by_ref": f"identity--{uuid.uuid4()}",
        "name": "cryptocurrency-wallet",
        "schema": "https://example.invalid/schema.json" + "#" * pad,
        "version": "1.0",
        "extension_types": ["new-sco"],
    }


def test_a_file_with_nothing_importable_is_one_processed_work_without_a_push(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    # A feed-level file can hold only extension definitions, which OpenCTI does not import:
    # pycti would raise "Nothing to import" and the file would be failed for nothing.
    data = _bundle([_extension_definition(), _extension_definition()])

    receipt = pycti_importer.import_bundle("feed F / objects", _checked(data))

    assert (receipt.pushes, receipt.objects) == (0, 2)
    [work] = opencti_standin.works.values()
    assert work.id == receipt.work_id
    assert work.processed and not work.in_error
    assert opencti_standin.pushes == []


def test_split_never_sends_a_chunk_with_nothing_importable() -> None:
    identity = _identity("the only importable object")
    definitions = [_extension_definition(pad=1500) for _ in range(8)]
    data = _bundle([*definitions, identity])

    chunks, count = split_bundle(data, 4096 + 8000)

    assert count == 9
    kinds = [{o["type"] for o in json.loads(c)["objects"]} for c in chunks]
    assert all("identity" in k or k - {"extension-definition"} for k in kinds), kinds
    assert sum("identity" in k for k in kinds) == 1


def test_split_cuts_the_files_own_bytes_into_chunks_under_the_limit() -> None:
    # Pretty-printed, non-ASCII text and escapes: each chunk holds the objects exactly as they are
    # written in the file (whitespace included), nothing re-serialised, none lost or repeated.
    data, _ = _report_bundle(12, pad=700)
    parsed = json.loads(data)
    for obj in parsed["objects"][1:]:
        obj["name"] = 'Société 🛰 \u20ac "q"\t'
    data = json.dumps(parsed, ensure_ascii=False, indent=3).encode()
    limit = 4096 + 3000

    chunks, count = split_bundle(data, limit)

    assert count == 13 and len(chunks) > 3
    received = [o for chunk in chunks for o in json.loads(chunk)["objects"]]
    assert sorted(received, key=lambda o: o["id"]) == sorted(
        parsed["objects"], key=lambda o: o["id"]
    )
    assert received[-1]["type"] == "report"  # containers after what they refer to
    assert all(pushed_size_of(chunk) + 4096 <= limit for chunk in chunks)
    assert all(b"\n" in chunk for chunk in chunks)  # the file's own indentation
    assert list(chunks) == [chunks[i] for i in range(len(chunks))] == chunks[:]
    ids = [json.loads(chunk)["id"] for chunk in chunks]
    assert len(set(ids)) == len(ids)
    assert ids == [json.loads(chunk)["id"] for chunk in split_bundle(data, limit)[0]]


def test_split_of_a_file_the_streaming_reader_leaves_to_the_parser() -> None:
    # Two "objects" keys: what counts is what json.loads (the platform too) reads, the last one.
    data, objects = _report_bundle(6, pad=1500)
    first = json.dumps([_identity("ignored")])
    data = data.replace(b'"objects": ', b'"objects": ' + first.encode() + b', "objects": ', 1)
    assert json.loads(data)["objects"] == objects

    chunks, count = split_bundle(data, 4096 + 4000)

    assert count == 7 and len(chunks) > 1
    received = sorted(o["id"] for chunk in chunks for o in json.loads(chunk)["objects"])
    assert received == sorted(o["id"] for o in objects)


def test_split_refuses_a_too_big_file_as_the_checks_do() -> None:
    data, _ = _report_bundle(6, pad=1500)
    broken = data.replace(b"org 3", b"org \xff3")

    with pytest.raises(BundleRejected, match="not UTF-8") as info:
        split_bundle(broken, 4096 + 4000)
    assert info.value.kind == "not-json"


def test_split_holds_one_chunk_at_a_time_not_the_parsed_file() -> None:
    import tracemalloc

    data, _ = _report_bundle(4000, pad=4000)
    assert len(data) > 16_000_000
    limit = 1 << 20

    tracemalloc.start()
    try:
        chunks, count = split_bundle(data, limit)
        sizes = [len(chunk) for chunk in chunks]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == 4001 and len(sizes) > 16
    # Parsing the file and keeping every chunk held 2.2 times the file (measured before
    # 2026-11-30); this is the layout (a few numbers per object), a slice of text, a chunk or two.
    assert peak < len(data) / 3, (peak, len(data))


def test_wrong_token_is_a_platform_auth_error_and_the_process_lives(
    pycti_env: None, opencti_standin: OpenCTIStandIn, make_settings: Callable[..., Any]
) -> None:
    hook = sys.excepthook
    importer = PyctiImporter(make_settings(opencti_standin, opencti_token="wrong-token-123"))

    with pytest.raises(PlatformAuthError) as info:
        importer.import_bundle("w", _checked(_report_bundle()[0]))

    assert "wrong-token-123" not in str(info.value)
    assert opencti_standin.auth_failures >= 1
    assert not opencti_standin.registrations and not opencti_standin.pushes
    assert sys.excepthook is hook  # pycti's killProgramHook is not left installed
    importer.close()


def test_pycti_excepthook_is_replaced_back_and_its_threads_are_daemons(
    pycti_importer: PyctiImporter,
) -> None:
    hook = sys.excepthook
    before = set(threading.enumerate())

    pycti_importer.connect()

    assert sys.excepthook is hook
    started = set(threading.enumerate()) - before
    assert started  # the ping thread
    assert all(t.daemon for t in started)


def test_platform_down_is_transient_then_back_up_works(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    data, _ = _report_bundle()
    port = opencti_standin.port
    opencti_standin.go_down()
    with pytest.raises(TransientImportError):
        pycti_importer.import_bundle("w", _checked(data))  # before registration

    opencti_standin.come_up()
    assert opencti_standin.port == port
    pycti_importer.import_bundle("w", _checked(data))

    opencti_standin.go_down()
    with pytest.raises(TransientImportError):
        pycti_importer.import_bundle("w", _checked(data))  # registered, then the platform went away
    opencti_standin.come_up()
    receipt = pycti_importer.import_bundle("w", _checked(data))

    assert len(opencti_standin.pushes_for(receipt.work_id)) == 1
    assert not opencti_standin.deleted_connectors


@pytest.mark.parametrize(
    ("fault", "error", "marked"),
    [
        pytest.param({"status": 502}, TransientImportError, True, id="502"),
        pytest.param({"status": 503}, TransientImportError, True, id="503"),
        pytest.param({"status": 429}, TransientImportError, True, id="429"),
        # Connection-level failures: the platform is probably unreachable, no in-error report.
        pytest.param({"drop": True}, TransientImportError, False, id="dropped-connection"),
        pytest.param(
            {"graphql_error": "Lock timeout", "code": "LOCK_ERROR"},
            TransientImportError,
            True,
            id="lock-timeout",
        ),
        pytest.param(
            {"graphql_error": "Invalid bundle", "code": "UNSUPPORTED_ERROR"},
            PermanentImportError,
            True,
            id="bundle-rejected",
        ),
        pytest.param({"status": 413}, PermanentImportError, True, id="413"),
        pytest.param(
            {"graphql_error": "You must be logged in to do this.", "code": "AUTH_REQUIRED"},
            PlatformAuthError,
            True,
            id="auth-required",
        ),
    ],
)
def test_push_failures_are_classified(
    pycti_importer: PyctiImporter,
    opencti_standin: OpenCTIStandIn,
    fault: dict[str, Any],
    error: type[Exception],
    marked: bool,
) -> None:
    pycti_importer.connect()
    opencti_standin.fail("StixBundlePush", **fault)

    with pytest.raises(error) as info:
        pycti_importer.import_bundle("w", _checked(_report_bundle()[0]))

    assert type(info.value) is error
    [work] = opencti_standin.works.values()
    assert info.value.work_id == work.id  # type: ignore[attr-defined]
    assert work.in_error is marked  # the work shows the failure in OpenCTI
    receipt = pycti_importer.import_bundle("w", _checked(_report_bundle()[0]))  # one fault only
    assert receipt.pushes == 1


def test_503_on_work_creation_is_transient_without_a_work(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    pycti_importer.connect()
    opencti_standin.fail("workAdd", status=503, times=2)

    for _ in range(2):
        with pytest.raises(TransientImportError) as info:
            pycti_importer.import_bundle("w", _checked(_report_bundle()[0]))
        assert info.value.work_id is None

    assert not opencti_standin.works and not opencti_standin.pushes


def test_a_redirect_is_not_followed_and_says_what_to_fix(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    pycti_importer.connect()
    opencti_standin.fail("workAdd", status=308)

    with pytest.raises(TransientImportError, match="OPENCTI_URL") as info:
        pycti_importer.import_bundle("w", _checked(_report_bundle()[0]))

    # pycti keeps no status code, only the answer's text: the error page's title says 308.
    assert "308" in str(info.value)
    assert not opencti_standin.works and not opencti_standin.pushes


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"type": "bundle", "id": "bundle--1", "objects": []}', id="empty"),
        pytest.param(b'{"type": "report", "id": "report--1"}', id="not-a-bundle"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_bad_content_is_refused_by_the_one_check_before_any_import(data: bytes) -> None:
    # The pipeline checks a file once (uploader.importing.chunking.read_bundle) before it is claimed for
    # import: bad content never reaches pycti, and the refusal is final (failed/ with its kind).
    with pytest.raises(BundleRejected) as info:
        read_bundle(data, 1 << 20)
    assert info.value.kind in {"empty", "not-a-bundle", "not-json"}


@pytest.mark.parametrize(
    ("bundle", "cause"),
    [
        pytest.param(
            '{"type": "bundle", "id": "bundle--1", "objects": []}',
            "Invalid stix bundle",
            id="empty",
        ),
        pytest.param(
            '{"type": "report", "objects": [{"id": "x--1"}]}',
            "Invalid stix bundle",
            id="not-a-bundle",
        ),
    ],
)
def test_the_standin_refuses_what_the_platform_refuses_and_that_is_permanent(
    pycti_importer: PyctiImporter,
    opencti_standin: OpenCTIStandIn,
    pycti_helpers: list[Any],
    bundle: str,
    cause: str,
) -> None:
    pycti_importer.connect()
    api = pycti_helpers[0].api

    with pytest.raises(ValueError, match="Invalid bundle") as info:
        api.send_bundle_to_api(connector_id=pycti_importer.connector_id, bundle=bundle)
    assert opencti_standin.rejected_pushes[-1]["cause"] == cause
    assert isinstance(classify(info.value, None, STANDIN_TOKEN), PermanentImportError)


def test_unknown_connector_push_is_refused_as_invalid_bundle(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn, pycti_helpers: list[Any]
) -> None:
    pycti_importer.connect()
    with pytest.raises(ValueError, match="Invalid bundle"):
        pycti_helpers[0].api.send_bundle_to_api(
            connector_id=str(uuid.uuid4()), bundle=_report_bundle()[0].decode()
        )
    assert opencti_standin.rejected_pushes[-1]["cause"] == "Invalid connector"


def test_token_never_reaches_the_logs(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with PyctiImporter(make_settings(opencti_standin, log_level="debug")) as importer:
        importer.import_bundle("w", _checked(_report_bundle()[0]))
        opencti_standin.fail("StixBundlePush", status=502)
        with pytest.raises(TransientImportError) as info:
            importer.import_bundle("w", _checked(_report_bundle()[0]))
    with (
        PyctiImporter(make_settings(opencti_standin, opencti_token=STANDIN_TOKEN + "-bad")) as bad,
        pytest.raises(PlatformAuthError) as auth,
    ):
        bad.connect()

    # pycti's debug/info lines were captured (marking the failed push's work in error).
    assert "Reporting work update_processed" in caplog.text
    assert STANDIN_TOKEN not in caplog.text
    assert STANDIN_TOKEN not in str(info.value) and STANDIN_TOKEN not in str(auth.value)


def test_helper_creation_keeps_the_clis_log_handlers(
    pycti_importer: PyctiImporter,
) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    pycti_importer.connect()

    assert root.handlers == handlers  # pycti's basicConfig(force=True) is undone
    assert root.level == level


@pytest.mark.parametrize(
    "verify", [pytest.param(True, id="default-on"), pytest.param(False, id="off")]
)
def test_ssl_verify_is_passed_to_pycti(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    pycti_helpers: list[Any],
    verify: bool,
) -> None:
    fields = {} if verify else {"opencti_ssl_verify": False}
    with PyctiImporter(make_settings(opencti_standin, **fields)) as importer:
        importer.connect()
        [helper] = pycti_helpers
        assert helper.opencti_ssl_verify is verify
        assert helper.api_impersonate.ssl_verify is verify
        # Passed as given: requests itself looks up REQUESTS_CA_BUNDLE when it is True.
        assert helper.api.ssl_verify is verify


def test_pyctis_session_reads_the_proxy_variables_on_every_call(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy that does not exist and a NO_PROXY that exempts the platform: pycti's requests
    # session (trust_env) honours both, on each call.
    for name in ("http_proxy", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with PyctiImporter(make_settings(opencti_standin)) as importer:
        receipt = importer.import_bundle("no proxy", _checked(_report_bundle()[0]))
        assert len(opencti_standin.pushes_for(receipt.work_id)) == 1
        # Without the exemption the next file goes to the (dead) proxy: not reachable, retried.
        monkeypatch.delenv("NO_PROXY")
        with pytest.raises(TransientImportError, match="not reachable"):
            importer.import_bundle("through a dead proxy", _checked(_report_bundle()[0]))
    assert len(opencti_standin.pushes) == 1


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no system CA signed: (certificate, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


# Turning verification off makes urllib3 warn, through requests or not (shown once per place in
# the uploader: Python's default filter).
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_the_per_file_calls_verify_the_platforms_certificate(
    pycti_env: None,
    make_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    self_signed: tuple[Path, Path],
) -> None:
    cert, key = self_signed
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    # The platform's CA named the usual way: registration and the per-file calls trust it.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with (
        OpenCTIStandIn(STANDIN_TOKEN, tls=context) as standin,
        PyctiImporter(make_settings(standin)) as importer,
    ):
        receipt = importer.import_bundle("over https", _checked(_report_bundle()[0]))
        assert len(standin.pushes_for(receipt.work_id)) == 1
        assert standin.works[receipt.work_id].processed

    # The platform's CA not named: pycti's session refuses the certificate, nothing is imported.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with (
        OpenCTIStandIn(STANDIN_TOKEN, tls=context) as standin,
        PyctiImporter(make_settings(standin)) as importer,
    ):
        with pytest.raises(TransientImportError, match="CERTIFICATE_VERIFY_FAILED"):
            importer.import_bundle("untrusted", _checked(_report_bundle()[0]))
        assert not standin.works and not standin.registrations

    # End to end with verification off (OPENCTI_SSL_VERIFY=false) and no CA named: accepted.
    with (
        OpenCTIStandIn(STANDIN_TOKEN, tls=context) as standin,
        PyctiImporter(make_settings(standin, opencti_ssl_verify=False)) as importer,
    ):
        receipt = importer.import_bundle("unverified https", _checked(_report_bundle()[0]))
        assert len(standin.pushes_for(receipt.work_id)) == 1


def test_the_per_file_calls_go_through_the_configured_proxy(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with PyctiImporter(make_settings(opencti_standin)) as importer:
            receipt = importer.import_bundle("proxied", _checked(_report_bundle()[0]))
            # Every request the platform saw came through the proxy, per-file calls included.
            operations = [operation for operation, _ in opencti_standin.requests]
            assert len(proxy.seen) == len(operations)
    assert set(proxy.seen) == {f"{opencti_standin.url}/graphql"}
    assert {"workAdd", "StixBundlePush", "workToProcessed"} <= set(operations)
    assert len(opencti_standin.pushes_for(receipt.work_id)) == 1


def test_wait_for_work_polls_until_complete(
    pycti_env: None, opencti_standin: OpenCTIStandIn, make_settings: Callable[..., Any]
) -> None:
    opencti_standin.complete_after_polls = 3
    settings = make_settings(opencti_standin, wait_for_work=True, work_timeout=10)
    with PyctiImporter(settings, work_poll_interval=0.01) as importer:
        receipt = importer.import_bundle("w", _checked(_report_bundle()[0]))

    assert opencti_standin.works[receipt.work_id].polls == 4


def test_wait_for_work_times_out_as_transient(
    pycti_env: None, opencti_standin: OpenCTIStandIn, make_settings: Callable[..., Any]
) -> None:
    opencti_standin.work_status = "progress"
    settings = make_settings(opencti_standin, wait_for_work=True, work_timeout=0.2)
    with (
        PyctiImporter(settings, work_poll_interval=0.01) as importer,
        pytest.raises(TransientImportError, match="not complete") as info,
    ):
        importer.import_bundle("w", _checked(_report_bundle()[0]))

    assert info.value.work_id in opencti_standin.works


def test_concurrent_imports_from_several_threads(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    bundles = [_report_bundle(2)[0] for _ in range(8)]
    receipts: list[Any] = []
    errors: list[BaseException] = []

    def run(data: bytes) -> None:
        try:
            receipts.append(pycti_importer.import_bundle("w", _checked(data)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in bundles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not errors
    assert len({r.work_id for r in receipts}) == 8
    assert len(opencti_standin.pushes) == 8
    assert all(opencti_standin.works[r.work_id].processed for r in receipts)
    assert len(opencti_standin.registrations) == 1


def test_close_never_unregisters_the_connector(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    pycti_importer.import_bundle("w", _checked(_report_bundle()[0]))
    pycti_importer.close()

    assert "ConnectorDeletionMutation" not in opencti_standin.operations()
    assert not opencti_standin.deleted_connectors
    assert len(opencti_standin.works) == 1


def test_settings_win_over_pycti_env_variables_and_mq_overrides_stay(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    pycti_helpers: list[Any],
) -> None:
    # pycti reads these first; an empty one would make it fall back to amqp.
    monkeypatch.setenv("CONNECTOR_QUEUE_PROTOCOL", "")
    monkeypatch.setenv("OPENCTI_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CONNECTOR_TYPE", "STREAM")
    monkeypatch.setenv("MQ_HOST", "mq.example")

    with PyctiImporter(make_settings(opencti_standin)) as importer:
        receipt = importer.import_bundle("w", _checked(_report_bundle()[0]))
        [helper] = pycti_helpers

    assert helper.queue_protocol == "api"
    assert opencti_standin.registrations[0]["type"] == "EXTERNAL_IMPORT"
    assert helper.connector_config["connection"]["host"] == "mq.example"
    assert len(opencti_standin.pushes_for(receipt.work_id)) == 1
    assert os.environ["CONNECTOR_QUEUE_PROTOCOL"] == ""  # the environment is given back


def test_unreachable_rabbitmq_is_transient(
    pycti_env: None, make_settings: Callable[..., Any]
) -> None:
    from tests.standins.opencti_state import AmqpConfig
    from tests.standins.rabbitmq import free_port

    amqp = AmqpConfig(host="127.0.0.1", port=free_port())
    with (
        OpenCTIStandIn("amqp-token-0002", amqp=amqp) as standin,
        PyctiImporter(
            make_settings(standin, opencti_token="amqp-token-0002", queue_protocol="amqp")
        ) as importer,
        pytest.raises(TransientImportError, match="RabbitMQ"),
    ):
        importer.import_bundle("w", _checked(_report_bundle()[0]))


def test_a_cli_process_exits_normally_without_close(
    opencti_standin: OpenCTIStandIn, tmp_path: Any
) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, uuid\n"
        "from uploader.importing.chunking import read_bundle\n"
        "from uploader.importing.opencti import PyctiImporter\n"
        "from uploader.settings import UploaderSettings\n"
        f"s = UploaderSettings(opencti_url={opencti_standin.url!r}, opencti_token={STANDIN_TOKEN!r},"
        " connector_id=str(uuid.uuid4()))\n"
        "importer = PyctiImporter(s)\n"
        f"print(importer.import_bundle('w', read_bundle({_report_bundle()[0]!r}, 1 << 20)).work_id)\n"
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENCTI_", "CONNECTOR_", "MQ_"))
    }
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])

    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in opencti_standin.works


def test_concurrent_imports_keep_each_push_in_its_own_work(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    # Imports are not serialised: slow pushes make the threads' calls interleave, and
    # every work must still get exactly its own bundle and be marked processed.
    opencti_standin.slow(0.05, "StixBundlePush", times=12)
    bundles = [_report_bundle(3)[0] for _ in range(12)]
    receipts: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run(data: bytes) -> None:
        try:
            receipt = pycti_importer.import_bundle("w", _checked(data))
            receipts[json.loads(data)["id"]] = receipt
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in bundles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not errors
    assert len(receipts) == 12
    for bundle_id, receipt in receipts.items():
        pushes = opencti_standin.pushes_for(receipt.work_id)
        assert [p.bundle["id"] for p in pushes] == [bundle_id]
        assert opencti_standin.works[receipt.work_id].processed
    assert len(opencti_standin.registrations) == 1


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"a":"plain"}', id="plain"),
        pytest.param('{"q":"say \\"hi\\" \\\\ back"}', id="quotes-backslashes"),
        pytest.param('{"u":"é✓ \u2028 \x7f"}', id="non-ascii"),
        pytest.param('{"c":"\b\t\n\f\r \x00\x01\x1f"}', id="control-characters"),
    ],
)
def test_pushed_size_of_bytes_matches_the_escaped_text(text: str) -> None:
    from uploader.importing.chunking import _pushed_size

    assert pushed_size_of(text.encode("utf-8")) == _pushed_size(text)


def test_a_rabbitmq_error_is_transient() -> None:
    # pika's errors, as send_stix2_bundle raises them on the amqp protocol (pika comes with pycti).
    from pika.exceptions import AMQPConnectionError

    failure = classify(AMQPConnectionError("connection refused"), "work-1", STANDIN_TOKEN)
    assert isinstance(failure, TransientImportError)
    assert failure.work_id == "work-1"
    assert "RabbitMQ push failed" in str(failure)
