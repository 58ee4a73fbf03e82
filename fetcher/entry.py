"""The ``ctx-fetcher`` console script's entry point.

multiprocessing's ``forkserver`` and ``spawn`` start methods run the parent's main module again in
every process they start, as ``__mp_main__`` ("Safe importing of main module",
https://docs.python.org/3/library/multiprocessing.html#the-spawn-and-forkserver-start-methods).
For a console script that is the script itself, whose first line imports its entry point: this
module imports the command line (click, requests, pydantic) only when it is called, so the
processes that write files (:mod:`fetcher.files.workers`) start without loading it.
"""

from __future__ import annotations

from typing import Any


def main() -> Any:
    from fetcher.commands.cli import main as command_line

    return command_line()
