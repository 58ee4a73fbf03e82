"""Adoption: foreign files (pycti diode files, plain STIX bundles) published into ``incoming/``
with their origin, by ``adopt`` or from the watched drop folder; no network, no pycti.
May import :mod:`uploader.intake` (the watchdog observer) and :mod:`uploader.spool_ops`."""
