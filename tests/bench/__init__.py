"""``make bench``: benchmarks of the fetcher and the uploader against the local stand-ins.

Not part of ``make test`` (no module here is named ``test_*``). Run ``python -m tests.bench --help``.
Every figure is a median over several runs, and every target that compares two set-ups compares
them within the same run of the bench, because the machine is shared and noisy.
"""
