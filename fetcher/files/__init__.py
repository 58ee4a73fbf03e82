"""Spool files from the mirror: report closures and feed-level sets built into bundles, published
durably and recorded. Imports fetcher.state and below; no HTTP (fetcher.ctx is not needed here)."""
