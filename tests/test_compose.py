"""The compose deployment, checked as ``docker compose config`` would and then some.

No Docker engine runs here, so these checks stand between a typo and a user's deployment: each
file parses; every ``${VAR}`` is a setting of ours or a documented compose-only variable, and is
interpolated by the compose specification's rules (``interpolation.md`` of compose-spec:
``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
``${VAR:+alt}``, ``${VAR+alt}``, ``$$``; tests/compose_spec.py); the resulting environment of each of our services loads
with that half's settings model; builds point at an existing context, Dockerfile and stage;
secrets, volumes and ``depends_on`` name things that are declared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from fetcher.settings import FetcherSettings
from shared.config import SettingsBase, env_names, load_settings
from tests.compose_spec import (
    InterpolationError,
    dockerfile_stages,
    environment,
    exec_form,
    interpolate,
    referenced,
    resolve,
)
from uploader.settings import UploaderSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
COMPOSE_FILES = sorted(COMPOSE.glob("docker-compose*.yml"))
DOCKERFILE = COMPOSE / "Dockerfile"

MODELS: dict[str, type[SettingsBase]] = {"fetcher": FetcherSettings, "uploader": UploaderSettings}
KNOWN = {name: set(env_names(model)) for name, model in MODELS.items()}
SETTINGS = KNOWN["fetcher"] | KNOWN["uploader"]
HEALTH = {
    "fetcher": ["CMD", "ctx-fetcher", "health"],
    "uploader": ["CMD", "ctx-uploader", "health"],
}
COMMAND = {"fetcher": ["ctx-fetcher", "run"], "uploader": ["ctx-uploader", "watch"]}

# Variables our services may set that are not our settings: read by requests (proxies, the CA
# bundle pycti's session verifies OpenCTI with) or by pycti itself (its MQ_* broker overrides).
PASS_THROUGH = {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "PYTHONUNBUFFERED"}
PYCTI_MQ = re.compile(r"^MQ_[A-Z_]+$")

# Variables the compose files read that no process of ours reads, and what they are for.
COMPOSE_ONLY = {
    "PYCTI_VERSION": "build argument: the pycti matching the platform",
    "CTX_IMAGE_TAG": "tag of the built images",
    "SPOOL_HOST_DIR": "host directory of the spool (two-host layouts)",
    "SPOOL_SIGNING_KEY_HOST_FILE": "host file behind the spool_signing_key secret",
    "CA_CERTS_HOST_DIR": "host directory mounted at /etc/ctx/certs",
    "HTTPS_PROXY": "proxy for CTX (requests)",
    "NO_PROXY": "proxy exceptions (requests)",
    "REQUESTS_CA_BUNDLE": "CA bundle requests (and so pycti) verifies OpenCTI with",
    "OPENCTI_VERSION": "platform and worker image tag",
    "OPENCTI_BASE_URL": "platform's public URL",
    "OPENCTI_ADMIN_EMAIL": "platform admin",
    "OPENCTI_ADMIN_PASSWORD": "platform admin",
    "OPENCTI_ADMIN_TOKEN": "platform admin token, the uploader's token on one host",
    "OPENCTI_HEALTHCHECK_ACCESS_KEY": "platform health endpoint key",
    "MINIO_ROOT_USER": "platform object store",
    "MINIO_ROOT_PASSWORD": "platform object store",
    "RABBITMQ_DEFAULT_USER": "platform broker",
    "RABBITMQ_DEFAULT_PASS": "platform broker",
    "ELASTIC_MEMORY_SIZE": "platform search heap",
    "SMTP_HOSTNAME": "platform mail relay",
}
# Compose-only variables a user need not set (.env.example may leave them out).
OPTIONAL_UNLISTED = {"CTX_IMAGE_TAG", "HTTPS_PROXY", "NO_PROXY", "SMTP_HOSTNAME"}
# Settings the one-host file sets to a value of its own instead of passing the user's.
FIXED_ON_ONE_HOST = {
    "OPENCTI_URL": "the platform service of the same file",
    "OPENCTI_TOKEN": "OPENCTI_ADMIN_TOKEN of the platform of the same file",
}
# Stand-ins for what a user must fill in before `docker compose up`.
FILLED_IN = {
    "CYBERTHREATEXCHANGE_API_KEY": "ctx-key-0123456789",
    "CYBERTHREATEXCHANGE_FEED_IDS": "0b2d4e5f-1111-4222-8333-444455556666",
    "OPENCTI_URL": "https://opencti.example",
    "OPENCTI_TOKEN": "octi-token-0123456789",
    "OPENCTI_ADMIN_TOKEN": "octi-token-0123456789",
    "CONNECTOR_ID": "6a9d4e39-3b8b-4a57-9f2d-0f1a2b3c4d5e",
    "OPENCTI_ADMIN_PASSWORD": "pw",
    "OPENCTI_HEALTHCHECK_ACCESS_KEY": "hk",
    "MINIO_ROOT_USER": "minio",
    "MINIO_ROOT_PASSWORD": "minio-pw",
    "RABBITMQ_DEFAULT_USER": "opencti",
    "RABBITMQ_DEFAULT_PASS": "mq-pw",
    "OPENCTI_ADMIN_EMAIL": "admin@example.org",
}


def env_example() -> dict[str, str]:
    values = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def dotenv() -> dict[str, str]:
    """The .env a user makes from .env.example: its values, the blanks that must be filled in."""
    env = env_example()
    env.update({k: v for k, v in FILLED_IN.items() if not env.get(k)})
    return env


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path.name} is not a mapping"
    return doc


def ours(doc: Mapping[str, Any]) -> list[str]:
    return [name for name in doc["services"] if name in MODELS]


PARAMS = [pytest.param(p, id=p.name) for p in COMPOSE_FILES]


def test_there_are_three_layouts() -> None:
    assert {p.name for p in COMPOSE_FILES} == {
        "docker-compose.yml",
        "docker-compose.fetcher.yml",
        "docker-compose.uploader.yml",
    }


@pytest.mark.parametrize("path", PARAMS)
def test_every_variable_is_a_setting_or_documented(path: Path) -> None:
    doc = load(path)
    assert set(doc) <= {"services", "volumes", "secrets", "networks", "configs", "name"}
    unknown = referenced(path.read_text()) - SETTINGS - set(COMPOSE_ONLY)
    assert not unknown, f"{path.name} reads undocumented variables {sorted(unknown)}"


def test_env_example_sets_only_known_variables() -> None:
    unknown = set(env_example()) - SETTINGS - set(COMPOSE_ONLY)
    assert not unknown, f".env.example sets unknown variables {sorted(unknown)}"
    used = set().union(*(referenced(p.read_text()) for p in COMPOSE_FILES))
    stale = set(COMPOSE_ONLY) - used
    assert not stale, f"documented compose-only variables no file reads: {sorted(stale)}"


@pytest.mark.parametrize("path", PARAMS)
def test_variables_used_are_in_env_example(path: Path) -> None:
    missing = referenced(path.read_text()) - set(env_example()) - OPTIONAL_UNLISTED
    assert not missing, f"{path.name} uses variables missing from .env.example: {sorted(missing)}"


@pytest.mark.parametrize("path", PARAMS)
def test_our_services_set_only_their_own_settings(path: Path) -> None:
    doc = load(path)
    assert ours(doc), f"{path.name} runs neither the fetcher nor the uploader"
    for name in ours(doc):
        service = doc["services"][name]
        env = environment(service)
        unknown = {
            var
            for var in env
            if var not in KNOWN[name] and var not in PASS_THROUGH and not PYCTI_MQ.match(var)
        }
        assert not unknown, f"{path.name}: {name} sets unknown variables {sorted(unknown)}"
        assert service["command"] == COMMAND[name]
        assert service["healthcheck"]["test"] == HEALTH[name]
        assert env["SPOOL_DIR"] == "/var/lib/ctx/spool"


@pytest.mark.parametrize("path", PARAMS)
def test_interpolated_environment_loads_as_settings(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray ./config.yml
    # With the user's .env, and with nothing but what must be filled in (the files' own defaults).
    for dot in (dotenv(), FILLED_IN):
        doc = resolve(load(path), dot)
        for name in ours(doc):
            env = environment(doc["services"][name])
            settings = load_settings(MODELS[name], None, env)
            assert settings.spool_dir == Path("/var/lib/ctx/spool")


@pytest.mark.parametrize("path", PARAMS)
def test_required_settings_stop_compose_when_blank(path: Path) -> None:
    """Every required setting is guarded by ``:?`` (compose stops with its message)."""
    doc = load(path)
    blank = env_example()
    for name in ours(doc):
        env = environment(doc["services"][name])
        required = {
            env_name
            for env_name, field in env_names(MODELS[name]).items()
            if MODELS[name].model_fields[field].is_required()
        }
        for var in required:
            assert var in env, f"{path.name}: {name} does not set required {var}"
            if var in FIXED_ON_ONE_HOST and "${" not in env[var]:
                continue
            with pytest.raises(InterpolationError, match="required variable"):
                interpolate(env[var], {**dotenv(), **{k: "" for k in referenced(env[var])}})
    # .env.example as shipped, not filled in, must not start anything.
    with pytest.raises(InterpolationError, match="required variable"):
        resolve({name: doc["services"][name] for name in ours(doc)}, blank)


@pytest.mark.parametrize("path", PARAMS)
def test_env_example_settings_reach_the_services(path: Path) -> None:
    doc = load(path)
    one_host = path.name == "docker-compose.yml"
    for name in ours(doc):
        env = environment(doc["services"][name])
        for var in set(env_example()) & KNOWN[name]:
            if one_host and var in FIXED_ON_ONE_HOST:
                assert var in env
                continue
            assert var in env, f"{path.name}: {name} ignores {var} from .env.example"
            assert var in referenced(env[var]), f"{path.name}: {name} sets {var} without ${{{var}}}"


@pytest.mark.parametrize("path", PARAMS)
def test_builds_point_at_this_tree(path: Path) -> None:
    doc = resolve(load(path), dotenv())
    stages = dockerfile_stages(DOCKERFILE)
    args = set(re.findall(r"^ARG (\w+)", DOCKERFILE.read_text(), re.M))
    for name in ours(doc):
        build = doc["services"][name]["build"]
        context = (path.parent / build["context"]).resolve()
        assert context.is_dir()
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] == name and name in stages
        assert set(build.get("args", {})) <= args
        instructions = dict(stages[name])  # the stage's last of each kind is the one in force
        assert exec_form(instructions["HEALTHCHECK"]) == HEALTH[name][1:]
        assert exec_form(instructions["CMD"]) == COMMAND[name]


@pytest.mark.parametrize("path", PARAMS)
def test_secrets_volumes_and_dependencies_are_declared(path: Path) -> None:
    doc = resolve(load(path), dotenv())
    services = doc["services"]
    secrets = doc.get("secrets", {})
    volumes = doc.get("volumes", {}) or {}
    for name, service in services.items():
        for ref in service.get("secrets", []):
            source = ref if isinstance(ref, str) else ref["source"]
            assert source in secrets, f"{path.name}: {name} uses undeclared secret {source}"
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source and not source.startswith(("/", ".", "~")):
                assert source in volumes, f"{path.name}: {name} uses undeclared volume {source}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services
    for secret_name, secret in secrets.items():
        assert set(secret) & {"file", "environment"}, f"{secret_name} has no source"
        if "file" in secret:
            # The default source must exist, or `up` fails before the first log line.
            assert Path(secret["file"]).exists(), f"{secret_name}: {secret['file']} does not exist"
    # SPOOL_SIGNING_KEY_FILE, as .env.example documents it, names a secret every service mounts.
    documented = re.search(
        r"SPOOL_SIGNING_KEY_FILE=/run/secrets/(\w+)", (COMPOSE / ".env.example").read_text()
    )
    assert documented is not None
    for name in ours(doc):
        assert documented.group(1) in services[name]["secrets"]


def test_single_host_layout_shares_a_named_volume() -> None:
    doc = load(COMPOSE / "docker-compose.yml")
    assert "spool" in doc["volumes"]
    for name in ("fetcher", "uploader"):
        assert "spool:/var/lib/ctx/spool" in doc["services"][name]["volumes"]
    assert "opencti" in doc["services"]


def test_dockerfile_builds_from_this_tree() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYCTI_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert '"pycti==${PYCTI_VERSION}"' in text
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the tree"
    assert "libmagic1" in text


def _dockerignored(path: str, rules: list[str]) -> bool:
    """Whether the build context leaves ``path`` out, by the .dockerignore rules of the Dockerfile
    reference: Go ``filepath.Match`` patterns plus ``**``, matched against the path and each of
    its parent folders, ``!`` re-including, the last matching rule winning."""
    excluded = False
    parts = path.split("/")
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        regex = "".join(
            ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else re.escape(token)
            for token in re.split(r"(\*\*|\*|\?)", pattern)
            if token
        )
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_to_what_the_image_runs() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = {
        src.rstrip("/")
        for arguments in re.findall(r"^COPY (.+)$", DOCKERFILE.read_text(), re.M)
        for src in arguments.split()[:-1]
    }
    # Everything out, then exactly what the Dockerfile copies back in.
    assert rules[0] == "*"
    assert {rule[1:] for rule in rules if rule.startswith("!")} == copied
    for path in (
        ".venv/bin/python",
        ".venv-compat/6.5.10/pyvenv.cfg",
        "spool/incoming/x.json",
        "demo-spool/.fetcher/fetcher.sqlite3",
        ".env",
        "compose/.env",
        ".git/config",
        ".mypy_cache/x",
        "tests/test_compose.py",
        "docs/x.md",
        "shared/__pycache__/config.cpython-311.pyc",
        "ctx_opencti_spool.egg-info/PKG-INFO",
    ):
        assert _dockerignored(path, rules), f"{path} would be in the build context"
    for path in (
        "pyproject.toml",
        "README.md",
        "shared/config/__init__.py",
        "fetcher/__init__.py",
        "uploader/__init__.py",
    ):
        assert not _dockerignored(path, rules), f"{path} is needed by the build"


def test_default_pycti_pin_matches_pyproject() -> None:
    pin = re.search(r"^ARG PYCTI_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert pin is not None
    assert f'"pycti=={pin.group(1)}"' in (ROOT / "pyproject.toml").read_text()
    for path in COMPOSE_FILES:
        text = path.read_text()
        platform = re.search(r"opencti/platform:\$\{OPENCTI_VERSION:-(\S+)\}", text)
        # A file that runs its own platform pairs pycti with that platform's version (pycti must
        # match the platform); the others take the image's default.
        expected = platform.group(1) if platform else pin.group(1)
        assert f"PYCTI_VERSION:-{expected}" in text, path.name


def test_config_sample_keys_are_settings() -> None:
    doc = yaml.safe_load((COMPOSE / "config.yml.sample").read_text())
    keys = {f"{section}_{key}".upper() for section, values in doc.items() for key in values}
    assert keys - SETTINGS == set()
    assert {"CYBERTHREATEXCHANGE_API_KEY", "OPENCTI_TOKEN", "CONNECTOR_ID", "SPOOL_DIR"} <= keys


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        pytest.param("${A:-d}", {"A": ""}, "d", id="colon-dash-empty"),
        pytest.param("${A-d}", {"A": ""}, "", id="dash-empty-is-set"),
        pytest.param("${A-d}", {}, "d", id="dash-unset"),
        pytest.param("x$${A}y", {"A": "1"}, "x${A}y", id="dollar-escape"),
        pytest.param("$A/${B}", {"A": "1", "B": "2"}, "1/2", id="bare-and-braced"),
        pytest.param("${A:+on}", {"A": "1"}, "on", id="alt"),
    ],
)
def test_interpolation_follows_compose_spec(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_interpolation_errors() -> None:
    with pytest.raises(InterpolationError, match="set it"):
        interpolate("${A:?set it}", {"A": ""})
    assert interpolate("${A?set it}", {"A": ""}) == ""
    with pytest.raises(InterpolationError, match="invalid"):
        interpolate("${A:-${B}}", {})
