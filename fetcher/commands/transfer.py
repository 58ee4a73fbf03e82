"""The sending side of an air-gap transfer: which files to carry, and a manifest for them.

Pure spool operations, no network. A transfer set is every bundle file in ``incoming/`` that
``ctx-fetcher transfer --mark`` has not recorded yet (or all of them), named by its path relative to
``SPOOL_DIR`` (``incoming/<feed>/<YYYY>/<MM>/<DD>/<name>.json``) so that the list feeds
``rsync --files-from`` and ``tar -T`` run from ``SPOOL_DIR``, and the manifest is checked by
``sha256sum -c`` from there or by ``ctx-uploader verify --manifest`` on the receiving side.

``transfer`` writes (the transfer record, a manifest), so it opens the fetcher's state only where
``state`` and ``health`` would read one (:func:`open_transfer_state`): a mistyped ``SPOOL_DIR`` is
refused, not created and reported as an empty transfer set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import click

from fetcher.commands.loading import settings_without_key
from fetcher.errors import FetcherError, TransferError
from fetcher.settings import SpoolStateSettings
from fetcher.state.ledger import Ledger, open_state
from shared.cli import config_option
from shared.durable import sha256_file, write_atomic
from shared.errors import SpoolError, UnsafeNameError
from shared.layout import INCOMING, Spool, parse_relative_path, walk_bundles
from shared.timestamps import now_stix_time


def open_transfer_state(spool_dir: Path, state_dir: Path) -> Ledger:
    """The fetcher's state at ``state_dir``, for ``transfer`` to read and mark.

    Raises :class:`shared.errors.NotASpoolError`, creating nothing, where
    :func:`fetcher.state.ledger.open_state` refuses: ``spool_dir`` is not a spool, or the fetcher never
    ran with it (a wrong ``CYBERTHREATEXCHANGE_STATE_DIR`` would otherwise list every file as new).
    """
    with open_state(spool_dir, state_dir):
        pass
    return Ledger(state_dir)


def transfer_set(spool: Spool, ledger: Ledger, *, include_all: bool = False) -> list[str]:
    """Paths of the bundle files in ``incoming/`` not yet marked transferred, in name order.

    Hidden and non-``.json`` names (temp files), symlinks and names that are not spool names are
    never listed: the receiving uploader would refuse them anyway.
    """
    done = set() if include_all else ledger.transferred()
    paths = []
    for entry in walk_bundles(spool.incoming):
        if entry.is_symlink:
            continue
        try:
            parse_relative_path(entry.relative)
        except UnsafeNameError:
            continue
        path = str(PurePosixPath(INCOMING) / entry.relative)
        if path not in done:
            paths.append(path)
    return paths


def _name_sha256(path: str) -> str:
    return parse_relative_path(PurePosixPath(*PurePosixPath(path).parts[1:]))[1].sha256


def manifest(spool: Spool, paths: Iterable[str]) -> bytes:
    """A ``sha256sum -c`` manifest of ``paths``: ``<sha256>  <path>`` per line.

    Each file is read and hashed: a file whose bytes do not match the SHA-256 in its name raises
    :class:`TransferError` rather than being vouched for.
    """
    lines = []
    for path in paths:
        try:
            actual = sha256_file(spool.root / path)
        except OSError as exc:
            raise TransferError(f"cannot read {path}: {exc.strerror or exc}", path=path) from None
        if actual != _name_sha256(path):
            raise TransferError(
                f"{path}: SHA-256 is {actual}, not the one in its name; not listing it", path=path
            )
        lines.append(f"{actual}  {path}\n")
    return "".join(lines).encode("utf-8")


def mark(ledger: Ledger, paths: Iterable[str]) -> int:
    """Record ``paths`` as transferred; returns how many."""
    items = [(path, _name_sha256(path)) for path in paths]
    ledger.mark_transferred(items, now_stix_time())
    return len(items)


logger = logging.getLogger(__name__)


@click.command()
@config_option
@click.option("--all", "include_all", is_flag=True, help="List every file, even those marked.")
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a `sha256sum -c` manifest of exactly the listed files (published atomically).",
)
@click.option("--mark", "mark_listed", is_flag=True, help="Record the listed files as transferred.")
@click.option("-0", "--null", "null", is_flag=True, help="End each path with NUL, not newline.")
def transfer(
    config_path: Path | None,
    include_all: bool,
    manifest_path: Path | None,
    mark_listed: bool,
    null: bool,
) -> None:
    """List the files in incoming/ not yet marked as transferred, relative to SPOOL_DIR.

    The list feeds `rsync --files-from=- SPOOL_DIR DEST` or `tar -C SPOOL_DIR -T -` (with -0: their
    --from0/--null options). Nothing is marked unless --mark is given, and only after the list and
    the manifest are written. No network: only the spool and the fetcher's state are used.
    """
    settings = settings_without_key(SpoolStateSettings, config_path)
    spool = Spool(settings.spool_dir)
    try:
        with open_transfer_state(settings.spool_dir, settings.effective_state_dir) as ledger:
            paths = transfer_set(spool, ledger, include_all=include_all)
            if manifest_path is not None:
                write_atomic(manifest_path, manifest(spool, paths))
            end = "\0" if null else "\n"
            click.echo("".join(f"{path}{end}" for path in paths), nl=False)
            if mark_listed:
                marked = mark(ledger, paths)
                logger.info("marked %d file(s) as transferred", marked)
    except (FetcherError, SpoolError) as exc:
        raise click.ClickException(str(exc)) from None
