"""Helpers of the fetcher tests: run the CLI, read the spool and the fetcher's state."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from fetcher.commands.cli import main
from shared.layout import walk_bundles


def invoke(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False, prog_name="ctx-fetcher")


def spool_files(spool_dir: Path) -> list[Path]:
    return [entry.path for entry in walk_bundles(spool_dir / "incoming")]


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_bytes())
    return data


def cursors(spool_dir: Path) -> dict[tuple[str, str], str]:
    with sqlite3.connect(spool_dir / ".fetcher" / "fetcher.sqlite3") as db:
        return {(f, n): v for f, n, v in db.execute("SELECT feed_id, name, value FROM cursors")}
