"""Errors raised by :mod:`shared`.

Tree::

    SharedError
    ├── ConfigError          one or more settings are missing or invalid (``problems``)
    ├── MetricsError         the metrics endpoint cannot be served (``address``, ``port``)
    └── SpoolError           something about the spool itself (``path``)
        ├── UnsafeNameError  an id or a file name that must not become a path (``value``)
        ├── NotASpoolError   SPOOL_DIR is missing or holds none of the state folders (``path``)
        └── DestinationExistsError  a move would overwrite an existing file (``path``)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class SharedError(Exception):
    """Root of every error raised by :mod:`shared`."""


@dataclass(frozen=True)
class ConfigProblem:
    """One bad setting: the environment variable that names it and what is wrong."""

    variable: str
    config_key: str
    message: str

    def __str__(self) -> str:
        return f"{self.variable} ({self.config_key}): {self.message}"


class ConfigError(SharedError):
    """Settings are missing or invalid; ``problems`` names each bad variable."""

    def __init__(self, problems: list[ConfigProblem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        where = f" (config file: {source})" if source else ""
        super().__init__(f"invalid configuration{where}:\n{lines}")


class MetricsError(SharedError):
    """The metrics endpoint cannot listen on ``address``:``port``."""

    def __init__(self, message: str, *, address: str, port: int) -> None:
        self.address = address
        self.port = port
        super().__init__(message)


class SpoolError(SharedError):
    """A spool operation failed; ``path`` is the file or directory concerned."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(message)


class UnsafeNameError(SpoolError):
    """An id or name from outside (the API, a file name) that may not become a path."""

    def __init__(self, kind: str, value: str) -> None:
        self.kind = kind
        self.value = value
        # repr() so control characters and path separators are visible in logs.
        super().__init__(f"refusing {kind} {value[:200]!r}: not a valid {kind}")


class NotASpoolError(SpoolError):
    """``path`` (SPOOL_DIR, absolute) is not a spool: a command that reads one refuses it rather
    than report an empty, healthy spool."""


class DestinationExistsError(SpoolError):
    """A move or publish would have overwritten an existing file."""
