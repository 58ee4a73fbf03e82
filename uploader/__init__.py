"""The uploader: spool → OpenCTI through pycti."""
