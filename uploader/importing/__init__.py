"""Importing: one file from ``incoming/`` to OpenCTI (read, check, claim, split, push, one work
per file) through the :class:`~uploader.importing.importer.Importer` seam; pycti only in its one
module. May import :mod:`uploader.intake` (a file's result), :mod:`uploader.spool_ops`, errors."""
