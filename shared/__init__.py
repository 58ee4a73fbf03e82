"""The contract between the fetcher and the uploader: spool layout, configuration, logging.

This package imports neither half.
"""
