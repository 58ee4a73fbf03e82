"""What every command does first: load its settings (and configure logging from them), take the
state lock, serve the metrics; errors turned into :class:`click.ClickException` here."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click

from fetcher.commands.lock import StateLock
from fetcher.ctx.metrics import RequestMetrics
from fetcher.errors import LedgerError
from fetcher.passes.metrics import PassMetrics
from fetcher.settings import FetcherSettings, SpoolStateSettings
from shared.config import load_settings, warn_unknown_settings
from shared.errors import ConfigError, SharedError
from shared.logsetup import configure_logging
from shared.metrics import serve_metrics
from shared.signing import SigningKey

logger = logging.getLogger(__name__)


def fetcher_settings(config_path: Path | None) -> FetcherSettings:
    """The settings of the commands that talk to CTX (the signing key is loaded to be checked)."""
    return settings_and_key(config_path)[0]


def settings_and_key(config_path: Path | None) -> tuple[FetcherSettings, SigningKey | None]:
    """The fetcher's settings and signing key; logging configured to mask the key and API key."""
    try:
        settings = load_settings(FetcherSettings, config_path)
        key = settings.load_signing_key()
    except (ConfigError, SharedError) as exc:
        raise click.ClickException(str(exc)) from None
    secrets = [settings.api_key.get_secret_value()]
    if key is not None and key.mask_text is not None:
        secrets.append(key.mask_text)
    configure_logging(settings.log_level, secrets=secrets, json_lines=settings.json_logging)
    warn_unknown_settings(settings)
    return settings, key


@dataclass(frozen=True)
class Metrics:
    """The process's metrics: the client's requests and the passes', on one registry."""

    requests: RequestMetrics
    passes: PassMetrics


def fetcher_metrics(settings: FetcherSettings) -> Metrics:
    """The process's metrics, served over HTTP when CONNECTOR_EXPOSE_METRICS is on."""
    requests = RequestMetrics()
    metrics = Metrics(requests, PassMetrics(requests.registry))
    try:
        serve_metrics(settings, requests.registry)
    except SharedError as exc:
        raise click.ClickException(str(exc)) from None
    return metrics


_LoadedT = TypeVar("_LoadedT", bound=SpoolStateSettings)


def settings_without_key(model: type[_LoadedT], config_path: Path | None) -> _LoadedT:
    """Settings that hold no secret of their own (the signing key is not loaded)."""
    try:
        settings = load_settings(model, config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, json_lines=settings.json_logging)
    warn_unknown_settings(settings)
    return settings


@contextmanager
def state_lock(settings: SpoolStateSettings) -> Iterator[None]:
    """Hold the state directory's lock (:class:`fetcher.commands.lock.StateLock`) inside."""
    try:
        with StateLock(settings.effective_state_dir):
            yield
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None
