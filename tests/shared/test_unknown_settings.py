"""Unknown settings: the pycti names we accept are the ones the installed pycti reads."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from fetcher.settings import FetcherSettings
from shared.config import CommonSettings, load_settings
from shared.config.names import PYCTI_NAMES, PYCTI_PREFIXES, config_key, find_unknown, known_names
from uploader.settings import UploaderSettings


def test_a_process_judges_the_prefixes_of_the_models_it_defines() -> None:
    # Both halves' models are defined here (imported above); the CLI processes define one half each.
    ours, judged = known_names()
    assert {"CYBERTHREATEXCHANGE_FEED_IDS", "UPLOADER_CONCURRENCY"} <= ours
    assert set(judged) == {"CYBERTHREATEXCHANGE_", "UPLOADER_", "SPOOL_", "CONNECTOR_", "OPENCTI_"}
    assert FetcherSettings.model_fields and UploaderSettings.model_fields


def _pycti_source(relative: str) -> str:
    spec = importlib.util.find_spec("pycti")
    if spec is None or spec.origin is None:
        pytest.skip("pycti is not installed")
    return (Path(spec.origin).parent / relative).read_text(encoding="utf-8")


def test_every_name_the_installed_pycti_reads_is_known() -> None:
    helper = _pycti_source("connector/opencti_connector_helper.py")
    # get_config_variable("ENV", ["section", "key"], ...) and its keyword form (env_var=..., yaml_path=...).
    calls = re.findall(
        r'get_config_variable\(\s*(?:env_var=)?"([A-Z0-9_]+)"\s*,\s*(?:yaml_path=)?\[\s*"([a-z0-9_]+)"\s*,\s*"([a-z0-9_]+)"\s*\]',
        helper,
    )
    assert len(calls) > 40, "pycti's get_config_variable calls changed shape"
    stix2 = _pycti_source("utils/opencti_stix2.py")
    names = {env for env, _, _ in calls} | set(
        re.findall(r'_env_(?:bool|float)\(\s*"([A-Z0-9_]+)"', stix2)
    )

    ours = {name for name in names if name.startswith(PYCTI_PREFIXES)}

    assert ours - PYCTI_NAMES == set()
    # The config.yml key pycti reads is the one our loader derives from the same name.
    for env, section, key in calls:
        if env.startswith(PYCTI_PREFIXES):
            assert config_key(env) == f"{section}.{key}"


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        pytest.param("CYBERTHREATEXCHANGE_FEEDS_IDS", "CYBERTHREATEXCHANGE_FEED_IDS", id="typo"),
        pytest.param("CONNECTOR_LOG_FORMAT", "OPENCTI_JSON_LOGGING=true", id="log-format"),
        pytest.param("CONNECTOR_LOGLEVEL", "CONNECTOR_LOG_LEVEL", id="pycti-prefix"),
        pytest.param("SPOOL_DRI", "SPOOL_DIR", id="spool"),
    ],
)
def test_unknown_names_get_the_closest_known_one(name: str, closest: str) -> None:
    assert [(u.name, u.closest) for u in find_unknown([name], "environment")] == [(name, closest)]


@pytest.mark.parametrize(
    "name",
    ["PATH", "HTTP_PROXY", "MQ_HOST", "CONNECTOR_RUN_AND_TERMINATE", "OPENCTI_URL", "SPOOL_DIR"],
)
def test_names_we_or_pycti_read_or_others_own_are_not_reported(name: str) -> None:
    assert find_unknown([name], "environment") == []


def test_loading_keeps_the_unknown_names_of_both_sources(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text("spool:\n  dri: /data\nconnector:\n  run_and_terminate: true\n")
    environ = {"SPOOL_SIGNIN_KEY": "k", "PATH": "/bin", "UPLOADER_POLLING": "true"}

    settings = load_settings(CommonSettings, cfg, environ)

    assert [str(u) for u in settings.unknown_settings] == [
        f"ignoring spool.dri in {cfg}: no such setting; did you mean spool.dir?",
        "ignoring environment variable SPOOL_SIGNIN_KEY: no such setting; did you mean SPOOL_SIGNING_KEY?",
    ]
