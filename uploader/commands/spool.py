"""``ctx-uploader status``, ``verify``, ``replay`` and ``prune``: what is done to the spool itself.

Each loads only :class:`uploader.settings.SpoolSettings` and never imports pycti; each refuses a
``SPOOL_DIR`` that is not a spool (:func:`uploader.commands.loading.existing_spool`). Registered on the
command group by :mod:`uploader.commands.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from shared.cli import config_option
from shared.errors import SharedError
from uploader.commands.loading import (
    EXIT_FAILED,
    existing_spool,
    load_spool_settings,
    spool_settings_and_key,
)
from uploader.errors import UploaderError
from uploader.spool_ops.prune import candidates as prune_candidates
from uploader.spool_ops.prune import parse_duration
from uploader.spool_ops.prune import remove as prune_remove
from uploader.spool_ops.replay import Source, select
from uploader.spool_ops.replay import replay as replay_files
from uploader.spool_ops.status import status as spool_status
from uploader.spool_ops.status import status_table
from uploader.spool_ops.verify import verify as verify_spool
from uploader.spool_ops.verify import verify_manifest


@click.command()
@config_option
@click.option(
    "--from",
    "source",
    type=click.Choice(["failed", "done"]),
    default="failed",
    show_default=True,
    help="Folder to move files out of.",
)
@click.option("--feed", default=None, help="Only files of this feed (UUID).")
@click.argument("files", nargs=-1)
def replay(config_path: Path | None, source: str, feed: str | None, files: tuple[str, ...]) -> None:
    """Move files from failed/ (or done/) back into incoming/, never overwriting.

    FILES are paths inside the folder (or relative to it, or bare file names); none means all.
    A replayed failed file loses its .reason; a replayed done file keeps its .receipt in done/
    until its new import replaces it.
    """
    spool = existing_spool(load_spool_settings(config_path))
    src: Source = "done" if source == "done" else "failed"
    try:
        rels = select(spool, src, feed=feed.lower() if feed else None, files=files)
        results = replay_files(spool, src, rels)
    except (UploaderError, SharedError) as exc:
        raise click.ClickException(str(exc)) from None
    skipped = 0
    for result in results:
        if result.moved:
            click.echo(f"moved {src}/{result.rel} -> incoming/{result.rel}")
        else:
            skipped += 1
            click.echo(f"skipped {src}/{result.rel}: {result.reason}")
    click.echo(f"{len(results) - skipped} moved, {skipped} skipped")
    if skipped:
        raise click.exceptions.Exit(EXIT_FAILED)


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Files and bytes per state and per feed, and the oldest pending file."""
    result = spool_status(existing_spool(load_spool_settings(config_path)))
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2, sort_keys=True))
    else:
        click.echo(status_table(result))


@click.command()
@config_option
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Check the files a `ctx-fetcher transfer --manifest` lists instead: each must be in "
    "some state of the spool with the listed SHA-256.",
)
def verify(config_path: Path | None, manifest_path: Path | None) -> None:
    """Check every .json in every state against the SHA-256 in its name; exit 1 if any is bad.

    With SPOOL_SIGNING_KEY(_FILE) set, unsigned and wrongly signed files are bad too. With
    --manifest, only the manifest's files are checked, wherever they are now (incoming/,
    processing/, done/ or failed/); a file in none of them is reported missing.
    """
    settings, key = spool_settings_and_key(config_path)
    spool = existing_spool(settings)
    if manifest_path is None:
        checked, bad = verify_spool(spool, key)
    else:
        try:
            checked, bad = verify_manifest(spool, manifest_path, key)
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"cannot read the manifest {manifest_path}: {exc}") from None
    for item in bad:
        click.echo(
            f"{'MISSING' if item.problem.startswith('missing') else 'BAD'} {item.path}: {item.problem}"
        )
    click.echo(f"{checked} checked, {len(bad)} bad")
    if bad:
        raise click.exceptions.Exit(EXIT_FAILED)


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@config_option
@click.option(
    "--older-than",
    required=True,
    callback=_duration,
    help="Age of the files to remove: a whole number with s, m, h or d (45s, 90m, 12h, 30d).",
)
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
def prune(config_path: Path | None, older_than: float, dry_run: bool) -> None:
    """Remove files (and their receipts) from done/ imported longer ago than --older-than.

    The age is the receipt's imported_at (the file's mtime without a receipt). Never touches
    incoming/, processing/ or failed/; removes date folders left empty.
    """
    spool = existing_spool(load_spool_settings(config_path))
    total = 0
    count = 0
    verb = "would remove" if dry_run else "removed"
    try:
        for item in prune_candidates(spool, older_than):
            if not dry_run:
                prune_remove(spool, item)
            count += 1
            total += item.bytes
            click.echo(f"{verb} {item.display} ({item.bytes} bytes)")
    except SharedError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{count} file(s), {total} bytes {'would be removed' if dry_run else 'removed'}")


SPOOL_COMMANDS = (replay, status, verify, prune)
