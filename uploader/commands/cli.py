"""``ctx-uploader``: the uploader's command line.

Settings are loaded once per command and passed down, and logging is configured from them
(:mod:`uploader.commands.loading`); errors become :class:`click.ClickException` in the command line
only. ``status``, ``verify``, ``replay`` and ``prune`` (:mod:`uploader.commands.spool`) load only
:class:`SpoolSettings` and never import pycti.

Exit codes of ``once``: 0 all imported, 1 some file failed, 3 files still pending (transient
errors outlasted ``--max-wait``) or left untouched. A platform that refuses what the uploader is
set up with (:class:`uploader.errors.PlatformConfigError`) stops ``once`` and ``watch`` at once,
with one line naming what to change: 1 (click's status for a ``ClickException``, as for invalid settings) for a pycti
newer than the platform, 3 for a refused ``OPENCTI_TOKEN`` (every file is left pending).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from shared.cli import config_option
from shared.errors import SharedError
from shared.layout import Spool
from uploader.adoption.adopt import adopt_folder
from uploader.commands.loading import (
    EXIT_FAILED,
    EXIT_PENDING,
    existing_spool,
    settings_and_key,
    uploader_settings_and_key,
)
from uploader.commands.run import echo_summary, new_adopter, pycti_importer_class, run
from uploader.commands.spool import SPOOL_COMMANDS
from uploader.errors import UploaderError
from uploader.importing.refusals import installed_pycti
from uploader.ops.health import health_line, health_problems
from uploader.settings import AdoptSettings, HealthSettings
from uploader.spool_ops.claim import default_instance_id


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ctx-opencti-spool", prog_name="ctx-uploader")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Import the CTX spool into OpenCTI: incoming/ → done/ or failed/."""
    ctx.ensure_object(dict)


@main.command()
@config_option
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Give up after this many seconds without any file finishing (the platform is down or "
    "refusing our token: every import is being retried); those files stay pending in incoming/.",
)
@click.pass_context
def once(ctx: click.Context, config_path: Path | None, max_wait: float) -> None:
    """Import everything in incoming/ (and reclaimed files), then exit.

    Exit 0 if every file was imported, 1 if some failed, 3 if some are still pending.
    """
    summary = run(ctx, config_path, watch=False, max_wait=max_wait)
    echo_summary(summary)
    if summary.failed:
        ctx.exit(EXIT_FAILED)
    if summary.pending or summary.left:
        ctx.exit(EXIT_PENDING)


@main.command()
@config_option
@click.pass_context
def watch(ctx: click.Context, config_path: Path | None) -> None:
    """Import files as they arrive, until SIGTERM or SIGINT (then finish the current files)."""
    summary = run(ctx, config_path, watch=True, max_wait=None)
    echo_summary(summary)


@main.command()
@config_option
@click.option(
    "--keep",
    is_flag=True,
    help="Leave every source file where it is (the ledger in SPOOL_DIR/.adopt/ still adopts "
    "each content once).",
)
@click.argument(
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
def adopt(config_path: Path | None, keep: bool, directory: Path) -> None:
    """Publish foreign files of DIRECTORY into the spool's incoming/: pycti diode files (into
    their source connector's feed folder) and plain STIX 2.1 bundles (UPLOADER_ADOPT_FEED_ID).

    Each source file is removed once its spool copy is durable (not with --keep, nor from a
    read-only folder); a file that is not JSON or not a bundle is copied to failed/ with a reason
    and left in place. Files being written are waited for. No network: `once` or `watch` import
    what was adopted. Exit 1 if some file was refused or still being written.
    """
    settings = settings_and_key(config_path, AdoptSettings)[0]
    spool = Spool(settings.spool_dir)
    try:
        adopter = new_adopter(settings, spool, keep=keep or settings.adopt_keep)
        try:
            summary = adopt_folder(
                adopter, directory, patience=settings.settle_seconds + 5.0, sleep=time.sleep
            )
        finally:
            adopter.ledger.close()
    except (UploaderError, SharedError) as exc:
        raise click.ClickException(str(exc)) from None
    waiting = summary.waiting or []
    for path in waiting:
        click.echo(f"still being written: {path}")
    click.echo(
        f"adopted {summary.adopted}, already adopted {summary.duplicate}, "
        f"refused {summary.failed}, still being written {len(waiting)}"
    )
    if summary.failed or waiting:
        raise click.exceptions.Exit(EXIT_FAILED)


@main.command("check")
@config_option
def check_platform(config_path: Path | None) -> None:
    """Check that OpenCTI takes this uploader: versions, token, connector registration.

    Reads the platform's version, compares it with the installed pycti's and registers the
    connector, as ``once`` and ``watch`` do at start; prints both versions. Exit 1 with one line
    saying what to change when pycti is newer than the platform, OPENCTI_TOKEN is refused or its
    user lacks the CONNECTORAPI capability, or the platform cannot be reached.
    """
    settings = uploader_settings_and_key(config_path)[0]
    importer = pycti_importer_class()(settings)
    try:
        importer.connect()
    except UploaderError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        importer.close()
    platform = importer.platform_version
    verdict = "match" if platform else "work together (the platform did not say its version)"
    click.echo(
        f"OpenCTI {platform or '(version unknown)'} at {settings.opencti_url} and pycti "
        f"{installed_pycti()} {verdict}; connector {settings.connector_id} registered"
    )


@main.command()
@config_option
def health(config_path: Path | None) -> None:
    """Exit 0 when the uploader of this spool and instance is running and well.

    Non-zero, with one line saying why, when OpenCTI has not answered it for longer than
    UPLOADER_HEALTH_MAX_SILENCE, its file watcher is dead, the process is gone or stuck (its
    heartbeat in processing/<instance>/.health.json is stale), or the oldest pending file is older
    than UPLOADER_HEALTH_MAX_PENDING_AGE. Reads the spool only: no network, no lock (a HEALTHCHECK).
    """
    settings = settings_and_key(config_path, HealthSettings)[0]
    spool = existing_spool(settings)
    problems = health_problems(
        spool,
        settings.instance_id or default_instance_id(),
        max_silence=settings.health_max_silence,
        max_pending_age=settings.health_max_pending_age,
    )
    line = health_line(problems)
    if problems:
        raise click.ClickException(line)
    click.echo(line)


for _command in SPOOL_COMMANDS:
    main.add_command(_command)
