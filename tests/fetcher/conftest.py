from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standins.ctx import CTXStandIn


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # The CLI configures the root logger; later tests must not write to a closed CliRunner stream.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def standin() -> Iterator[CTXStandIn]:
    with CTXStandIn(feeds=2, reports=8, orphans=12, seed=7) as server:
        yield server


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def env(
    standin: CTXStandIn, spool_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    # load_settings reads ./config.yml when present: run where there is none.
    monkeypatch.chdir(tmp_path)
    return {
        "CYBERTHREATEXCHANGE_BASE_URL": standin.base_url,
        "CYBERTHREATEXCHANGE_API_KEY": standin.api_key,
        "CYBERTHREATEXCHANGE_FEED_IDS": ",".join(standin.active_feed_ids),
        "CYBERTHREATEXCHANGE_BACKOFF_FACTOR": "0.01",
        "CYBERTHREATEXCHANGE_MAX_RETRIES": "3",
        "CYBERTHREATEXCHANGE_CONNECT_TIMEOUT": "2",
        "CYBERTHREATEXCHANGE_READ_TIMEOUT": "5",
        "CONNECTOR_LOG_LEVEL": "debug",
        "SPOOL_DIR": str(spool_dir),
    }
