"""Errors raised by :mod:`uploader`.

Tree::

    UploaderError
    ├── ImportFailure                    importing one bundle into OpenCTI failed
    │   ├── TransientImportError         retry later, never fail the file (platform down, 5xx, 429,
    │   │   │                            timeout, connection refused, platform starting)
    │   │   └── PlatformConfigError      the platform refuses our set-up: the command stops (``setting``)
    │   │       ├── PlatformAuthError    OPENCTI_TOKEN refused, or its user lacks CONNECTORAPI
    │   │       └── PyctiMismatchError   the installed pycti is newer than the platform
    │   │                                (``pycti_version``, ``platform_version``, ``install``,
    │   │                                ``detail``)
    │   └── PermanentImportError         the platform refused the content: the file goes to failed/
    │       └── WorkErrorsError          the platform accepted the bundle, its workers reported
    │                                    errors on objects of it (``errors``)
    ├── BundleRejected                   the file itself is bad before any import (``kind``: corrupt,
    │                                    not-json, not-a-bundle, empty, invalid-bundle, symlink,
    │                                    invalid-name, invalid-stix, unreadable, conflict,
    │                                    unsigned, bad-signature)
    ├── InstanceBusyError                another process holds this instance's claim lock (``instance``,
    │                                    ``path``)
    └── ReplayError                      a file asked for by ``replay`` is not in the source state
                                         (``path``)

A :class:`PlatformConfigError` is a :class:`TransientImportError`: the file is not at fault and stays
pending, but retrying cannot help until a setting or the installed pycti changes, so ``once`` and
``watch`` stop at the first one instead of retrying.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class UploaderError(Exception):
    """Root of every error raised by :mod:`uploader`."""


class ImportFailure(UploaderError):  # noqa: N818 - name part of the published seam
    """Importing one bundle failed; ``work_id`` is set when a work had been created."""

    def __init__(self, message: str, *, work_id: str | None = None) -> None:
        self.work_id = work_id
        super().__init__(message)


class TransientImportError(ImportFailure):
    """Worth retrying later: the platform or the network, not the bundle."""


class PlatformConfigError(TransientImportError):
    """The platform refuses what we are set up with; ``setting`` names what to change."""

    def __init__(self, message: str, *, setting: str, work_id: str | None = None) -> None:
        self.setting = setting
        super().__init__(message, work_id=work_id)


class PlatformAuthError(PlatformConfigError):
    """The platform refused ``OPENCTI_TOKEN``, or its user may not act as a connector."""

    def __init__(self, message: str, *, work_id: str | None = None) -> None:
        super().__init__(message, setting="OPENCTI_TOKEN", work_id=work_id)


class PyctiMismatchError(PlatformConfigError):
    """The installed pycti asks for what the platform's schema does not have.

    ``platform_version`` is None when the platform did not say; ``install`` is the pip command
    that installs the matching pycti (None when the platform's version is unknown); ``detail``
    is the platform's refusal of one of pycti's requests, when that is how the mismatch showed.
    """

    def __init__(
        self,
        message: str,
        *,
        pycti_version: str,
        platform_version: str | None,
        install: str | None,
        detail: str = "",
        work_id: str | None = None,
    ) -> None:
        self.detail = detail
        self.pycti_version = pycti_version
        self.platform_version = platform_version
        self.install = install
        super().__init__(message, setting="pycti", work_id=work_id)


class PermanentImportError(ImportFailure):
    """The platform refused the bundle's content; retrying the same bytes will not help."""


class WorkErrorsError(PermanentImportError):
    """OpenCTI completed the file's work with errors: ``errors`` as the platform reports them
    (``work.errors``: ``timestamp``, ``message``, ``source``, the object or bundle at fault)."""

    def __init__(
        self, message: str, *, work_id: str | None = None, errors: tuple[dict[str, Any], ...] = ()
    ) -> None:
        self.errors = errors
        super().__init__(message, work_id=work_id)


class BundleRejected(UploaderError):  # noqa: N818 - name part of the published seam
    """A spool file is refused before import; ``kind`` is a short machine-readable reason."""

    def __init__(self, kind: str, message: str, path: Path | None = None) -> None:
        self.kind = kind
        self.path = path
        super().__init__(message)


class InstanceBusyError(UploaderError):
    """Another live uploader already holds the claim lock of ``instance`` (at ``path``)."""

    def __init__(self, instance: str, path: Path) -> None:
        self.instance = instance
        self.path = path
        super().__init__(
            f"another uploader with instance id {instance!r} is running (lock {path} is held); "
            "give each uploader sharing a spool its own UPLOADER_INSTANCE_ID"
        )


class ReplayError(UploaderError):
    """A file named on the ``replay`` command line cannot be replayed."""

    def __init__(self, message: str, path: str) -> None:
        self.path = path
        super().__init__(message)
