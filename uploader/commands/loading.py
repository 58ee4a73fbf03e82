"""Settings of a ``ctx-uploader`` command: loaded once, logging configured from them, and every
error a :class:`click.ClickException` (the command line's one way of saying what is wrong).

The token and the spool signing key are handed to the logging set-up as secrets to redact.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import click

from shared.config import load_settings, warn_unknown_settings
from shared.errors import ConfigError, SharedError
from shared.layout import Spool
from shared.logsetup import configure_logging
from shared.signing import SigningKey
from uploader.settings import SpoolSettings, UploaderSettings

_SpoolT = TypeVar("_SpoolT", bound=SpoolSettings)


#: Exit status of a command that found something wrong (a failed file, a bad file, a skip).
EXIT_FAILED = 1
#: Exit status of ``once`` when files are left pending (or untouched), and of a refused token.
EXIT_PENDING = 3


def _signing_key(settings: SpoolSettings) -> SigningKey | None:
    try:
        return settings.load_signing_key()
    except SharedError as exc:
        raise click.ClickException(str(exc)) from None


def _key_secrets(key: SigningKey | None) -> list[str]:
    return [key.mask_text] if key is not None and key.mask_text is not None else []


def load_spool_settings(config_path: Path | None) -> SpoolSettings:
    return spool_settings_and_key(config_path)[0]


def spool_settings_and_key(config_path: Path | None) -> tuple[SpoolSettings, SigningKey | None]:
    return settings_and_key(config_path, SpoolSettings)


def settings_and_key(
    config_path: Path | None, model: type[_SpoolT]
) -> tuple[_SpoolT, SigningKey | None]:
    """Settings of ``model``, the spool signing key, and logging that redacts both secrets (the
    OpenCTI token too, for settings that hold one)."""
    try:
        settings = load_settings(model, config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    key = _signing_key(settings)
    secrets = _key_secrets(key)
    if isinstance(settings, UploaderSettings):
        secrets.insert(0, settings.opencti_token.get_secret_value())
    configure_logging(settings.log_level, secrets=secrets, json_lines=settings.json_logging)
    warn_unknown_settings(settings)
    return settings, key


def uploader_settings_and_key(
    config_path: Path | None,
) -> tuple[UploaderSettings, SigningKey | None]:
    return settings_and_key(config_path, UploaderSettings)


def existing_spool(settings: SpoolSettings) -> Spool:
    """The spool of a command that reads one; a directory that is not a spool is refused."""
    spool = Spool(settings.spool_dir)
    try:
        spool.require()
    except SharedError as exc:
        raise click.ClickException(str(exc)) from None
    return spool
