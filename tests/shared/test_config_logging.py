"""Config loading (env over config.yml, every bad variable named) and secret-masking logs."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from fetcher.settings import FetcherSettings
from shared.config import CommonSettings, config_key, describe, env_names, load_settings
from shared.errors import ConfigError
from shared.logsetup import configure_logging, level_number
from uploader.settings import UploaderSettings

FEED = "0b2d4e5f-1111-4222-8333-444455556666"


def test_env_wins_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        "cyberthreatexchange:\n"
        "  api_key: from-file-key\n"
        f"  feed_ids: [{FEED}]\n"
        "  interval_hours: 3\n"
        "spool:\n"
        "  dir: /data/spool\n"
    )
    settings = load_settings(
        FetcherSettings, cfg, {"CYBERTHREATEXCHANGE_INTERVAL_HOURS": "5", "SPOOL_DIR": ""}
    )
    assert settings.interval_hours == 5
    assert settings.api_key.get_secret_value() == "from-file-key"
    assert settings.feed_ids == (FEED,)
    # An empty variable counts as unset, so the file's value stays.
    assert settings.spool_dir == Path("/data/spool")


def test_every_bad_variable_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            FetcherSettings,
            None,
            {
                "CYBERTHREATEXCHANGE_FEED_IDS": "not-a-uuid",
                "CYBERTHREATEXCHANGE_INTERVAL_HOURS": "0",
                "CYBERTHREATEXCHANGE_BASE_URL": "ftp://x",
            },
        )
    names = {p.variable for p in info.value.problems}
    assert names == {
        "CYBERTHREATEXCHANGE_API_KEY",
        "CYBERTHREATEXCHANGE_FEED_IDS",
        "CYBERTHREATEXCHANGE_INTERVAL_HOURS",
        "CYBERTHREATEXCHANGE_BASE_URL",
    }
    assert "cyberthreatexchange.api_key" in str(info.value)


def test_secret_never_in_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            UploaderSettings,
            None,
            {"OPENCTI_URL": "not a url", "OPENCTI_TOKEN": "tok-very-secret", "CONNECTOR_ID": "x"},
        )
    assert "tok-very-secret" not in str(info.value)
    assert {p.variable for p in info.value.problems} == {"OPENCTI_URL", "CONNECTOR_ID"}


def test_the_process_environment_and_config_yml_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in env_names(CommonSettings):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config.yml").write_text(
        "spool:\n  dir: from-file\nconnector:\n  log_level: debug\n"
    )
    monkeypatch.setenv("SPOOL_DIR", " from-env ")
    monkeypatch.setenv("CONNECTOR_LOG_LEVEL", "  ")

    settings = load_settings(CommonSettings)

    # Values are stripped; a blank variable counts as unset.
    assert (settings.spool_dir, settings.log_level) == (Path("from-env"), "debug")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("spool: [unclosed\n", "not valid YAML", id="yaml"),
        pytest.param("- spool\n", "must be a mapping of sections", id="list"),
        pytest.param("spool: /data/spool\n", "section must be a mapping", id="section"),
        pytest.param(None, "cannot read: no such file", id="missing"),
    ],
)
def test_a_bad_config_file_is_a_config_error(
    tmp_path: Path, text: str | None, message: str
) -> None:
    cfg = tmp_path / "config.yml"
    if text is not None:
        cfg.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(FetcherSettings, cfg, {"CYBERTHREATEXCHANGE_API_KEY": "abcd1234"})
    assert [p.variable for p in info.value.problems] == ["--config"]
    assert info.value.source == str(cfg)


def test_keys_and_docs() -> None:
    assert config_key("CYBERTHREATEXCHANGE_BASE_URL") == "cyberthreatexchange.base_url"
    assert config_key("SPOOL_DIR") == "spool.dir"
    rows = {row[0]: row for row in describe(FetcherSettings)}
    assert rows["CYBERTHREATEXCHANGE_API_KEY"][2] == "required"
    assert rows["CYBERTHREATEXCHANGE_BASE_URL"][2] == "https://api.cyberthreatexchange.com/"
    assert all(row[3] for row in rows.values()), "every setting has a description"


def test_base_url_normalised() -> None:
    env = {"CYBERTHREATEXCHANGE_API_KEY": "abcd1234", "CYBERTHREATEXCHANGE_FEED_IDS": FEED}
    for url in ("https://h.example/api", "https://h.example/api///"):
        s = load_settings(FetcherSettings, None, {**env, "CYBERTHREATEXCHANGE_BASE_URL": url})
        assert s.base_url == "https://h.example/api/"


def test_logs_mask_secrets_from_any_logger() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("debug", secrets=["key-abcdef"], stream=stream)
        logging.getLogger("some.library").warning("header API-KEY: %s", "key-abcdef")
        logging.getLogger("fetcher.x").info("feed done", extra={"feed_id": FEED, "written": 3})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    text = stream.getvalue()
    assert "key-abcdef" not in text
    assert "API-KEY: ***" in text
    assert f"feed_id={FEED} written=3" in text


def test_log_levels() -> None:
    assert level_number("warn") == logging.WARNING
    assert level_number("DEBUG") == logging.DEBUG
    with pytest.raises(ValueError, match="unknown log level"):
        level_number("loud")
