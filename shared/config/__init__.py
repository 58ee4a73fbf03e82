"""Settings: the frozen models both halves build on, and their loading, once, in each CLI.

Every setting has one environment variable (the seed's names: ``OPENCTI_*``, ``CONNECTOR_*``,
``CYBERTHREATEXCHANGE_*``, ``SPOOL_*``, ...) and one ``config.yml`` key derived from it: the first
word is the section, the rest the key, lower case (``SPOOL_DIR`` → ``spool.dir``). Each half defines
its models on :class:`SettingsBase` with :func:`setting`; its CLI calls :func:`load_settings` once
and passes the result down. :mod:`.sources` reads the values (pydantic-settings: the environment
over ``config.yml``), :mod:`.names` knows the names (config keys, pycti's, unknown ones). Imports
only :mod:`shared.errors` and :mod:`shared.signing`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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

from shared.config.names import (
    MODELS,
    UnknownSetting,
    config_key,
    env_names,
    find_unknown,
    warn_unknown_settings,
)
from shared.config.sources import read_values
from shared.errors import ConfigError, ConfigProblem
from shared.signing import SigningKey, check_key_file, check_key_text, load_signing_key

__all__ = [
    "CommonSettings",
    "SettingsBase",
    "config_key",
    "describe",
    "env_names",
    "load_settings",
    "setting",
    "warn_unknown_settings",
]

LogLevel = Literal["debug", "info", "warn", "warning", "error"]

DEFAULT_CONFIG_FILE = Path("config.yml")

SettingsT = TypeVar("SettingsT", bound="SettingsBase")


class SettingsBase(BaseModel):
    """Base of the settings models: frozen, fields named by environment variable."""

    # defer_build: a model's validator is built when it is first used, not when its class is
    # defined, so a command pays only for the settings it loads (pydantic's ConfigDict docs).
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, defer_build=True)

    _unknown: tuple[UnknownSetting, ...] = PrivateAttr(default=())

    @property
    def unknown_settings(self) -> tuple[UnknownSetting, ...]:
        """The names found in the environment and config.yml that no setting knows."""
        return self._unknown

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        MODELS.append(cls)


def setting(default: Any = ..., *, env: str, description: str, **kwargs: Any) -> Any:
    """A settings field read from environment variable ``env`` (and its derived config.yml key)."""
    return Field(default, validation_alias=env, description=description, **kwargs)


class CommonSettings(SettingsBase):
    """The settings both halves share: the spool, its signing key, logging and metrics."""

    log_level: LogLevel = setting(
        "info", env="CONNECTOR_LOG_LEVEL", description="Log level: debug, info, warn or error."
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


def load_settings(
    model: type[SettingsT],
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> SettingsT:
    """Build ``model`` from ``config_path`` (if given, else ./config.yml if present) and ``environ``
    (default ``os.environ``), which wins.

    Raises :class:`ConfigError` naming every missing or invalid variable once.
    """
    if config_path is None and DEFAULT_CONFIG_FILE.is_file():
        config_path = DEFAULT_CONFIG_FILE
    source = "" if config_path is None else str(config_path)
    environ = os.environ if environ is None else environ
    names = env_names(model)
    values, others = read_values(names, config_path, environ)
    unknown = find_unknown(others, source, yaml_keys=True)
    unknown += find_unknown((k for k, v in environ.items() if v.strip()), "environment")
    try:
        settings = model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), source) from None
    settings._unknown = tuple(unknown)
    return settings


def _problems(error: ValidationError) -> list[ConfigProblem]:
    """One problem per variable, its messages joined."""
    found: dict[str, list[str]] = {}
    for err in error.errors(include_input=False, include_url=False):
        message = "required, not set" if err["type"] == "missing" else err["msg"]
        found.setdefault(str(err["loc"][0]) if err["loc"] else "?", []).append(message)
    return [ConfigProblem(v, config_key(v), "; ".join(dict.fromkeys(m))) for v, m in found.items()]


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
