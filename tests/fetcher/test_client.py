"""The client alone: rate limit, unreachable CTX, and the stand-in's standalone mode."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from fetcher.ctx.client import CTXClient, RateLimiter
from fetcher.errors import CTXConnectionError, ForeignHostError
from fetcher.settings import FetcherSettings
from tests.fetcher.helpers import invoke
from tests.standins.ctx import DEFAULT_API_KEY


@contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port with nothing listening (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


def test_rate_limiter_bounds_requests_across_threads() -> None:
    limiter = RateLimiter(20.0)
    start = time.monotonic()
    threads = [
        threading.Thread(target=lambda: [limiter.acquire() for _ in range(10)]) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    # 30 tokens at 20/s, one at a time: at least 1.45 s (a burst bucket of 20 took 0.5 s).
    assert time.monotonic() - start >= 0.45


def test_unreachable_ctx_is_a_connection_error(tmp_path: Path) -> None:
    with socket_closed_port() as port:
        settings = FetcherSettings.model_validate(
            {
                "CYBERTHREATEXCHANGE_BASE_URL": f"http://127.0.0.1:{port}/",
                "CYBERTHREATEXCHANGE_API_KEY": "some-key-1234",
                "CYBERTHREATEXCHANGE_FEED_IDS": "00000000-0000-4000-8000-000000000000",
                "CYBERTHREATEXCHANGE_MAX_RETRIES": 1,
                "CYBERTHREATEXCHANGE_BACKOFF_FACTOR": 0,
            }
        )
        with CTXClient(settings) as client, pytest.raises(CTXConnectionError) as info:
            client.subscriptions()

    assert info.value.path == "/v1/subscriptions/"
    assert "some-key-1234" not in str(info.value)


def test_a_path_that_leaves_the_host_is_never_asked() -> None:
    # A listening socket that would see any request the client sent.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        other.settimeout(0.5)
        port = other.getsockname()[1]
        settings = FetcherSettings.model_validate(
            {
                "CYBERTHREATEXCHANGE_BASE_URL": "http://127.0.0.1:9/",
                "CYBERTHREATEXCHANGE_API_KEY": "some-key-1234",
                "CYBERTHREATEXCHANGE_FEED_IDS": "00000000-0000-4000-8000-000000000000",
            }
        )
        with CTXClient(settings) as client, pytest.raises(ForeignHostError) as info:
            client.get_json(f"//127.0.0.1:{port}/v1/feeds/")
        with pytest.raises(TimeoutError):
            other.accept()
    assert "some-key-1234" not in str(info.value)


def test_once_against_unreachable_ctx_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket_closed_port() as port:
        result = invoke(
            ["once"],
            {
                "CYBERTHREATEXCHANGE_BASE_URL": f"http://127.0.0.1:{port}/",
                "CYBERTHREATEXCHANGE_API_KEY": "some-key-1234",
                "CYBERTHREATEXCHANGE_FEED_IDS": "00000000-0000-4000-8000-000000000000",
                "CYBERTHREATEXCHANGE_MAX_RETRIES": "0",
                "SPOOL_DIR": str(tmp_path / "spool"),
            },
        )

    assert result.exit_code == 1
    assert "no answer from CTX for /v1/subscriptions/" in result.output


@pytest.mark.timeout(60)
def test_standin_runs_standalone() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.standins.ctx",
            "--port",
            "0",
            "--feeds",
            "1",
            "--reports",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(4))
        answer = requests.get(
            f"{lines['base_url']}v1/subscriptions/",
            headers={"API-KEY": DEFAULT_API_KEY},
            timeout=10,
        )
        assert answer.status_code == 200
        assert len(answer.json()["results"]) == 2
        assert lines["api_key"] == DEFAULT_API_KEY
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
