"""Talking to CTX: the HTTP client, the answers checked, the objects listing walked in segments.
Knows the CTX API and HTTP, nothing of the state or the spool; imports only fetcher.stix,
fetcher.settings, fetcher.errors and shared."""
