"""``ctx-fetcher``: CTX feeds into the spool (``once``, ``run``, ``feeds``, ``transfer``), the
commands that read or reset the fetcher's state (``state``, ``health``, ``reset``) and ``audit``."""

from __future__ import annotations

import click

from fetcher.commands.audit import audit
from fetcher.commands.fetch import feeds, once, run
from fetcher.commands.reset import reset
from fetcher.commands.status import health, state
from fetcher.commands.transfer import transfer


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ctx-opencti-spool", prog_name="ctx-fetcher")
def main() -> None:
    """Fetch Cyber Threat Exchange feeds into the spool, one STIX bundle file per report."""


for command in (once, run, feeds, transfer, state, health, reset, audit):
    main.add_command(command)
