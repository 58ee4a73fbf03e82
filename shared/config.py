"""Configuration loading shared by both halves.

Every setting has one environment variable name (the seed's names: ``OPENCTI_*``, ``CONNECTOR_*``,
``CYBERTHREATEXCHANGE_*``, ``SPOOL_*``, ...) and one ``config.yml`` key derived from it: the first
word is the section, the rest the key, both lower case (``CYBERTHREATEXCHANGE_BASE_URL`` →
``cyberthreatexchange.base_url``, ``SPOOL_DIR`` → ``spool.dir``). The environment wins over the file;
an empty environment variable counts as unset (compose files often set ``FOO=``).

Each half defines its own frozen settings model on :class:`SettingsBase` with :func:`setting`, and its
CLI calls :func:`load_settings` once and passes the result down.

A name under one of our prefixes that no setting knows does nothing, silently: a typo
(``CYBERTHREATEXCHANGE_FEEDS_IDS``) or another program's switch (``CONNECTOR_LOG_FORMAT``). So
:func:`load_settings` also collects, from the environment and ``config.yml``, the names under
``CYBERTHREATEXCHANGE_``, ``UPLOADER_`` and ``SPOOL_`` that no settings model of this process
defines, and the ``CONNECTOR_`` and ``OPENCTI_`` names that neither we nor pycti read; the CLI logs
one warning per name (:func:`warn_unknown_settings`) once logging is configured. A prefix is judged
only by a process whose models use it: the fetcher never defines ``UPLOADER_`` settings, so it
leaves them to the uploader (one ``config.yml`` serves both).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from shared.errors import ConfigError, ConfigProblem
from shared.signing import SigningKey, check_key_file, check_key_text, load_signing_key

logger = logging.getLogger(__name__)

LogLevel = Literal["debug", "info", "warn", "warning", "error"]

DEFAULT_CONFIG_FILE = Path("config.yml")

SettingsT = TypeVar("SettingsT", bound="SettingsBase")


class SettingsBase(BaseModel):
    """Base of the settings models: frozen, unknown fields refused, fields named by env variable."""

    # defer_build: a model's validator is built when it is first used, not when its class is
    # defined, so a command pays only for the settings it loads (pydantic's ConfigDict docs).
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, defer_build=True)

    #: Names of the environment and config.yml that no setting knows (:func:`load_settings`).
    _unknown: tuple[UnknownSetting, ...] = PrivateAttr(default=())

    @property
    def unknown_settings(self) -> tuple[UnknownSetting, ...]:
        """The names found in the environment and config.yml that no setting knows."""
        return self._unknown

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _MODELS.append(cls)


#: Every settings model defined in this process: the names it may judge (:func:`known_names`).
_MODELS: list[type[SettingsBase]] = []

#: The prefixes of our own settings; any other name under them is a typo.
OUR_PREFIXES = ("CYBERTHREATEXCHANGE_", "UPLOADER_", "SPOOL_")
#: Prefixes we share with pycti: a name is known if we or pycti read it.
PYCTI_PREFIXES = ("CONNECTOR_", "OPENCTI_")

#: The ``CONNECTOR_*`` and ``OPENCTI_*`` names pycti reads, from pycti 7.261026.0: the first
#: argument of every ``get_config_variable`` call in ``pycti/connector/opencti_connector_helper.py``
#: (its YAML path is ``[section, key]`` of the same name) and the ``_env_bool``/``_env_float``
#: names of ``pycti/utils/opencti_stix2.py``. tests/shared/test_unknown_settings.py checks the
#: installed pycti reads no other.
PYCTI_NAMES = frozenset(
    {
        "CONNECTOR_AUTO",
        "CONNECTOR_AUTO_CREATE_SERVICE_ACCOUNT",
        "CONNECTOR_AUTO_CREATE_SERVICE_ACCOUNT_CONFIDENCE_LEVEL",
        "CONNECTOR_AUTO_UPDATE",
        "CONNECTOR_DURATION_PERIOD",
        "CONNECTOR_ENRICHMENT_RESOLUTION",
        "CONNECTOR_EXPOSE_METRICS",
        "CONNECTOR_ID",
        "CONNECTOR_LISTEN_PROTOCOL",
        "CONNECTOR_LISTEN_PROTOCOL_API_PATH",
        "CONNECTOR_LISTEN_PROTOCOL_API_PORT",
        "CONNECTOR_LISTEN_PROTOCOL_API_SSL",
        "CONNECTOR_LISTEN_PROTOCOL_API_URI",
        "CONNECTOR_LIVE_STREAM_ID",
        "CONNECTOR_LIVE_STREAM_LISTEN_DELETE",
        "CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES",
        "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
        "CONNECTOR_LIVE_STREAM_START_TIMESTAMP",
        "CONNECTOR_LIVE_STREAM_WITH_INFERENCES",
        "CONNECTOR_LOG_LEVEL",
        "CONNECTOR_METRICS_NAMESPACE",
        "CONNECTOR_METRICS_PORT",
        "CONNECTOR_METRICS_SUBSYSTEM",
        "CONNECTOR_NAME",
        "CONNECTOR_ONLY_CONTEXTUAL",
        "CONNECTOR_QUEUE_PROTOCOL",
        "CONNECTOR_QUEUE_THRESHOLD",
        "CONNECTOR_RUN_AND_TERMINATE",
        "CONNECTOR_SCOPE",
        "CONNECTOR_SEND_TO_DIRECTORY",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH",
        "CONNECTOR_SEND_TO_DIRECTORY_RETENTION",
        "CONNECTOR_SEND_TO_QUEUE",
        "CONNECTOR_SEND_TO_S3",
        "CONNECTOR_SEND_TO_S3_BUCKET",
        "CONNECTOR_SEND_TO_S3_FOLDER",
        "CONNECTOR_SEND_TO_S3_RETENTION",
        "CONNECTOR_TYPE",
        "CONNECTOR_VALIDATE_BEFORE_IMPORT",
        "CONNECTOR_XTM_ONE_INTENT",
        "OPENCTI_CUSTOM_HEADERS",
        "OPENCTI_JSON_LOGGING",
        "OPENCTI_MISSING_REF_RETRY_EXPONENTIAL",
        "OPENCTI_MISSING_REF_RETRY_FACTOR",
        "OPENCTI_MISSING_REF_RETRY_INITIAL_DELAY",
        "OPENCTI_SSL_VERIFY",
        "OPENCTI_TOKEN",
        "OPENCTI_URL",
    }
)

#: Switches of other programs that people set expecting them to work here. CONNECTOR_LOG_FORMAT is
#: no OpenCTI convention (neither pycti nor OpenCTI-Platform/connectors, connectors-sdk included,
#: reads it); pycti's JSON switch is OPENCTI_JSON_LOGGING.
_HINTS = {"CONNECTOR_LOG_FORMAT": "OPENCTI_JSON_LOGGING=true"}


@dataclass(frozen=True)
class UnknownSetting:
    """A name no setting knows: ``name`` as written (``FOO_BAR`` or ``foo.bar``), where it was
    found (``environment`` or the config file) and the closest known name, if any."""

    name: str
    source: str
    closest: str | None

    def __str__(self) -> str:
        where = (
            f"environment variable {self.name}"
            if self.source == "environment"
            else f"{self.name} in {self.source}"
        )
        hint = f"; did you mean {self.closest}?" if self.closest else ""
        return f"ignoring {where}: no such setting{hint}"


def known_names() -> tuple[frozenset[str], tuple[str, ...]]:
    """The names the models of this process define, and the prefixes this process judges."""
    ours = frozenset(name for model in _MODELS for name in env_names(model))
    judged = tuple(p for p in OUR_PREFIXES if any(n.startswith(p) for n in ours))
    return ours, judged + PYCTI_PREFIXES


def find_unknown(
    names: Iterable[str], source: str, *, yaml_keys: bool = False
) -> list[UnknownSetting]:
    """The ``names`` (variable names, flattened ``SECTION_KEY``) no setting of ours or pycti's knows.

    Names outside our prefixes (PATH, HTTPS_PROXY, MQ_HOST) are not ours to judge.
    """
    ours, judged = known_names()
    known = ours | PYCTI_NAMES
    found = []
    for name in sorted(set(names)):
        if not name.startswith(judged) or name in known:
            continue
        closest = _HINTS.get(name) or next(iter(difflib.get_close_matches(name, ours, n=1)), None)
        if yaml_keys:
            found.append(
                UnknownSetting(
                    config_key(name), source, None if closest is None else config_key(closest)
                )
            )
        else:
            found.append(UnknownSetting(name, source, closest))
    return found


_warned: set[tuple[str, str]] = set()


def warn_unknown_settings(settings: SettingsBase) -> None:
    """Log one warning per unknown name found when ``settings`` were loaded, once per process.

    Call it after logging is configured, so the warning has the format and level of every line.
    """
    for item in settings.unknown_settings:
        if (item.name, item.source) in _warned:
            continue
        _warned.add((item.name, item.source))
        logger.warning(
            "%s",
            item,
            extra={"setting": item.name, "source": item.source, "closest": item.closest},
        )


def setting(default: Any = ..., *, env: str, description: str, **kwargs: Any) -> Any:
    """A settings field read from environment variable ``env`` (and its derived config.yml key)."""
    return Field(default, validation_alias=env, description=description, **kwargs)


class CommonSettings(SettingsBase):
    """The settings both halves share: the spool, its signing key, logging and metrics."""

    log_level: LogLevel = setting(
        "info",
        env="CONNECTOR_LOG_LEVEL",
        description="Log level: debug, info, warn or error.",
    )
    # The names of the logging and metrics settings are pycti's: OpenCTIConnectorHelper reads
    # OPENCTI_JSON_LOGGING (opencti.json_logging), CONNECTOR_EXPOSE_METRICS and
    # CONNECTOR_METRICS_PORT (default 9095) in pycti/connector/opencti_connector_helper.py.
    # pycti's JSON default is on; ours is off, so a terminal gets text (compose turns it on).
    json_logging: bool = setting(
        False,
        env="OPENCTI_JSON_LOGGING",
        description="Log one JSON object per line (timestamp, level, logger, message and the context fields) instead of text; pycti's name for the same switch.",
    )
    expose_metrics: bool = setting(
        False,
        env="CONNECTOR_EXPOSE_METRICS",
        description="Serve Prometheus metrics over HTTP at /metrics (pycti's name).",
    )
    metrics_port: int = setting(
        9095,
        env="CONNECTOR_METRICS_PORT",
        description="Port of the metrics endpoint (pycti's default); the fetcher and the uploader need different ports on one host network.",
        ge=1,
        le=65535,
    )
    metrics_address: str = setting(
        # prometheus_client's start_http_server default, which pycti keeps: reachable from
        # outside a container. 127.0.0.1 keeps the endpoint on the host itself.
        "0.0.0.0",  # noqa: S104
        env="CONNECTOR_METRICS_ADDRESS",
        description="Address the metrics endpoint binds (all interfaces by default, as pycti does; 127.0.0.1 for this host only).",
    )
    spool_dir: Path = setting(
        Path("spool"),
        env="SPOOL_DIR",
        description="The spool directory shared by the fetcher and the uploader (incoming/, processing/, done/, failed/).",
    )
    signing_key: SecretStr | None = setting(
        None,
        env="SPOOL_SIGNING_KEY",
        description="Shared key (at least 32 characters) for HMAC-SHA256 signatures in file names: the fetcher signs every file; the uploader sends unsigned or wrongly signed files to failed/ and `verify` reports them. Unset: no signing, no checks. Same key on both sides. Never logged.",
    )
    signing_key_file: Path | None = setting(
        None,
        env="SPOOL_SIGNING_KEY_FILE",
        description="A file holding the signing key instead (its bytes, surrounding whitespace stripped); not with SPOOL_SIGNING_KEY.",
    )

    @field_validator("signing_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else SecretStr(check_key_text(value.get_secret_value()))

    @field_validator("signing_key_file")
    @classmethod
    def _signing_key_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("signing_key") is not None:
            raise ValueError("set SPOOL_SIGNING_KEY or SPOOL_SIGNING_KEY_FILE, not both")
        return None if value is None else check_key_file(value)

    def load_signing_key(self) -> SigningKey | None:
        """The signing key (read from its file if configured so), or None: no signing, no checks."""
        secret = None if self.signing_key is None else self.signing_key.get_secret_value()
        return load_signing_key(secret, self.signing_key_file)


def config_key(env_name: str) -> str:
    """The config.yml key (``section.key``) of an environment variable name."""
    section, _, rest = env_name.partition("_")
    return f"{section.lower()}.{rest.lower()}"


def env_names(model: type[SettingsBase]) -> dict[str, str]:
    """Map each environment variable name of ``model`` to its field name."""
    names: dict[str, str] = {}
    for field_name, info in model.model_fields.items():
        alias = info.validation_alias
        if not isinstance(alias, str):
            raise TypeError(f"{model.__name__}.{field_name} has no env name; use setting()")
        names[alias] = field_name
    return names


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem("--config", str(path), f"cannot read: {exc.strerror}")], str(path)
        ) from None
    import yaml  # only with a config file: most deployments set environment variables alone

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            [ConfigProblem("--config", str(path), f"not valid YAML: {exc}")], str(path)
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigProblem("--config", str(path), "must be a mapping of sections")], str(path)
        )
    flat: dict[str, Any] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(
                [ConfigProblem("--config", f"{section}", "section must be a mapping")], str(path)
            )
        for key, value in values.items():
            flat[f"{section}_{key}".upper()] = value
    return flat


def load_settings(
    model: type[SettingsT],
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> SettingsT:
    """Build ``model`` from ``config_path`` (if given, else ./config.yml if present) and ``environ``.

    Raises :class:`ConfigError` naming every missing or invalid variable at once.
    """
    environ = os.environ if environ is None else environ
    source = ""
    values: dict[str, Any] = {}
    if config_path is None and DEFAULT_CONFIG_FILE.is_file():
        config_path = DEFAULT_CONFIG_FILE
    if config_path is not None:
        source = str(config_path)
        values.update(_read_config_file(config_path))
    unknown = find_unknown(values, source, yaml_keys=True)
    unknown += find_unknown(
        (k for k, v in environ.items() if v.strip() != ""), "environment", yaml_keys=False
    )
    names = env_names(model)
    for env_name in names:
        raw = environ.get(env_name)
        if raw is not None and raw.strip() != "":
            values[env_name] = raw.strip()
    data = {k: v for k, v in values.items() if k in names}
    try:
        settings = model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = err["loc"]
            variable = str(loc[0]) if loc else "?"
            message = "required, not set" if err["type"] == "missing" else err["msg"]
            problems.append(ConfigProblem(variable, config_key(variable), message))
        raise ConfigError(problems, source) from None
    settings._unknown = tuple(unknown)
    return settings


def describe(model: type[SettingsBase]) -> list[tuple[str, str, str, str]]:
    """Rows of (env variable, config.yml key, default or "required", description) for docs."""
    rows = []
    for env_name, field_name in env_names(model).items():
        info = model.model_fields[field_name]
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            if value is None:
                default = ""
            elif isinstance(value, bool):
                default = str(value).lower()
            elif isinstance(value, tuple | list):
                default = ",".join(str(v) for v in value)
            else:
                default = str(value)
        rows.append((env_name, config_key(env_name), default, info.description or ""))
    return rows
