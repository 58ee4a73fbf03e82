"""The seams between the spool pipeline and OpenCTI.

The pipeline only knows :class:`Importer`; :mod:`uploader.importing.opencti` provides the real one
(through pycti), and most tests use a small fake. The real one counts what it does on a
:class:`PlatformCounts` (the uploader's metrics, :mod:`uploader.ops.metrics`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from uploader.errors import ImportFailure
    from uploader.importing.chunking import Bundle
    from uploader.spool_ops.origin import Origin
    from uploader.spool_ops.outcome import ImportReceipt


class Importer(Protocol):
    """Imports one spool file's bundle into OpenCTI as one work."""

    def import_bundle(
        self, work_name: str, bundle: Bundle, origin: Origin | None = None
    ) -> ImportReceipt:
        """Import ``bundle`` (a file's checked bundle, :mod:`uploader.importing.chunking`) under
        one new work.

        ``origin`` is an adopted diode file's: its work is created under the connector that wrote
        it (registered first) and pushed as its mapped applicant (:mod:`uploader.spool_ops.origin`).

        Raises :class:`uploader.errors.TransientImportError` when it is worth retrying later and
        :class:`uploader.errors.PermanentImportError` when the platform refused the content.
        Must be safe to call from several threads at once (one call per feed at a time).
        """
        ...


class PlatformCounts(Protocol):
    """What the importer counts: each push, each failed call, each registration after the first."""

    def pushed(self) -> None: ...

    def platform_error(self, failure: ImportFailure, *, unreachable: bool) -> None: ...

    def registered_again(self) -> None: ...
