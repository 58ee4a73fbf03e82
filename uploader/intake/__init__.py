"""Intake: notice files in ``incoming/`` (watchdog, start-up scan, rescans), wait for copies to
settle, and schedule which may start (one per feed, in order; back-off after a failure).
May import :mod:`uploader.spool_ops`, ``errors`` and ``settings``; never pycti."""
