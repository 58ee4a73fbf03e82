"""Errors raised by :mod:`uploader`.

Tree::

    UploaderError
    ├── ImportFailure                    importing one bundle into OpenCTI failed
    │   ├── TransientImportError         retry later, never fail the file (platform down, 5xx, 429,
    │   │                                timeout, connection refused, platform starting)
    │   └── PermanentImportError         the platform refused the content: the file goes to failed/
    └── BundleRejected                   the file itself is bad before any import (``kind``: corrupt,
                                         not-json, not-a-bundle, empty, symlink, invalid-name,
                                         invalid-stix, unreadable, ...)

A wrong token or an unregistered connector is a :class:`TransientImportError` subclass
(:class:`PlatformAuthError`): it is a configuration problem, not the file's fault, so files stay pending.
"""

from __future__ import annotations

from pathlib import Path


class UploaderError(Exception):
    """Root of every error raised by :mod:`uploader`."""


class ImportFailure(UploaderError):
    """Importing one bundle failed; ``work_id`` is set when a work had been created."""

    def __init__(self, message: str, *, work_id: str | None = None) -> None:
        self.work_id = work_id
        super().__init__(message)


class TransientImportError(ImportFailure):
    """Worth retrying later: the platform or the network, not the bundle."""


class PlatformAuthError(TransientImportError):
    """The platform refused our token or connector: fix the configuration; files stay pending."""


class PermanentImportError(ImportFailure):
    """The platform refused the bundle's content; retrying the same bytes will not help."""


class BundleRejected(UploaderError):
    """A spool file is refused before import; ``kind`` is a short machine-readable reason."""

    def __init__(self, kind: str, message: str, path: Path | None = None) -> None:
        self.kind = kind
        self.path = path
        super().__init__(message)
