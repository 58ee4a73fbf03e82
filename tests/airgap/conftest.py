"""Fixtures of the air-gap tests: the uploader tests' spool fixtures, a signing key, CLI runners."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fetcher.commands.cli import main as fetcher_main
from shared.durable import publish_bytes, sha256_bytes
from shared.layout import Spool, SpoolName, relative_path
from shared.signing import SigningKey
from tests.standins.ctx import CTXStandIn

# Re-exported so pytest registers them here too (fixtures live in tests/uploader/conftest.py).
from tests.uploader.conftest import BASE_TIME, FEED_A, SpoolFiles, _restore_logging, files, spool
from uploader.commands.cli import main as uploader_main

__all__ = [
    "KEY",
    "_restore_logging",
    "ctx",
    "fetch_env",
    "files",
    "signing_key",
    "spool",
    "uploader_env",
]

KEY = "9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c0b2d4f6e8a1c3e5b7d9f0a2c4e6b8d0f"


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.from_secret(KEY)


@pytest.fixture
def ctx() -> Iterator[CTXStandIn]:
    with CTXStandIn(feeds=2, reports=6, orphans=8, seed=11) as server:
        yield server


@pytest.fixture
def fetch_env(ctx: CTXStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # load_settings reads ./config.yml when present: run where there is none.
    monkeypatch.chdir(tmp_path)
    return {
        "CYBERTHREATEXCHANGE_BASE_URL": ctx.base_url,
        "CYBERTHREATEXCHANGE_API_KEY": ctx.api_key,
        "CYBERTHREATEXCHANGE_FEED_IDS": ",".join(ctx.active_feed_ids),
        "CYBERTHREATEXCHANGE_BACKOFF_FACTOR": "0.01",
        "CYBERTHREATEXCHANGE_MAX_RETRIES": "2",
        "CONNECTOR_LOG_LEVEL": "info",
        "SPOOL_DIR": str(tmp_path / "spool"),
    }


def fetcher(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(
        fetcher_main, args, env=env, catch_exceptions=False, prog_name="ctx-fetcher"
    )


def uploader(args: list[str], env: dict[str, str], importer: Any = None) -> Result:
    obj: dict[str, Any] = {}
    if importer is not None:
        obj["importer_factory"] = lambda settings: importer
    return CliRunner().invoke(
        uploader_main, args, env=env, obj=obj, catch_exceptions=False, prog_name="ctx-uploader"
    )


@pytest.fixture
def uploader_env(spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("OPENCTI_", "CONNECTOR_", "UPLOADER_", "SPOOL_")):
            monkeypatch.delenv(name)
    return {
        "SPOOL_DIR": str(spool.root),
        "OPENCTI_URL": "http://127.0.0.1:9",
        "OPENCTI_TOKEN": "token-for-tests-1234",
        "CONNECTOR_ID": "0b7f1c6e-3c55-4a43-9d5f-6f5a1b6a8d11",
        "UPLOADER_INSTANCE_ID": "airgap",
        "UPLOADER_RETRY_INITIAL": "0.05",
        "UPLOADER_RETRY_MAX": "0.1",
        "UPLOADER_SETTLE_SECONDS": "0.2",
    }


def add_signed(
    files: SpoolFiles,
    key: SigningKey | None,
    feed: str = FEED_A,
    *,
    minutes: int | None = None,
    data: bytes | None = None,
    signature: str | None = None,
    state: str = "incoming",
) -> Path:
    """Publish a bundle file named with ``key``'s signature (or ``signature`` as given)."""
    files.counter += 1
    minutes = files.counter if minutes is None else minutes
    seed = f"{feed}-{minutes}-{files.counter}"
    if data is None:
        data = files.bundle_bytes(seed)
    if signature is None and key is not None:
        signature = key.sign(data)
    name = SpoolName(
        BASE_TIME + timedelta(minutes=minutes),
        f"report--{uuid.uuid5(uuid.NAMESPACE_URL, seed)}",
        sha256_bytes(data),
        signature,
    )
    path = files.spool.path_in(state, relative_path(feed, name))
    publish_bytes(path, data)
    return path
