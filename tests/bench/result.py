"""What a benchmark case returns: rows for the summary table of BENCHMARKS.md and details."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Row:
    """One line of the summary table."""

    benchmark: str
    target: str
    measured: str
    ok: bool | None  # None: a figure without a target


@dataclass
class Result:
    name: str
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


@dataclass
class Options:
    work: Path
    runs: int
    quick: bool
