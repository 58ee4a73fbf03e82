"""The ``ctx-fetcher`` command line: once/run/feeds, state/health, reset, audit, transfer, the
state lock and the progress display. The top layer: may import every other part of the fetcher."""
