"""A pass over the configured feeds: the listing into the mirror, then the mirror into files, with
its result, metrics and progress hook. Imports fetcher.files, fetcher.state, fetcher.ctx and below."""
