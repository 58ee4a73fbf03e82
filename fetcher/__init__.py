"""The fetcher: Cyber Threat Exchange feeds → spool."""
