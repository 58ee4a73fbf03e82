"""The spool's states and the moves between them: claim, done/ or failed/ with a receipt or a
reason, replay, prune, an adopted file's origin, status and verify. The lowest stage: may import
only ``uploader.errors`` and ``uploader.settings`` (and :mod:`shared`)."""
