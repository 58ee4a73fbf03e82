"""The compose deployment: YAML parses, and every variable our services set is a known setting.

No Docker engine runs here, so these checks are what stands between a typo and a user's deployment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fetcher.settings import FetcherSettings
from shared.config import env_names
from uploader.settings import UploaderSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
COMPOSE_FILES = sorted(COMPOSE.glob("docker-compose*.yml"))

# Variables our services may set that are not our settings: read by requests (proxies) or by
# pycti itself (its MQ_* overrides of the broker that registerConnector announces).
PASS_THROUGH = {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "PYTHONUNBUFFERED"}
PYCTI_MQ = re.compile(r"^MQ_[A-Z_]+$")

KNOWN = {
    "fetcher": set(env_names(FetcherSettings)),
    "uploader": set(env_names(UploaderSettings)),
}


def _environment(service: dict[str, object]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    assert isinstance(env, dict)
    return {str(k): str(v) for k, v in env.items()}


def test_there_are_three_layouts() -> None:
    names = {p.name for p in COMPOSE_FILES}
    assert names == {
        "docker-compose.yml",
        "docker-compose.fetcher.yml",
        "docker-compose.uploader.yml",
    }


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in COMPOSE_FILES])
def test_our_services_set_only_known_variables(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    services = doc["services"]
    ours = [name for name in services if name in KNOWN]
    assert ours, f"{path.name} runs neither the fetcher nor the uploader"
    for name in ours:
        env = _environment(services[name])
        unknown = {
            var
            for var in env
            if var not in KNOWN[name] and var not in PASS_THROUGH and not PYCTI_MQ.match(var)
        }
        assert not unknown, f"{path.name}: {name} sets unknown variables {sorted(unknown)}"
        command = services[name]["command"]
        expected = {"fetcher": ["ctx-fetcher", "run"], "uploader": ["ctx-uploader", "watch"]}
        assert command == expected[name]
        assert env["SPOOL_DIR"] == "/var/lib/ctx/spool"


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in COMPOSE_FILES])
def test_required_variables_are_in_env_example(path: Path) -> None:
    example = {
        line.split("=", 1)[0]
        for line in (COMPOSE / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text()))
    missing = used - example - {"CTX_IMAGE_TAG", "HTTPS_PROXY", "NO_PROXY", "SMTP_HOSTNAME"}
    assert not missing, f"{path.name} uses variables missing from .env.example: {sorted(missing)}"


def test_single_host_layout_shares_a_named_volume() -> None:
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert "spool" in doc["volumes"]
    for name in ("fetcher", "uploader"):
        assert "spool:/var/lib/ctx/spool" in doc["services"][name]["volumes"]
    assert "opencti" in doc["services"]


def test_dockerfile_builds_from_this_tree() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"^ARG PYCTI_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert '"pycti==${PYCTI_VERSION}"' in text
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the tree"
    assert "libmagic1" in text


def test_default_pycti_pin_matches_pyproject() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    pin = re.search(r"^ARG PYCTI_VERSION=(\S+)$", dockerfile, re.M)
    assert pin is not None
    assert f'"pycti=={pin.group(1)}"' in (ROOT / "pyproject.toml").read_text()


def test_config_sample_keys_are_settings() -> None:
    doc = yaml.safe_load((COMPOSE / "config.yml.sample").read_text())
    known = KNOWN["fetcher"] | KNOWN["uploader"]
    keys = {f"{section}_{key}".upper() for section, values in doc.items() for key in values}
    assert keys - known == set()
    assert {"CYBERTHREATEXCHANGE_API_KEY", "OPENCTI_TOKEN", "CONNECTOR_ID", "SPOOL_DIR"} <= keys
