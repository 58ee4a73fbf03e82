"""JSON log lines (OPENCTI_JSON_LOGGING): one object per line, context fields kept, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from fetcher.settings import FetcherSettings
from shared.config import load_settings
from shared.logsetup import MASK, RedactingJsonFormatter, configure_logging

FEED = "0b2d4e5f-1111-4222-8333-444455556666"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_its_context(stream: io.StringIO) -> None:
    configure_logging("info", stream=stream, json_lines=True)
    log = logging.getLogger("fetcher.passes.feed")
    log.info("feed done: %s files", 3, extra={"feed_id": FEED, "file": Path("a/b.json")})
    log.debug("not at info")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("failed", extra={"work_id": "w-1"})
    first, second = _lines(stream)
    assert first["message"] == "feed done: 3 files"
    assert first["level"] == "INFO"
    assert first["logger"] == "fetcher.passes.feed"
    assert first["feed_id"] == FEED
    assert first["file"] == "a/b.json"
    stamp = datetime.fromisoformat(str(first["timestamp"]))
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert second["level"] == "ERROR"
    assert second["work_id"] == "w-1"
    assert "RuntimeError: boom" in str(second["exc_info"])


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("tok-plain-0123456789", id="plain"),
        pytest.param('tok"quote\\slash', id="json-escaped"),
        pytest.param("tok-ünïcode-Ω", id="non-ascii"),
    ],
)
def test_a_secret_never_appears_in_a_json_line(stream: io.StringIO, secret: str) -> None:
    configure_logging("debug", secrets=[secret], stream=stream, json_lines=True)
    logging.getLogger("some.library").warning("header API-KEY: %s", secret)
    logging.getLogger("pycti").info("call", extra={"attributes": {"token": secret, "n": 1}})
    logging.getLogger("x").info("in a longer string: <%s>", secret)
    text = stream.getvalue()
    for spelling in (
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    ):
        assert spelling not in text
    records = _lines(stream)
    assert records[0]["message"] == f"header API-KEY: {MASK}"
    assert records[1]["attributes"] == {"token": MASK, "n": 1}
    assert records[2]["message"] == f"in a longer string: <{MASK}>"


def test_a_secret_learned_later_is_masked_too(stream: io.StringIO) -> None:
    formatter = configure_logging("info", stream=stream, json_lines=True)
    assert isinstance(formatter, RedactingJsonFormatter)
    formatter.add_secret("late-secret-value")
    logging.getLogger("x").info("late-secret-value")
    assert _lines(stream)[0]["message"] == MASK


def test_the_setting_is_pycti_s_name() -> None:
    env = {"CYBERTHREATEXCHANGE_API_KEY": "abcd1234", "CYBERTHREATEXCHANGE_FEED_IDS": FEED}
    assert load_settings(FetcherSettings, None, env).json_logging is False
    on = load_settings(FetcherSettings, None, {**env, "OPENCTI_JSON_LOGGING": "true"})
    assert on.json_logging is True
