"""The fetcher's database (state directory): cursors, dedup ledger, mirror, pass log, gaps; all
its SQL and its one migration mechanism. Imports fetcher.ctx (to check records) and below, never
files, passes or commands."""
