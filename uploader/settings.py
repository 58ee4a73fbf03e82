"""Settings of the uploader (env variable names first; config.yml keys derive from them)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import SecretStr, field_validator

from shared.config import CommonSettings, setting

# A claim folder name: one safe path component (no separators, no leading dot, no "..").
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SpoolSettings(CommonSettings):
    """What ``status``, ``verify``, ``replay`` and ``prune`` need: the spool, the signing key and
    the log level, no OpenCTI."""


#: The feed folder of adopted plain STIX bundles by default (uuid5 of the URL namespace and
#: "ctx-opencti-spool:adopted"): one fixed source, so their order and status are one feed's.
ADOPTED_FEED_ID = "6d2ae27f-8bbb-5d15-b4b7-958aa36293c9"


class AdoptSettings(SpoolSettings):
    """What ``adopt`` needs: the spool, where foreign files come from and how long a copy may take."""

    settle_seconds: float = setting(
        5.0,
        env="UPLOADER_SETTLE_SECONDS",
        description="A file whose digest does not match (or an adopted file that does not parse) is failed only after it has not changed for this long (copy in progress).",
        ge=0,
    )
    drop_dir: Path | None = setting(
        None,
        env="UPLOADER_DROP_DIR",
        description="A folder watched by ctx-uploader watch for foreign files (pycti diode files, plain STIX 2.1 bundles), each adopted into the spool and removed once its spool copy is durable (docs/diode.md).",
    )
    adopt_feed_id: str = setting(
        ADOPTED_FEED_ID,
        env="UPLOADER_ADOPT_FEED_ID",
        description="Feed folder (a UUID) of adopted plain STIX bundles; diode files go to the folder of the connector that wrote them.",
    )
    adopt_keep: bool = setting(
        False,
        env="UPLOADER_ADOPT_KEEP",
        description="Never remove an adopted file from the drop folder (the ledger in .adopt/ still adopts each content once).",
    )

    @field_validator("adopt_feed_id")
    @classmethod
    def _feed(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            raise ValueError("must be a UUID") from None


class HealthSettings(AdoptSettings):
    """What ``health`` needs: the spool, this uploader's instance and the health bounds."""

    instance_id: str | None = setting(
        None,
        env="UPLOADER_INSTANCE_ID",
        description="Name of this uploader's claim folder in processing/ (default: hostname); must be unique per uploader sharing a spool.",
    )

    health_max_silence: float = setting(
        300.0,
        env="UPLOADER_HEALTH_MAX_SILENCE",
        description="ctx-uploader health fails when OpenCTI has not answered the running uploader for longer than this many seconds (when idle it asks the platform for its connector).",
        gt=0,
    )
    health_max_pending_age: float = setting(
        21600.0,
        env="UPLOADER_HEALTH_MAX_PENDING_AGE",
        description="ctx-uploader health fails when the oldest file waiting in incoming/ or processing/ is older than this many seconds.",
        gt=0,
    )

    @field_validator("instance_id")
    @classmethod
    def _instance(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not INSTANCE_ID_RE.match(value):
            raise ValueError(
                "must be one path component: letters, digits, '.', '_' or '-', not starting with '.'"
            )
        return value


class UploaderSettings(HealthSettings):
    """Everything the uploader needs; nothing of the fetcher's."""

    opencti_url: str = setting(
        env="OPENCTI_URL",
        description="OpenCTI platform URL, e.g. http://opencti:8080.",
    )
    opencti_token: SecretStr = setting(
        env="OPENCTI_TOKEN",
        description="Token of the connector's OpenCTI user (needs the CONNECTORAPI capability). Never logged.",
    )
    opencti_ssl_verify: bool = setting(
        True,
        env="OPENCTI_SSL_VERIFY",
        description="Verify OpenCTI's TLS certificate (pycti's own default is off; ours is on).",
    )
    connector_id: str = setting(
        env="CONNECTOR_ID",
        description="This connector's UUIDv4, stable across restarts.",
    )
    connector_name: str = setting(
        "Cyber Threat Exchange (spool)",
        env="CONNECTOR_NAME",
        description="Name shown in Data → Ingestion → Connectors.",
    )
    connector_scope: str = setting(
        "cyberthreatexchange",
        env="CONNECTOR_SCOPE",
        description="Connector scope shown in OpenCTI.",
    )
    queue_protocol: Literal["api", "amqp"] = setting(
        "api",
        env="CONNECTOR_QUEUE_PROTOCOL",
        description="How bundles reach OpenCTI: api (GraphQL) or amqp (RabbitMQ; pycti's MQ_* overrides apply).",
    )
    concurrency: int = setting(
        2,
        env="UPLOADER_CONCURRENCY",
        description="Feeds imported in parallel (files within a feed always go in order).",
        ge=1,
        le=32,
    )
    polling: bool = setting(
        False,
        env="UPLOADER_POLLING",
        description="Use watchdog's PollingObserver instead of inotify (for NFS/SMB spools).",
    )
    poll_interval: float = setting(
        1.0,
        env="UPLOADER_POLL_INTERVAL",
        description="Seconds between polls in polling mode.",
        gt=0,
    )
    rescan_interval: float = setting(
        60.0,
        env="UPLOADER_RESCAN_INTERVAL",
        description="Seconds between full rescans of incoming/ (catches missed events).",
        gt=0,
    )
    retry_initial: float = setting(
        2.0,
        env="UPLOADER_RETRY_INITIAL",
        description="First wait in seconds after a transient failure (doubles, with jitter).",
        gt=0,
    )
    retry_max: float = setting(
        300.0,
        env="UPLOADER_RETRY_MAX",
        description="Longest wait in seconds between retries of a transient failure.",
        gt=0,
    )
    max_push_bytes: int = setting(
        50 * 1024 * 1024,
        env="UPLOADER_MAX_PUSH_BYTES",
        description="Largest bundle sent in one push; bigger files are split under one work (OpenCTI's APP__MAX_PAYLOAD_BODY_SIZE).",
        ge=1024,
    )
    queue_threshold: float = setting(
        500.0,
        env="CONNECTOR_QUEUE_THRESHOLD",
        description="Pause new pushes while the connector's queue on the platform holds more than this many MB (pycti's connector-buffering check).",
        gt=0,
    )
    wait_for_work: bool = setting(
        False,
        env="UPLOADER_WAIT_FOR_WORK",
        description="Wait until OpenCTI's workers completed a file's work before moving it to done/; a work completed with errors sends the file to failed/ with the platform's errors in its .reason.",
    )
    work_timeout: float = setting(
        600.0,
        env="UPLOADER_WORK_TIMEOUT",
        description="With UPLOADER_WAIT_FOR_WORK, seconds to wait for a work to complete before retrying.",
        gt=0,
    )
    applicant_mappings: str = setting(
        "",
        env="UPLOADER_APPLICANT_MAPPINGS",
        description="For adopted diode files: source user id:target user id, comma-separated (diode-import's DIODE_IMPORT_APPLICANT_MAPPINGS); a file whose applicant is mapped is imported as the target user, any other as the connector's user.",
    )
    strict_stix: bool = setting(
        False,
        env="UPLOADER_STRICT_STIX",
        description="Parse every bundle with stix2 before import and fail files that do not validate.",
    )

    @field_validator("applicant_mappings")
    @classmethod
    def _mappings(cls, value: str) -> str:
        parse_applicant_mappings(value)
        return value.strip()

    @property
    def applicants(self) -> dict[str, str]:
        """``UPLOADER_APPLICANT_MAPPINGS`` as source user id → target user id."""
        return parse_applicant_mappings(self.applicant_mappings)

    @field_validator("opencti_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("opencti_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().strip()) < 4:
            raise ValueError("too short to be a token")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("connector_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            parsed = uuid.UUID(value.strip())
        except ValueError:
            raise ValueError("must be a UUID (generate one with `uuidgen`)") from None
        return str(parsed)


def parse_applicant_mappings(text: str) -> dict[str, str]:
    """``src:target,src:target`` → dict; blank entries are ignored, anything else malformed raises.

    diode-import (``DiodeImport.__init__``) only warns about a malformed entry; a setting that
    says nothing about who imports is refused here instead.
    """
    mappings: dict[str, str] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        source, sep, target = entry.partition(":")
        if not sep or not source.strip() or not target.strip() or ":" in target:
            raise ValueError(f"entry {entry!r} is not source_id:target_id")
        mappings[source.strip()] = target.strip()
    return mappings
