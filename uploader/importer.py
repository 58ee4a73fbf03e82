"""The seam between the spool pipeline and OpenCTI.

The pipeline only knows :class:`Importer`; :mod:`uploader.opencti` (the one module that imports
pycti) provides the real one, and most tests use a small fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from uploader.chunking import Bundle
    from uploader.origin import Origin


@dataclass(frozen=True)
class ImportReceipt:
    """What OpenCTI gave back for one file: written to done/ beside it."""

    work_id: str
    connector_id: str
    pushes: int
    objects: int


class Importer(Protocol):
    """Imports one spool file's bundle into OpenCTI as one work."""

    def import_bundle(
        self, work_name: str, bundle: Bundle, origin: Origin | None = None
    ) -> ImportReceipt:
        """Import ``bundle`` (a file's checked bundle, :mod:`uploader.chunking`) under one new work.

        ``origin`` is an adopted diode file's: its work is created under the connector that wrote
        it (registered first) and pushed as its mapped applicant (:mod:`uploader.origin`).

        Raises :class:`uploader.errors.TransientImportError` when it is worth retrying later and
        :class:`uploader.errors.PermanentImportError` when the platform refused the content.
        Must be safe to call from several threads at once (one call per feed at a time).
        """
        ...
