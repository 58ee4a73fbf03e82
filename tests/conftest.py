"""Session-wide guard: the operator's own settings never reach a test.

``make test`` runs where an operator may have exported ``OPENCTI_URL``/``OPENCTI_TOKEN`` for a real
platform, or a CTX key: a test that read them would write into that platform or spend that key. So
every ``OPENCTI_*``, ``CONNECTOR_*``, ``CYBERTHREATEXCHANGE_*``, ``UPLOADER_*``, ``SPOOL_*`` and
``MQ_*`` variable is removed from the environment before collection (a module may read the
environment when imported) and for the whole session; tests give their settings explicitly. The one
test that talks to a real OpenCTI is turned on by ``CTX_LIVE_TEST_OPENCTI_URL`` and
``CTX_LIVE_TEST_OPENCTI_TOKEN``, variables used for nothing else (tests/uploader/test_opencti_live.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

OPERATOR_PREFIXES = ("OPENCTI_", "CONNECTOR_", "CYBERTHREATEXCHANGE_", "UPLOADER_", "SPOOL_", "MQ_")

_removed: dict[str, str] = {}


def _scrub() -> dict[str, str]:
    removed = {
        name: os.environ[name] for name in list(os.environ) if name.startswith(OPERATOR_PREFIXES)
    }
    for name in removed:
        del os.environ[name]
    return removed


def pytest_configure(config: pytest.Config) -> None:
    _removed.update(_scrub())


def pytest_unconfigure(config: pytest.Config) -> None:
    os.environ.update(_removed)


@pytest.fixture(autouse=True, scope="session")
def _no_operator_settings() -> Iterator[None]:
    """Removes, for the session, any operator variable set again while tests were collected."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(OPERATOR_PREFIXES):
                patch.delenv(name)
        yield
