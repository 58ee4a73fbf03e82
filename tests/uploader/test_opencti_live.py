"""Opt-in: one import into a real OpenCTI, when CTX_LIVE_TEST_OPENCTI_URL and
CTX_LIVE_TEST_OPENCTI_TOKEN are set.

Variables used for nothing else: an operator's own ``OPENCTI_URL``/``OPENCTI_TOKEN`` never turn this
test on (tests/conftest.py removes them for the session). ``CTX_LIVE_TEST_OPENCTI_SSL_VERIFY=false``
and ``CTX_LIVE_TEST_CONNECTOR_ID`` are optional.

The other tests talk to the stand-in (:mod:`tests.standins.opencti`); this one shows that a real
platform accepts the documents of the installed pycti and that its workers complete the work
(``get_work`` in ``pycti/api/opencti_api_work.py``, status ``complete``). Run it with the pycti
of the platform's version.

Registers a connector (``CTX_LIVE_TEST_CONNECTOR_ID`` or a new UUID) named "ctx-uploader live test" and imports
one identity under one work, waiting for the platform's workers to complete it.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from uploader.importing.chunking import read_bundle
from uploader.importing.opencti import PyctiImporter
from uploader.settings import UploaderSettings

URL = "CTX_LIVE_TEST_OPENCTI_URL"
TOKEN = "CTX_LIVE_TEST_OPENCTI_TOKEN"

pytestmark = [
    pytest.mark.opencti_live,
    pytest.mark.skipif(
        not (os.environ.get(URL) and os.environ.get(TOKEN)),
        reason=f"set {URL} and {TOKEN} to run against a real OpenCTI",
    ),
]


def test_import_one_bundle_into_a_real_platform() -> None:
    settings = UploaderSettings(
        opencti_url=os.environ[URL],
        opencti_token=os.environ[TOKEN],
        opencti_ssl_verify=os.environ.get("CTX_LIVE_TEST_OPENCTI_SSL_VERIFY", "true").lower()
        != "false",
        connector_id=os.environ.get("CTX_LIVE_TEST_CONNECTOR_ID") or str(uuid.uuid4()),
        connector_name="ctx-uploader live test",
        wait_for_work=True,
        work_timeout=300,
    )
    identity = {
        "type": "identity",
        "spec_version": "2.1",
        "id": f"identity--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "name": f"ctx-uploader live test {uuid.uuid4().hex[:8]}",
        "identity_class": "organization",
    }
    data = json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [identity]})

    with PyctiImporter(settings) as importer:
        receipt = importer.import_bundle(
            "ctx-uploader live test", read_bundle(data.encode(), settings.max_push_bytes)
        )

    assert receipt.work_id
    assert (receipt.pushes, receipt.objects) == (1, 1)
