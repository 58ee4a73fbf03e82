"""Settings of the fetcher (env variable names first; config.yml keys derive from them)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr, field_validator

from shared.config import CommonSettings, setting
from shared.errors import UnsafeNameError
from shared.layout import FETCHER_STATE_DIRNAME, check_feed_id


class SpoolStateSettings(CommonSettings):
    """What ``transfer`` needs: the spool, the fetcher's state and the log level, no CTX."""

    state_dir: Path | None = setting(
        None,
        env="CYBERTHREATEXCHANGE_STATE_DIR",
        description=f"Where the fetcher keeps cursors, its dedup ledger and the transfer record (default SPOOL_DIR/{FETCHER_STATE_DIRNAME}).",
    )

    @property
    def effective_state_dir(self) -> Path:
        return (
            self.state_dir if self.state_dir is not None else self.spool_dir / FETCHER_STATE_DIRNAME
        )


#: ISO 8601 durations (ISO 8601-1:2019 §5.5.2) of weeks, days, hours, minutes and seconds. Years
#: and months have no fixed length and are refused (pydantic would take them as 365 and 30 days).
_DURATION = re.compile(
    r"P(?:\d+(?:[.,]\d+)?W)?(?:\d+(?:[.,]\d+)?D)?"
    r"(?:T(?:\d+(?:[.,]\d+)?H)?(?:\d+(?:[.,]\d+)?M)?(?:\d+(?:[.,]\d+)?S)?)?"
)
MIN_PERIOD = timedelta(minutes=1)


class ScheduleSettings(SpoolStateSettings):
    """The feeds and the schedule: what ``state`` and ``health`` need besides the spool (no CTX)."""

    feed_ids: tuple[str, ...] = setting(
        env="CYBERTHREATEXCHANGE_FEED_IDS",
        description="Comma-separated feed UUIDs to fetch (at least one; must be subscribed).",
    )
    interval_hours: int = setting(
        1,
        env="CYBERTHREATEXCHANGE_INTERVAL_HOURS",
        description="Hours between passes of `ctx-fetcher run` (integer, at least 1). CONNECTOR_DURATION_PERIOD wins when both are set.",
        ge=1,
    )
    duration_period: timedelta | None = setting(
        None,
        env="CONNECTOR_DURATION_PERIOD",
        description="Time between passes of `ctx-fetcher run` as an ISO 8601 duration (PT30M, PT6H, P1D; at least PT1M), as OpenCTI connectors take it; wins over CYBERTHREATEXCHANGE_INTERVAL_HOURS.",
    )

    @field_validator("feed_ids", mode="before")
    @classmethod
    def _split_feed_ids(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if isinstance(value, list | tuple):
            out = []
            for item in value:
                try:
                    out.append(check_feed_id(str(item).strip()))
                except UnsafeNameError:
                    raise ValueError(f"{str(item)[:60]!r} is not a feed UUID") from None
            if not out:
                raise ValueError("at least one feed id is required")
            return tuple(dict.fromkeys(out))
        return value

    @field_validator("duration_period", mode="before")
    @classmethod
    def _iso_duration(cls, value: object) -> object:
        # OpenCTI's connectors declare ``duration_period: timedelta`` (connectors-sdk settings),
        # so pydantic parses the value; only the ISO 8601 form is let through to it.
        if isinstance(value, str):
            text = value.strip().upper()
            if text in ("", "P", "PT") or text.endswith("T") or not _DURATION.fullmatch(text):
                raise ValueError(
                    f"{value[:40]!r} is not an ISO 8601 duration of weeks, days, hours, minutes "
                    "or seconds (e.g. PT30M, PT6H, P1D)"
                )
            return text.replace(",", ".")
        if value is None or isinstance(value, timedelta):
            return value
        raise ValueError("must be an ISO 8601 duration in quotes (e.g. 'PT6H'), not a number")

    @field_validator("duration_period")
    @classmethod
    def _period_long_enough(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < MIN_PERIOD:
            raise ValueError("must be at least PT1M (one minute)")
        return value

    @property
    def interval_seconds(self) -> float:
        """Seconds between passes: CONNECTOR_DURATION_PERIOD if set, else the interval hours."""
        if self.duration_period is not None:
            return self.duration_period.total_seconds()
        return float(self.interval_hours * 3600)

    @property
    def interval_source(self) -> str:
        """Which variable set :attr:`interval_seconds` (for the log line at start)."""
        if self.duration_period is not None:
            return "CONNECTOR_DURATION_PERIOD"
        return "CYBERTHREATEXCHANGE_INTERVAL_HOURS"

    @property
    def both_intervals_set(self) -> bool:
        """Both variables were given: CONNECTOR_DURATION_PERIOD wins, which ``run`` logs."""
        return self.duration_period is not None and "interval_hours" in self.model_fields_set


class FetcherSettings(ScheduleSettings):
    """Everything the fetcher needs; nothing of the uploader's."""

    base_url: str = setting(
        "https://api.cyberthreatexchange.com/",
        env="CYBERTHREATEXCHANGE_BASE_URL",
        description="CTX API base URL; normalised to one trailing slash.",
    )
    api_key: SecretStr = setting(
        env="CYBERTHREATEXCHANGE_API_KEY",
        description="CTX API key, sent as the API-KEY header. Never logged.",
    )
    concurrency: int = setting(
        8,
        env="CYBERTHREATEXCHANGE_CONCURRENCY",
        description="Segments of the objects listing read at once per feed (1-32; 1: one request at a time).",
        ge=1,
        le=32,
    )
    max_requests_per_second: float = setting(
        0.0,
        env="CYBERTHREATEXCHANGE_MAX_REQUESTS_PER_SECOND",
        description="Upper bound on requests per second to CTX across all threads; 0 = no limit.",
        ge=0,
    )
    connect_timeout: float = setting(
        10.0,
        env="CYBERTHREATEXCHANGE_CONNECT_TIMEOUT",
        description="Seconds to wait for a TCP/TLS connection to CTX.",
        gt=0,
    )
    read_timeout: float = setting(
        60.0,
        env="CYBERTHREATEXCHANGE_READ_TIMEOUT",
        description="Seconds to wait for each read of a CTX answer.",
        gt=0,
    )
    max_retries: int = setting(
        5,
        env="CYBERTHREATEXCHANGE_MAX_RETRIES",
        description="Retries of a request on 429, 5xx and connection errors (with backoff).",
        ge=0,
        le=20,
    )
    backoff_factor: float = setting(
        1.0,
        env="CYBERTHREATEXCHANGE_BACKOFF_FACTOR",
        description="Exponential backoff factor in seconds between retries (capped at 120 s).",
        ge=0,
    )
    verify_tls: bool = setting(
        True,
        env="CYBERTHREATEXCHANGE_VERIFY_TLS",
        description="Verify the CTX server's TLS certificate. Proxies come from HTTPS_PROXY/NO_PROXY.",
    )
    ca_bundle: Path | None = setting(
        None,
        env="CYBERTHREATEXCHANGE_CA_BUNDLE",
        description="A CA bundle file to verify CTX with instead of the system's.",
    )
    overlap_minutes: float = setting(
        15.0,
        env="CYBERTHREATEXCHANGE_OVERLAP_MINUTES",
        description="Minutes of CTX record time behind the saved cursor that each pass reads again, for records the server stored late (stamped before they became visible); already-seen records cost a request, not a file. 0 turns it off.",
        ge=0,
    )
    report_grace_minutes: float = setting(
        60.0,
        env="CYBERTHREATEXCHANGE_REPORT_GRACE_MINUTES",
        description="Minutes a report waits, unwritten, for objects it names that CTX has not listed yet (from when it was first found lacking one); after that it is written with what exists, with a warning, and written again when they arrive.",
        ge=0,
    )

    @property
    def overlap(self) -> timedelta:
        return timedelta(minutes=self.overlap_minutes)

    @property
    def report_grace(self) -> timedelta:
        return timedelta(minutes=self.report_grace_minutes)

    @field_validator("base_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") + "/"

    @field_validator("api_key")
    @classmethod
    def _key_not_trivial(cls, value: SecretStr) -> SecretStr:
        # Short keys would make log masking mask ordinary words; no real key is this short.
        if len(value.get_secret_value().strip()) < 4:
            raise ValueError("too short to be an API key")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @property
    def tls_verify(self) -> bool | str:
        """The ``verify`` argument for requests."""
        if not self.verify_tls:
            return False
        return str(self.ca_bundle) if self.ca_bundle is not None else True
